//! `rate.mode = "membership"`: this instance's lease in the fleet's membership table, renewed
//! every heartbeat, and its share of every budget (the table's and each index's) moved to
//! budget ÷ live members. The rule is [`sluice_core::membership`]'s; this is its I/O.

use sluice_common::catalog;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use sluice_core::membership::{Membership, Share, stale};
use sluice_dynamodb::members::MembersTable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// What membership moves: every budget's share, and whether writes are held.
pub trait Shared: Send + Sync + 'static {
    fn set_share(&self, share: f64);
    fn hold(&self, held: bool);
}

/// Longest the lease's deletion may take at exit (the others take the share back after
/// `lease_duration` anyway).
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// Leases long expired (dead instances) are deleted after this, so the reads stay small.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

use sluice_core::time::epoch_ms as now_ms;

use crate::events::{FleetCallFailed, FleetOp, LeaseLapsed};

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub struct Member {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    table: Arc<MembersTable>,
    id: String,
    budgets: Arc<dyn Shared>,
}

/// Holds every budget when dropped: the heartbeat task ending for any reason (a panic
/// included) must not leave this instance writing at a share nobody renews.
struct HoldOnExit(Arc<dyn Shared>);

impl Drop for HoldOnExit {
    fn drop(&mut self) {
        self.0.hold(true);
        metrics::gauge!(catalog::FLEET_SHARE).set(0.0);
    }
}

/// Joins the fleet: checks (or creates) the lease table, writes this instance's lease, holds
/// every budget until the other members have counted it, and keeps the lease and the share
/// up to date until [`Member::leave`].
pub async fn join(
    settings: &Settings,
    client: aws_sdk_dynamodb::Client,
    budgets: Arc<dyn Shared>,
) -> Result<Member> {
    let m = &settings.rate.membership;
    let group = m
        .group
        .clone()
        .unwrap_or_else(|| settings.dynamodb.table.clone());
    let table = Arc::new(MembersTable::new(client, m.table.clone(), group.clone()));
    let retry_for = settings.dynamodb.startup_retry_for;
    crate::startup::retry("the membership table check", retry_for, || {
        table.ensure(m.create_table)
    })
    .await
    .map_err(|e| anyhow!(e))?;
    let host = host();
    let id = format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut state = Membership::new(id.clone(), m.lease_duration, m.heartbeat_interval);
    budgets.hold(true);
    metrics::gauge!(catalog::FLEET_SHARE).set(0.0);
    let sent = now_ms();
    crate::startup::retry("joining the fleet", retry_for, || async {
        table
            .renew(&id, &host, state.expiry(sent), 0)
            .await
            .map_err(|message| sluice_dynamodb::CheckError {
                message,
                permanent: false,
            })
    })
    .await
    .map_err(|e| anyhow!(e))?;
    state.renewed(sent, 0);
    tracing::info!(member = %id, group = %group, table = %m.table, "joined the fleet; writes wait until every member has made room");
    let stop = CancellationToken::new();
    let task = tokio::spawn(heartbeat(
        table.clone(),
        state,
        host,
        (m.heartbeat_interval, m.lease_duration),
        budgets.clone(),
        stop.clone(),
    ));
    Ok(Member {
        stop,
        task: Some(task),
        table,
        id,
        budgets,
    })
}

impl Member {
    /// Leaves the fleet once this instance writes no more: the others take its share at their
    /// next read.
    pub async fn leave(mut self) {
        // Whatever is still in flight (a writer that did not stop in time) writes no more
        // once the lease is gone.
        self.budgets.hold(true);
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        match tokio::time::timeout(LEAVE_DEADLINE, self.table.remove(&self.id)).await {
            Ok(Ok(())) => tracing::info!(member = %self.id, "left the fleet"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not delete this instance's lease: the others take its share when it expires (rate.membership.lease_duration)")
            }
            Err(_) => tracing::warn!(
                "deleting this instance's lease timed out: the others take its share when it expires (rate.membership.lease_duration)"
            ),
        }
    }
}

impl Drop for Member {
    /// A pipeline dropped without running (its build failed later) renews no more.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Applies a share: held, or budget ÷ members. Says so when it changes.
fn apply(budgets: &dyn Shared, last: &mut Option<Share>, share: Share, live: u32, lapsed: bool) {
    metrics::gauge!(catalog::FLEET_MEMBERS).set(f64::from(live));
    if *last == Some(share) {
        return;
    }
    match share {
        Share::Hold => {
            budgets.hold(true);
            metrics::gauge!(catalog::FLEET_SHARE).set(0.0);
            if lapsed {
                LeaseLapsed.emit();
            } else {
                tracing::info!(members = live, "waiting for every member to make room");
            }
        }
        Share::OneOf(n) => {
            budgets.set_share(share.fraction());
            budgets.hold(false);
            metrics::gauge!(catalog::FLEET_SHARE).set(share.fraction());
            tracing::info!(members = n, share = share.fraction(), "fleet budget split");
        }
    }
    *last = Some(share);
}

/// The heartbeat: every `beat`, reads the group, applies the share, renews this instance's
/// lease and forgets one long-dead member; until `stop`. Every budget is held when it ends.
async fn heartbeat(
    table: Arc<MembersTable>,
    state: Membership,
    host: String,
    (beat, lease): (Duration, Duration),
    budgets: Arc<dyn Shared>,
    stop: CancellationToken,
) {
    let _hold_on_exit = HoldOnExit(budgets.clone());
    let mut hb = Heartbeat {
        table,
        state,
        host,
        beat,
        // Reads failing this long: stop renewing, so the lease lapses and joiners are not held
        // up by a count this member cannot update (it holds itself, and joins again once it
        // reads).
        read_give_up: lease.saturating_sub(beat),
        last_read_ok: now_ms(),
        budgets,
        last: Some(Share::Hold),
    };
    loop {
        hb.apply_now();
        let (share, stale_leases) = hb.read().await;
        let now = now_ms();
        hb.apply(share, now);
        hb.renew(now).await;
        for dead in stale_leases {
            hb.forget(&dead).await;
        }
        hb.apply_now();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(hb.wait()) => {}
        }
    }
}

