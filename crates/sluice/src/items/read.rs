//! `sluice get` and `sluice export`: items read back into the logs they were written from,
//! compressed and plain alike.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use aws_config::BehaviorVersion;
use serde_json::Value;
use sluice_core::Dictionaries;
use sluice_dynamodb::stored::{ReadBack, TableReader};

use crate::command::{Outcome, short_lived};
use crate::config::{self, Settings};

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// TOML config: dynamodb.table and the [schema] (key attribute, TTL) it was written with.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The logs' keys (request ids): each is printed as the JSON it was sent as, one per line.
    #[arg(value_name = "REQUEST_ID", required = true)]
    pub keys: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// TOML config: dynamodb.table and the [schema] it was written with.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only logs whose timestamp (schema.ts_field) is at or after this: RFC 3339 or epoch
    /// milliseconds. Logs without a timestamp are left out when set.
    #[arg(long, value_name = "TS")]
    pub since: Option<String>,
    /// Items per Scan page (1..=1000). A Scan reads the whole table: it costs read capacity.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub page: i32,
}

fn reader(settings: &Settings, sdk: &aws_config::SdkConfig) -> Result<TableReader> {
    let table = settings.dynamodb.table.clone();
    if table.is_empty() {
        bail!("dynamodb.table is not set");
    }
    Ok(TableReader::new(
        aws_sdk_dynamodb::Client::new(sdk),
        table,
        settings.schema.key_attribute.clone(),
        settings.schema.added_attributes(),
    ))
}

/// `sluice get`: exit 0 when every key was found, 1 when one was missing or unreadable.
pub async fn get(args: GetArgs) -> Outcome {
    short_lived("warn", async move {
        let settings = config::load_partial(args.config.as_deref())?;
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let reader = reader(&settings, &sdk)?;
        let mut dictionaries = Dictionaries::new();
        let mut missing = 0;
        let mut out = std::io::stdout().lock();
        for key in &args.keys {
            match reader.get(key, &mut dictionaries).await {
                Ok(ReadBack::Log(log)) => writeln!(out, "{}", Value::Object(log))?,
                Ok(ReadBack::Missing) => {
                    missing += 1;
                    eprintln!("not found: `{key}` in table `{}`", reader.table());
                }
                Err(e) => {
                    missing += 1;
                    eprintln!("cannot read `{key}`: {e}");
                }
            }
        }
        Ok(if missing > 0 { 1 } else { 0 })
    })
    .await
}

/// What an export did.
#[derive(Debug, Default)]
struct Exported {
    scanned: u64,
    written: u64,
    before_since: u64,
    failed: u64,
}

/// `sluice export`: the table as NDJSON on stdout, progress and a summary on stderr; exit 1 when
/// an item could not be read (each is named, the rest still exported).
pub async fn export(args: ExportArgs) -> Outcome {
    short_lived("warn", async move {
        let settings = config::load_partial(args.config.as_deref())?;
        let since = match &args.since {
            None => None,
            Some(text) => Some(since_ms(text)?),
        };
        if !(1..=1000).contains(&args.page) {
            bail!("--page {} is outside 1..=1000", args.page);
        }
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let reader = reader(&settings, &sdk)?;
        let started = Instant::now();
        let progress = progress_bar();
        let mut dictionaries = Dictionaries::new();
        let mut done = Exported::default();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut start = None;
        loop {
            let (items, next) = reader
                .scan_page(start, args.page)
                .await
                .map_err(|e| anyhow!(e))?;
            for attrs in items {
                done.scanned += 1;
                match reader.decode(&attrs, &mut dictionaries).await {
                    Ok(log) => {
                        let ts = log
                            .get(&settings.schema.ts_field)
                            .and_then(sluice_core::codec::parse_ts_ms);
                        if since.is_some_and(|s| ts.is_none_or(|t| t < s)) {
                            done.before_since += 1;
                            continue;
                        }
                        writeln!(out, "{}", Value::Object(log))?;
                        done.written += 1;
                    }
                    Err(e) => {
                        done.failed += 1;
                        progress.suspend(|| eprintln!("cannot read an item: {e}"));
                    }
                }
            }
            progress.set_message(format!(
                "{} items scanned, {} logs exported",
                done.scanned, done.written
            ));
            start = next;
            if start.is_none() {
                break;
            }
        }
        out.flush()?;
        progress.finish_and_clear();
        eprintln!(
            "exported {} logs from `{}` in {:.1} s: {} items scanned, {} before --since, {} unreadable",
            done.written,
            reader.table(),
            started.elapsed().as_secs_f64(),
            done.scanned,
            done.before_since,
            done.failed
        );
        Ok(if done.failed > 0 { 1 } else { 0 })
    })
    .await
}

/// A spinner on stderr when it is a terminal (hidden otherwise: the summary line says it all).
fn progress_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `--since`: RFC 3339 text or epoch milliseconds.
fn since_ms(text: &str) -> Result<i64> {
    let value = match text.parse::<i64>() {
        Ok(ms) => Value::from(ms),
        Err(_) => Value::String(text.to_string()),
    };
    sluice_core::codec::parse_ts_ms(&value).ok_or_else(|| {
        anyhow!(
            "--since `{text}` is neither RFC 3339 (2026-12-05T00:00:00Z) nor epoch milliseconds"
        )
    })
}
