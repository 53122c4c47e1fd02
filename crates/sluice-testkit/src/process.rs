//! The `sluice` binary as a child process of a test, and a small HTTP client for what it serves.
//!
//! [`SluiceCommand`] starts a long-running subcommand (`run`, `ingest`, `sim`) the way every
//! integration test wants it: on a free telemetry port, with JSON logs, its output captured,
//! killed when dropped. [`Sluice`] is the running process: wait until `/healthz` answers, scrape
//! `/metrics`, send SIGTERM or SIGKILL, stop it and read what it printed.
//!
//! One-shot subcommands (`validate`, `load`, `dlq`, `kafka lag`) are plain
//! `Command::output()` calls in the tests; they need none of this.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::{TestEnv, free_port};

/// How long [`Sluice::stop`] waits for the process to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start one `sluice` subcommand: the binary, its arguments and environment.
///
/// The environment is applied in this order, later values winning: `SLUICE__TELEMETRY__LISTEN`
/// on a free port and `SLUICE__TELEMETRY__LOG_FORMAT=json`, then what [`SluiceCommand::test_env`]
/// and [`SluiceCommand::env`] add, in the order they are called.
#[derive(Debug, Clone)]
pub struct SluiceCommand {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    telemetry_port: u16,
}

impl SluiceCommand {
    /// `bin subcommand`: `bin` is the binary's path (`env!("CARGO_BIN_EXE_sluice")` in the sluice
    /// crate's tests). Picks the free telemetry port now.
    pub fn new(bin: impl AsRef<Path>, subcommand: &str) -> SluiceCommand {
        let telemetry_port = free_port();
        SluiceCommand {
            bin: bin.as_ref().to_owned(),
            args: vec![subcommand.into()],
            envs: vec![
                (
                    "SLUICE__TELEMETRY__LISTEN".into(),
                    format!("127.0.0.1:{telemetry_port}").into(),
                ),
                ("SLUICE__TELEMETRY__LOG_FORMAT".into(), "json".into()),
            ],
            telemetry_port,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> SluiceCommand {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> SluiceCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable (over any earlier value).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> SluiceCommand {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Sets environment variables, in order.
    pub fn envs<I, K, V>(mut self, vars: I) -> SluiceCommand
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.envs
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Points the process at `env`'s servers ([`TestEnv::child_env`]).
    pub fn test_env(self, env: &TestEnv) -> SluiceCommand {
        self.envs(env.child_env())
    }

    /// The telemetry port the process will serve on.
    pub fn telemetry_port(&self) -> u16 {
        self.telemetry_port
    }

    /// Starts the process with stdin closed and stdout and stderr captured (read as they come,
    /// so a chatty process never blocks on a full pipe); it is killed when the handle drops.
    /// Panics when the binary cannot be started. Needs a tokio runtime.
    pub fn spawn(self) -> Sluice {
        let what = format!(
            "sluice {}",
            self.args[0].to_string_lossy() // the subcommand
        );
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} ({}): {e}", self.bin.display()));
        let stdout = Captured::default();
        let stderr = Captured::default();
        let readers = vec![
            stdout.read_from(child.stdout.take().expect("stdout is piped")),
            stderr.read_from(child.stderr.take().expect("stderr is piped")),
        ];
        Sluice {
            what,
            child,
            telemetry_port: self.telemetry_port,
            stdout,
            stderr,
            readers,
        }
    }
}

/// Output read from a pipe so far.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn read_from<R>(&self, mut pipe: R) -> JoinHandle<()>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let buf = self.0.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// A running `sluice` process, started by [`SluiceCommand::spawn`]; killed (SIGKILL) when
/// dropped.
#[derive(Debug)]
pub struct Sluice {
    what: String,
    child: tokio::process::Child,
    telemetry_port: u16,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
}

/// How a [`Sluice`] ended, with everything it printed.
#[derive(Debug)]
pub struct Stopped {
    /// The exit status.
    pub status: ExitStatus,
    /// All of stdout (the JSON logs).
    pub stdout: String,
    /// All of stderr.
    pub stderr: String,
}

impl Sluice {
    /// The port its telemetry server (`/metrics`, `/healthz`, `/readyz`) listens on.
    pub fn telemetry_port(&self) -> u16 {
        self.telemetry_port
    }

    /// The process id. Panics once the process has been reaped.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("{} has already been reaped", self.what))
    }

    /// The child process, for what this type does not cover.
    pub fn child(&mut self) -> &mut tokio::process::Child {
        &mut self.child
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Stdout then stderr so far: for failure messages.
    pub fn output(&self) -> String {
        self.stdout() + &self.stderr()
    }

    /// The last `n` lines of [`Sluice::output`].
    pub fn output_tail(&self, n: usize) -> String {
        tail(&self.output(), n)
    }

    /// Waits until stdout holds `text`. Panics with the last output when `limit` passes first.
    pub async fn wait_for_stdout(&self, text: &str, limit: Duration) {
        let started = Instant::now();
        while !self.stdout().contains(text) {
            assert!(
                started.elapsed() < limit,
                "{} did not log {text:?} within {limit:?}:\n{}",
                self.what,
                self.output_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/healthz` on the telemetry port answers 200. Panics, naming the process, the
    /// port and its last output, when it exits first or `limit` passes.
    pub async fn wait_healthy(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = try_http_get(self.telemetry_port, "/healthz").await {
                return;
            }
            self.assert_running("before /healthz answered");
            assert!(
                started.elapsed() < limit,
                "{}: /healthz on 127.0.0.1:{} did not answer 200 within {limit:?}\n{}",
                self.what,
                self.telemetry_port,
                self.output_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until something accepts connections on `port` (an API port of the process). Panics,
    /// naming the process and port, when it exits first or `limit` passes.
    pub async fn wait_listening(&mut self, port: u16, limit: Duration) {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            self.assert_running(&format!("before it listened on {port}"));
            assert!(
                started.elapsed() < limit,
                "{} did not come up on {port} within {limit:?}\n{}",
                self.what,
                self.output_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_running(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status} {when}\n{}",
                self.what,
                self.output_tail(30)
            );
        }
    }

    /// Waits until the process has printed a whole first line on stdout and returns it (`sluice
    /// sim` prints its endpoint so). Panics when it exits first or `limit` passes.
    pub async fn wait_stdout_line(&mut self, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some((line, _)) = self.stdout().split_once('\n') {
                return line.to_string();
            }
            self.assert_running("before it printed a line");
            assert!(
                started.elapsed() < limit,
                "{} printed no line within {limit:?}\n{}",
                self.what,
                self.output_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/metrics` from the telemetry port. Err: nothing answers (yet), or not with 200.
    pub async fn try_scrape(&self) -> Result<String> {
        let (status, body) = try_http_get(self.telemetry_port, "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }

    /// `/metrics` from the telemetry port. Panics when it does not answer 200.
    pub async fn scrape(&self) -> String {
        self.try_scrape()
            .await
            .unwrap_or_else(|e| panic!("{}: scraping /metrics: {e:#}", self.what))
    }

    /// One sample of a fresh scrape ([`crate::metric`]). Panics when `/metrics` does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        crate::metric(&self.scrape().await, name)
    }

    /// Sends SIGTERM (through `kill -TERM`) and returns at once. Panics when it cannot be sent.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends a signal by name, as `kill` takes it (`-TERM`, `-KILL`, `-STOP`). Panics when it
    /// cannot be sent.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let sent = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap_or_else(|e| panic!("running kill {sig} {pid}: {e}"));
        assert!(sent.success(), "kill {sig} {pid} ({}): {sent}", self.what);
    }

    /// Waits up to `limit` for the process to exit on its own. Panics when it does not.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what)),
            Err(_) => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.what,
                self.output_tail(30)
            ),
        }
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] for the exit; returns the status and all output.
    pub async fn stop(self) -> Stopped {
        self.stop_within(STOP_TIMEOUT).await
    }

    /// SIGTERM, then waits up to `limit` for the exit (panics past it); returns the status and all
    /// output.
    pub async fn stop_within(mut self, limit: Duration) -> Stopped {
        self.sigterm();
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what)),
            Err(_) => panic!(
                "{} did not exit within {limit:?} after SIGTERM\n{}",
                self.what,
                self.output_tail(30)
            ),
        };
        self.finish(status).await
    }

    /// Waits for the process to exit on its own (up to `limit`, panicking past it), then returns
    /// the status and all output: for a process already sent SIGTERM by [`Sluice::sigterm`].
    pub async fn exited_within(mut self, limit: Duration) -> Stopped {
        let status = self.wait(limit).await;
        self.finish(status).await
    }

    async fn finish(mut self, status: ExitStatus) -> Stopped {
        // The pipes close with the process; the readers then finish.
        for reader in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        Stopped {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// SIGKILL, and reaps the process: no drain, nothing flushed. The handle stays, for its
    /// output.
    pub async fn kill_9(&mut self) {
        self.child
            .start_kill()
            .unwrap_or_else(|e| panic!("killing {}: {e}", self.what));
        let _ = self.child.wait().await;
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// A scratch directory named `sluice-{tag}-…` under the system's temp dir, removed when dropped:
/// for a process's config file, spool and logs.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sluice-{tag}-"))
        .tempdir()
        .expect("a temp dir")
}

/// A file holding `text`, named `sluice-…{suffix}` (`.toml`, say) under the system's temp dir,
/// removed when dropped.
pub fn temp_file(text: &str, suffix: &str) -> tempfile::TempPath {
    let mut file = tempfile::Builder::new()
        .prefix("sluice-")
        .suffix(suffix)
        .tempfile()
        .expect("a temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write the temp file");
    file.into_temp_path()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An HTTP answer: its status, its headers as lowercase `name: value` lines, and its body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, one `name: value` line each, lowercased (names and values), for `contains`.
    pub head: String,
    /// The body, as text (lossy UTF-8).
    pub body: String,
}

/// `GET http://127.0.0.1:{port}{path}` on a fresh connection: (status, body). Panics when nothing
/// answers.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path)
        .await
        .unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}{path}: {e:#}"))
}

/// `GET http://127.0.0.1:{port}{path}` on a fresh connection: (status, body). Err: nothing
/// listens, or the connection fails before a whole answer.
pub async fn try_http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let r = http_request(port, "GET", path, &[], b"").await?;
    Ok((r.status, r.body))
}

/// One HTTP/1.1 request to `127.0.0.1:{port}` on a fresh connection (`Connection: close`), with
/// `headers` and `body` as given. Err: nothing listens, or the connection fails before a whole
/// answer (a TLS port spoken to in plain HTTP, say).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::CONNECTION, "close");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::copy_from_slice(body)))?;
    let answer = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let head: String = response
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}\r\n", String::from_utf8_lossy(v.as_bytes())))
            .collect::<String>()
            .to_ascii_lowercase();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(HttpResponse {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    conn.abort();
    answer.with_context(|| format!("{method} 127.0.0.1:{port}{path}"))
}

/// Whether `test` is `{prefix}_{name}`: the check behind [`backend_tests!`](crate::backend_tests).
pub const fn is_matrix_name(test: &str, prefix: &str, name: &str) -> bool {
    let (t, p, n) = (test.as_bytes(), prefix.as_bytes(), name.as_bytes());
    if t.len() != p.len() + 1 + n.len() || t[p.len()] != b'_' {
        return false;
    }
    let mut i = 0;
    while i < p.len() {
        if t[i] != p[i] {
            return false;
        }
        i += 1;
    }
    let mut j = 0;
    while j < n.len() {
        if t[p.len() + 1 + j] != n[j] {
            return false;
        }
        j += 1;
    }
    true
}

/// The backend matrix: one test per backend, each running `name(Backend::…).await` on a
/// two-worker multi-threaded runtime (`#[tokio::test(flavor = "multi_thread", worker_threads =
/// 2)]`; the calling crate needs tokio).
///
/// Each test is named `{prefix}_{name}`, the prefix being `sim`, `ministack` or `dynamodb_local`
/// for [`Backend::Sim`](crate::Backend::Sim), [`Backend::MiniStack`](crate::Backend::MiniStack)
/// and [`Backend::DynamoDbLocal`](crate::Backend::DynamoDbLocal). The names are written out
/// (`macro_rules!` cannot glue identifiers together), so they stay greppable for the docs and CI
/// filters that use them; a name that does not follow the pattern fails to compile.
///
/// ```ignore
/// async fn poison_goes_to_the_dlq(backend: Backend) { /* ... */ }
/// sluice_testkit::backend_tests!(poison_goes_to_the_dlq {
///     sim_poison_goes_to_the_dlq: Sim,
///     ministack_poison_goes_to_the_dlq: MiniStack,
/// });
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($name:ident { $($test:ident : $backend:ident),+ $(,)? }) => {
        $(
            const _: () = assert!(
                $crate::process::is_matrix_name(
                    stringify!($test),
                    $crate::backend_tests!(@prefix $backend),
                    stringify!($name),
                ),
                concat!(
                    "backend_tests!: `", stringify!($test), "` must be `",
                    $crate::backend_tests!(@prefix $backend), "_", stringify!($name), "`"
                )
            );
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $name($crate::Backend::$backend).await
            }
        )+
    };
    (@prefix Sim) => { "sim" };
    (@prefix MiniStack) => { "ministack" };
    (@prefix DynamoDbLocal) => { "dynamodb_local" };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_names_are_the_prefix_an_underscore_and_the_name() {
        assert!(is_matrix_name("sim_x_y", "sim", "x_y"));
        assert!(is_matrix_name("dynamodb_local_x", "dynamodb_local", "x"));
        assert!(!is_matrix_name("sim_x_z", "sim", "x_y"));
        assert!(!is_matrix_name("ministack_x", "sim", "x"));
        assert!(!is_matrix_name("simx", "sim", "x"));
        assert!(!is_matrix_name("sim_x_", "sim", "x"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[tokio::test]
    async fn http_request_sends_headers_and_body_and_reads_the_answer() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("hello") {
                let n = s.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 202 Accepted\r\nX-Thing: Some Value\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = http_request(port, "POST", "/v1/logs", &[("X-Api-Key", "k")], b"hello")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (202, "ok"));
        assert!(r.head.contains("x-thing: some value"), "{}", r.head);
        let sent = server.await.unwrap().to_ascii_lowercase();
        assert!(sent.starts_with("post /v1/logs http/1.1\r\n"), "{sent}");
        assert!(sent.contains("x-api-key: k\r\n"), "{sent}");
        assert!(try_http_get(free_port(), "/healthz").await.is_err());
    }
}
