//! Fault injection, set at start and changeable at run time through `POST /_sim/faults`.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Latency added to an operation: `fixed_ms` plus a uniform random `0..=jitter_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// Milliseconds always added (default 0).
    pub fixed_ms: u64,
    /// Up to this many milliseconds more, drawn uniformly per request (default 0: none).
    pub jitter_ms: u64,
}

impl Latency {
    /// One request's added latency, freshly drawn.
    pub fn sample(&self) -> Duration {
        let jitter = if self.jitter_ms > 0 {
            rand::rng().random_range(0..=self.jitter_ms)
        } else {
            0
        };
        Duration::from_millis(self.fixed_ms + jitter)
    }
}

/// What goes wrong, and how often. Rates are probabilities per request (0.0..=1.0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every operation.
    pub latency: Latency,
    /// Added to the named operations (e.g. "BatchWriteItem", "ReceiveMessage"), on top of
    /// `latency`.
    pub op_latency: HashMap<String, Latency>,
    /// Share of requests answered 500 InternalServerError.
    pub error_500_rate: f64,
    /// Share of requests answered 503 ServiceUnavailable.
    pub error_503_rate: f64,
    /// Share of requests refused with a throttling error (DynamoDB:
    /// ProvisionedThroughputExceededException, SQS: RequestThrottled), whatever the capacity.
    pub throttle_rate: f64,
    /// Share of requests whose connection is closed without an answer.
    pub reset_rate: f64,
    /// Extra time every ReceiveMessage takes before answering, messages or not.
    pub slow_receive_ms: u64,
    /// When set, error rates apply only to these operations.
    pub only_ops: Option<Vec<String>>,
    /// These operations are accepted and never answered, for as long as they are listed: the
    /// call is not carried out, and when the fault is lifted its connection is closed.
    pub hang_ops: Vec<String>,
    /// Share of the entries of SendMessageBatch, DeleteMessageBatch and
    /// ChangeMessageVisibilityBatch that fail on the server's side (`SenderFault: false`,
    /// `InternalError`) while the call itself succeeds: the entry is not carried out.
    pub entry_server_fault_rate: f64,
}

/// What the server does with one request before handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Handle the request normally.
    None,
    /// Answer 500 without handling it (DynamoDB: InternalServerError, SQS: InternalError).
    Error500,
    /// Answer 503 ServiceUnavailable without handling it.
    Error503,
    /// Refuse it with the service's throttling error, without handling it.
    Throttle,
    /// Close the connection without an answer.
    Reset,
}

impl Faults {
    /// Checks each rate is a probability (0.0..=1.0); Err names the first that is not. Their sum is
    /// not checked (see [`Faults::draw`]).
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_500_rate", self.error_500_rate),
            ("error_503_rate", self.error_503_rate),
            ("throttle_rate", self.throttle_rate),
            ("reset_rate", self.reset_rate),
            ("entry_server_fault_rate", self.entry_server_fault_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0.0..=1.0, got {rate}"));
            }
        }
        Ok(())
    }

    /// The latency to add before answering `op`: `latency`, plus `op_latency[op]`, plus
    /// `slow_receive_ms` for ReceiveMessage.
    pub fn delay(&self, op: &str) -> Duration {
        let mut d = self.latency.sample();
        if let Some(l) = self.op_latency.get(op) {
            d += l.sample();
        }
        if op == "ReceiveMessage" {
            d += Duration::from_millis(self.slow_receive_ms);
        }
        d
    }

    /// Whether `op` is to be accepted and left unanswered.
    pub fn hangs(&self, op: &str) -> bool {
        self.hang_ops.iter().any(|o| o == op)
    }

    /// Draws what happens to one request of `op`: reset, 500, 503 and throttle in that order of
    /// precedence, one random draw against their cumulative rates (if they add up past 1.0, the
    /// later ones get what is left). Always [`Injected::None`] for an operation outside `only_ops`.
    pub fn draw(&self, op: &str) -> Injected {
        if let Some(ops) = &self.only_ops
            && !ops.iter().any(|o| o == op)
        {
            return Injected::None;
        }
        let x: f64 = rand::rng().random();
        let mut edge = self.reset_rate;
        if x < edge {
            return Injected::Reset;
        }
        edge += self.error_500_rate;
        if x < edge {
            return Injected::Error500;
        }
        edge += self.error_503_rate;
        if x < edge {
            return Injected::Error503;
        }
        edge += self.throttle_rate;
        if x < edge {
            return Injected::Throttle;
        }
        Injected::None
    }
}
