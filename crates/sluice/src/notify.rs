//! systemd's service notification protocol (`Type=notify`, `WatchdogSec=`), spoken directly.
//!
//! The protocol is one datagram per notification, `KEY=VALUE` lines, sent to the Unix socket
//! named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). sluice sends:
//!
//! - `READY=1` once the pipeline is built (table and queue checked) and receiving;
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` while the process runs, from a task on the same
//!   runtime as the workers, so a wedged runtime stops the pings and systemd restarts the service;
//! - `STOPPING=1` when a signal starts the drain;
//! - `STATUS=…` lines that `systemctl status` shows.
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is unset (not under systemd, in a container,
//! in tests), and a failed send is logged, never fatal: notification is advisory.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where notifications go; `None` when not started by systemd with `Type=notify`.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var("NOTIFY_SOCKET").ok().as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    /// The same from explicit values, for tests.
    pub fn from_vars(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Self {
        let target = notify_socket.filter(|s| !s.is_empty()).and_then(|path| {
            match socket_addr(path).and_then(|addr| Ok((UnixDatagram::unbound()?, addr))) {
                Ok(t) => Some(t),
                Err(error) => {
                    tracing::warn!(%error, notify_socket = path, "cannot use NOTIFY_SOCKET; not notifying systemd");
                    None
                }
            }
        });
        Notifier {
            watchdog: target
                .as_ref()
                .and_then(|_| watchdog_interval(watchdog_usec, watchdog_pid, std::process::id())),
            target,
        }
    }

    /// True when notifications go somewhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often the watchdog is pinged: half of `WATCHDOG_USEC`, when the watchdog is on.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (lines of `KEY=VALUE`). No-op without `NOTIFY_SOCKET`.
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(error) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(%error, state, "cannot notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Pings the watchdog at half of `WATCHDOG_USEC` until `stop`; `None` when the watchdog is
    /// off. The pings come from a task of the workers' runtime: if that runtime stops making
    /// progress, the pings stop and systemd restarts the service.
    pub fn spawn_watchdog(
        self: &std::sync::Arc<Self>,
        stop: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let every = self.watchdog?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => me.send("WATCHDOG=1"),
                }
            }
        }))
    }
}

fn socket_addr(path: &str) -> io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(path)
    }
}

/// Half of `WATCHDOG_USEC`, if the watchdog is meant for this process (`WATCHDOG_PID` unset or
/// equal to `pid`), as sd_watchdog_enabled(3) decides.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_notify_socket_everything_is_a_no_op() {
        let n = Notifier::from_vars(None, Some("10000000"), None);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_every(), None);
        n.ready("ok");
        n.stopping("bye");
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout_and_only_for_its_own_pid() {
        let me = std::process::id();
        assert_eq!(
            watchdog_interval(Some("30000000"), None, me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some(&me.to_string()), me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("1"), me + 1), None);
        assert_eq!(watchdog_interval(Some("0"), None, me), None);
        assert_eq!(watchdog_interval(Some("soon"), None, me), None);
        assert_eq!(watchdog_interval(None, None, me), None);
    }

    #[test]
    fn notifications_arrive_as_datagrams_on_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("sluice-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_vars(path.to_str(), Some("2000000"), None);
        assert!(n.enabled());
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(1)));
        n.ready("draining queue");
        n.stopping("shutting down");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=draining queue");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=shutting down");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_vars(Some(&format!("@{name}")), None, None);
        n.send("WATCHDOG=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[tokio::test]
    async fn the_watchdog_task_pings_until_stopped() {
        let dir = std::env::temp_dir().join(format!("sluice-watchdog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let n = std::sync::Arc::new(Notifier::from_vars(path.to_str(), Some("200000"), None));
        let stop = CancellationToken::new();
        let task = n.spawn_watchdog(stop.clone()).expect("watchdog on");
        // First ping at once, then every 100 ms: 4 in 350 ms, give or take a slow machine.
        tokio::time::sleep(Duration::from_millis(350)).await;
        stop.cancel();
        task.await.unwrap();
        let mut pings = 0;
        let mut buf = [0u8; 64];
        while let Ok(len) = listener.recv(&mut buf) {
            assert_eq!(&buf[..len], b"WATCHDOG=1");
            pings += 1;
        }
        assert!((2..=5).contains(&pings), "{pings} pings");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
