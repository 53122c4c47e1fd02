//! Wall-clock time as the AWS APIs and the lease table carry it.

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
