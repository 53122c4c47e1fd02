//! What every command returns, and what the binary makes of it: an exit status, with the error
//! said once on stderr (and in the log for the long-running commands).

use std::path::PathBuf;
use std::process::ExitCode;

/// A command's outcome: the exit status it chose, or how it failed.
pub type Outcome = Result<u8, Failure>;

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The config (file and environment) is wrong: exit 2, naming what to fix.
    Config(anyhow::Error),
    /// The command ran and failed: exit 1. `what` names it in the log (`sluice failed`).
    Failed {
        error: anyhow::Error,
        what: Option<&'static str>,
    },
}

impl Failure {
    /// A failure said on stderr only (the short-lived commands).
    pub fn plain(error: anyhow::Error) -> Self {
        Failure::Failed { error, what: None }
    }

    /// A failure of a long-running command: also an ERROR log line, so a journal or a log
    /// pipeline has it.
    pub fn logged(what: &'static str) -> impl FnOnce(anyhow::Error) -> Self {
        move |error| Failure::Failed {
            error,
            what: Some(what),
        }
    }

    /// The exit status, once the error has been said.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Failure::Config(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
            Failure::Failed { error, what } => {
                if let Some(what) = what {
                    tracing::error!(error = format!("{error:#}"), "{what}");
                }
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs a short-lived command (`dlq`, `kafka`, and the tools): its log lines at `log_level` and
/// above as plain text on stderr, and a failure said on stderr only.
pub async fn short_lived<T>(
    log_level: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, Failure> {
    crate::telemetry::init_tracing(crate::config::LogFormat::Pretty, log_level);
    work.await.map_err(Failure::plain)
}

/// Exit status 130: a second SIGTERM or SIGINT ended the command at once.
pub const INTERRUPTED: u8 = 130;

/// The config file option every config-reading command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML config file (see config/sluice.example.toml). Every key can also be set from the
    /// environment as SLUICE__SECTION__KEY, e.g. SLUICE__SQS__QUEUE_URL.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}
