//! What the producer reports as it goes wrong: one type per event, whose `emit` counts its
//! metric and writes its log line together (names and help text are in
//! [`sluice_common::catalog`]).

use std::path::Path;

use sluice_common::catalog;

use crate::TransportError;

/// A SendMessageBatch call failed whole; it is tried again (attempt `attempt` of the batch).
pub struct SendFailed<'a> {
    /// What the transport said; its kind labels the metric.
    pub error: &'a TransportError,
    /// 1 for the first call of the batch.
    pub attempt: u32,
    /// Messages the call carried.
    pub messages: usize,
}

impl SendFailed<'_> {
    /// Counts `sluice_producer_send_errors_total{kind}` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::PRODUCER_SEND_ERRORS_TOTAL, "kind" => self.error.kind.label())
            .increment(1);
        tracing::warn!(error = %self.error, attempt = self.attempt, messages = self.messages, "SendMessageBatch failed");
    }
}

/// Damage found in the spool, skipped: a segment with no valid header (`offset` None), a record
/// failing its checksum (the rest of its segment is skipped) or one that does not decode.
pub struct SpoolDamage<'a> {
    /// The segment file.
    pub path: &'a Path,
    /// Where in it, when within the records.
    pub offset: Option<u64>,
    /// What was wrong, and what is skipped.
    pub what: &'static str,
}

impl SpoolDamage<'_> {
    /// Counts `sluice_producer_spool_corrupt_total` and logs an ERROR line.
    pub fn emit(self) {
        metrics::counter!(catalog::PRODUCER_SPOOL_CORRUPT_TOTAL).increment(1);
        tracing::error!(path = %self.path.display(), offset = self.offset, "{}", self.what);
    }
}
