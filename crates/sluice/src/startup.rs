//! Start-up checks that ride out AWS having a bad minute.

use std::time::Duration;

use sluice_core::Backoff;

use crate::events::StartupRetried;

/// Runs a start-up check, retrying a transient failure (a throttle, a 5xx, a time-out: AWS having
/// a bad minute) with backoff until `retry_for` has passed; a permanent one (a missing table, a
/// wrong key schema, access denied) is returned at once. A fleet of instances restarted by
/// systemd or Kubernetes thus rides out a blip instead of exhausting its restart limits.
pub async fn retry<T, F, Fut>(
    what: &str,
    retry_for: Duration,
    mut check: F,
) -> Result<T, sluice_dynamodb::CheckError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sluice_dynamodb::CheckError>>,
{
    let give_up = tokio::time::Instant::now() + retry_for;
    let backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(10),
    };
    let mut attempt = 1u32;
    loop {
        match check().await {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(check = what, attempt, "start-up check passed");
                }
                return Ok(v);
            }
            Err(e)
                if !e.permanent
                    && tokio::time::Instant::now() + backoff.ceiling(attempt - 1) < give_up =>
            {
                let delay = backoff.delay(attempt - 1);
                StartupRetried {
                    check: what,
                    attempt,
                    error: &e,
                    retry_in: delay,
                }
                .emit();
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                let why = if e.permanent {
                    "a permanent error"
                } else {
                    "still failing after dynamodb.startup_retry_for"
                };
                tracing::error!(check = what, attempt, error = %e, "start-up check failed: {why}");
                return Err(e);
            }
        }
    }
}
