//! What the binary's own tasks report as they go wrong: one type per event, whose `emit`
//! counts its metric and writes its log line together (the worker's events are
//! [`sluice_core::events`]; names and help text are in [`sluice_common::catalog`]).

use std::fmt::Display;
use std::time::Duration;

use sluice_common::catalog;

/// A start-up check (DescribeTable, the lease table) failed on a transient error and is tried
/// again after `retry_in`.
pub struct StartupRetried<'a> {
    pub check: &'a str,
    pub attempt: u32,
    pub error: &'a dyn Display,
    pub retry_in: Duration,
}

impl StartupRetried<'_> {
    pub fn emit(self) {
        metrics::counter!(catalog::STARTUP_RETRIES_TOTAL).increment(1);
        tracing::warn!(check = self.check, attempt = self.attempt, error = %self.error, retry_in = ?self.retry_in, "start-up check failed on a transient error; retrying (dynamodb.startup_retry_for)");
    }
}

/// Reading the table's capacity failed; the budgets stay as they are.
pub struct CapacityRefreshFailed<'a> {
    pub error: &'a dyn Display,
}

impl CapacityRefreshFailed<'_> {
    pub fn emit(self) {
        metrics::counter!(catalog::CAPACITY_REFRESH_ERRORS_TOTAL).increment(1);
        tracing::warn!(error = %self.error, "capacity refresh failed; keeping the current budgets");
    }
}

/// Reading a queue's counts (or finding its dead-letter queue) failed; the gauges keep their
/// last value.
pub enum QueueAttributesFailed<'a> {
    /// The source queue's counts, at `queue_url`.
    Source { queue_url: &'a str, error: &'a str },
    /// The dead-letter queue's counts, at `dlq_url`.
    DeadLetter { dlq_url: &'a str, error: &'a str },
    /// The dead-letter queue the redrive policy names (`arn`) could not be found.
    DeadLetterNotFound { arn: &'a str, error: &'a str },
}

impl QueueAttributesFailed<'_> {
    pub fn emit(self) {
        let label = match self {
            QueueAttributesFailed::Source { .. } => "source",
            _ => "dlq",
        };
        metrics::counter!(catalog::QUEUE_ATTRIBUTE_ERRORS_TOTAL, "queue" => label).increment(1);
        match self {
            QueueAttributesFailed::Source { queue_url, error } => {
                tracing::warn!(error, queue_url, "cannot read the queue's attributes")
            }
            QueueAttributesFailed::DeadLetter { dlq_url, error } => {
                tracing::warn!(
                    error,
                    dlq_url,
                    "cannot read the dead-letter queue's attributes"
                )
            }
            QueueAttributesFailed::DeadLetterNotFound { arn, error } => {
                tracing::warn!(error, arn, "cannot find the dead-letter queue")
            }
        }
    }
}

/// A fleet-membership call that failed.
#[derive(Clone, Copy)]
pub enum FleetOp {
    /// Reading the group's members: the last share is kept.
    Read,
    /// Renewing this instance's lease.
    Renew,
}

/// A fleet-membership call failed; `error` None: it timed out.
pub struct FleetCallFailed<'a> {
    pub op: FleetOp,
    pub error: Option<&'a dyn Display>,
}

impl FleetCallFailed<'_> {
    pub fn emit(self) {
        let op = match self.op {
            FleetOp::Read => "read",
            FleetOp::Renew => "renew",
        };
        metrics::counter!(catalog::FLEET_ERRORS_TOTAL, "op" => op).increment(1);
        match (self.op, self.error) {
            (FleetOp::Read, Some(error)) => {
                tracing::warn!(%error, "cannot read the fleet's members: keeping the last share")
            }
            (FleetOp::Read, None) => {
                tracing::warn!("reading the fleet's members timed out: keeping the last share")
            }
            (FleetOp::Renew, Some(error)) => {
                tracing::warn!(%error, "cannot renew this instance's lease")
            }
            (FleetOp::Renew, None) => tracing::warn!("renewing this instance's lease timed out"),
        }
    }
}

/// This instance's lease lapsed before it could be renewed: its writes are held until the
/// others count it again.
pub struct LeaseLapsed;

impl LeaseLapsed {
    pub fn emit(self) {
        metrics::counter!(catalog::FLEET_LEASE_LAPSES_TOTAL).increment(1);
        tracing::warn!(
            "this instance's lease could not be renewed in time: writes are held (the others may already have taken its share) until it is counted again"
        );
    }
}

/// A changed file `sluice ingest` follows was swapped in, or did not load (`Err`: the previous
/// certificate or keys stay in use).
pub enum Reloaded<'a> {
    /// ingest.tls_cert and tls_key.
    Tls {
        cert: &'a std::path::Path,
        outcome: Result<(), &'a anyhow::Error>,
    },
    /// ingest.api_keys_file: how many keys it holds now.
    ApiKeys {
        file: &'a std::path::Path,
        outcome: Result<usize, &'a anyhow::Error>,
    },
}

impl Reloaded<'_> {
    pub fn emit(self) {
        match self {
            Reloaded::Tls { cert, outcome } => {
                let cert = cert.display();
                match outcome {
                    Ok(()) => {
                        metrics::counter!(catalog::INGEST_RELOADS_TOTAL, "what" => "tls")
                            .increment(1);
                        tracing::info!(%cert, "TLS certificate reloaded: new connections get it");
                    }
                    Err(error) => {
                        metrics::counter!(catalog::INGEST_RELOAD_ERRORS_TOTAL, "what" => "tls")
                            .increment(1);
                        tracing::error!(error = %format!("{error:#}"), %cert, "the changed TLS certificate or key does not load: still serving the previous one");
                    }
                }
            }
            Reloaded::ApiKeys { file, outcome } => {
                let file = file.display();
                match outcome {
                    Ok(keys) => {
                        metrics::counter!(catalog::INGEST_RELOADS_TOTAL, "what" => "api_keys")
                            .increment(1);
                        tracing::info!(%file, keys, "API keys reloaded");
                    }
                    Err(error) => {
                        metrics::counter!(catalog::INGEST_RELOAD_ERRORS_TOTAL, "what" => "api_keys").increment(1);
                        tracing::error!(error = %format!("{error:#}"), %file, "the changed API key file does not load: the previous keys stay");
                    }
                }
            }
        }
    }
}