/// What the heartbeat keeps between beats.
struct Heartbeat {
    table: Arc<MembersTable>,
    state: Membership,
    host: String,
    beat: Duration,
    read_give_up: Duration,
    last_read_ok: u64,
    budgets: Arc<dyn Shared>,
    last: Option<Share>,
}

impl Heartbeat {
    /// No call and no wait may run past the moment the lease may lapse: the hold must come
    /// before the others stop counting this instance.
    fn bounded(&self) -> Duration {
        let now = now_ms();
        match self.state.lapse_at_ms() {
            Some(t) if t > now => self
                .beat
                .min(Duration::from_millis(t.saturating_sub(now)))
                .max(Duration::from_millis(1)),
            _ => self.beat,
        }
    }

    fn apply(&mut self, share: Share, now: u64) {
        let (live, lapsed) = (self.state.live(), self.state.lapsed(now));
        apply(&*self.budgets, &mut self.last, share, live, lapsed);
    }

    /// The share as it stands now (a lease may have lapsed since the last read).
    fn apply_now(&mut self) {
        let now = now_ms();
        let share = self.state.share_at(now);
        self.apply(share, now);
    }

    /// Reads the group (strongly consistent): the new share, and one member whose lease ended
    /// long ago, to forget. A failed read keeps the last share.
    async fn read(&mut self) -> (Share, Vec<String>) {
        let read = tokio::time::timeout(self.bounded(), self.table.members()).await;
        let now = now_ms();
        let why = match read {
            Ok(Ok(members)) => {
                self.last_read_ok = now;
                let stale_leases = stale(&members, now, FORGET_AFTER)
                    .map(|m| m.id.clone())
                    .take(1)
                    .collect();
                return (self.state.on_read(&members, now), stale_leases);
            }
            Ok(Err(error)) => Some(error),
            Err(_) => None,
        };
        FleetCallFailed {
            op: FleetOp::Read,
            error: why.as_ref().map(|e| e as &dyn std::fmt::Display),
        }
        .emit();
        (self.state.share_at(now), Vec::new())
    }

    /// Renews this instance's lease, reporting the count it has seen; not while reads have
    /// been failing for `read_give_up` (the lease then lapses on purpose).
    async fn renew(&mut self, now: u64) {
        let reads_failing = Duration::from_millis(now.saturating_sub(self.last_read_ok));
        if reads_failing >= self.read_give_up {
            tracing::warn!(
                failing_for_s = reads_failing.as_secs(),
                "the fleet's members cannot be read: not renewing, so the lease lapses and joiners are not held up by a count this instance cannot update"
            );
            return;
        }
        let sent = now_ms();
        let seen = self.state.seen();
        let renewal = tokio::time::timeout(
            self.bounded(),
            self.table
                .renew(self.state.id(), &self.host, self.state.expiry(sent), seen),
        )
        .await;
        let why = match renewal {
            Ok(Ok(())) => return self.state.renewed(sent, seen),
            Ok(Err(error)) => Some(error),
            Err(_) => None,
        };
        self.state.renewal_unknown(seen);
        FleetCallFailed {
            op: FleetOp::Renew,
            error: why.as_ref().map(|e| e as &dyn std::fmt::Display),
        }
        .emit();
    }

    /// Deletes a dead member's lease, long expired: bounded like every call.
    async fn forget(&self, dead: &str) {
        match tokio::time::timeout(self.bounded(), self.table.remove(dead)).await {
            Ok(Ok(())) => tracing::debug!(member = %dead, "deleted a dead member's lease"),
            Ok(Err(error)) => tracing::debug!(%error, "could not delete a dead member's lease"),
            Err(_) => tracing::debug!("deleting a dead member's lease timed out"),
        }
    }

    /// A member waiting to be counted looks four times a heartbeat, and so does one that has
    /// reported a departure and may take the share at its next read: the room is there, and
    /// every moment it waits goes unused.
    fn wait(&self) -> Duration {
        let now = now_ms();
        if (self.last == Some(Share::Hold) && !self.state.lapsed(now)) || self.state.raise_pending()
        {
            self.bounded() / 4
        } else {
            self.bounded()
        }
    }
}
