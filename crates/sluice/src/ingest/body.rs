//! What a request body may be, and its logs: the framing is the codec's
//! ([`sluice_core::codec::frames`]: one object, an array of them, or NDJSON), and each log is
//! checked as `sluice run` would decode it, so nothing answered 202 here is dead-lettered there.

use std::io::Read;

use axum::http::StatusCode;
use serde_json::{Map, Value};
use sluice_core::Schema;
use sluice_core::codec::{Frame, frames};
use sluice_producer::Log;

/// Why a body was refused: the status and what to tell the client.
#[derive(Debug)]
pub struct BadBody {
    /// 400, 413 or 415.
    pub status: StatusCode,
    /// What was wrong, naming the line and log when there is one.
    pub message: String,
    /// The line (1-based) the bad log starts on.
    pub line: Option<usize>,
    /// The bad log's place in the body (0-based).
    pub log: Option<usize>,
}

fn bad(message: String, line: Option<usize>, log: Option<usize>) -> BadBody {
    BadBody {
        status: StatusCode::BAD_REQUEST,
        message,
        line,
        log,
    }
}

/// What a body may hold, beyond the schema.
#[derive(Debug, Clone, Default)]
pub struct BodyRules {
    /// Logs per request (ingest.max_logs_per_request).
    pub max_logs: usize,
    /// The largest log a message can carry (producer.max_message_bytes, capped by the queue).
    pub max_log_bytes: usize,
    /// FIFO queues: the log field whose value is the message group (producer.group_field).
    pub group_field: Option<String>,
}

/// The logs of a body, with the line each starts on.
#[derive(Debug)]
pub struct Parsed {
    /// The logs, in order.
    pub logs: Vec<Log>,
    /// The line each starts on.
    pub lines: Vec<usize>,
}

/// Parses a body (one object, an array of objects, or NDJSON) into logs, checking each as
/// `sluice run` would, so nothing accepted here is dead-lettered there.
pub fn parse_body(text: &[u8], schema: &Schema, rules: &BodyRules) -> Result<Parsed, BadBody> {
    let text = std::str::from_utf8(text).map_err(|e| {
        let line = 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        bad(
            format!(
                "line {line}: the body is not UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
            Some(line),
            None,
        )
    })?;
    let mut parsed = Parsed {
        logs: Vec::new(),
        lines: Vec::new(),
    };
    for frame in frames(text).numbered() {
        let frame = frame.map_err(|e| {
            bad(
                format!("line {}: not JSON: {e}", e.line()),
                Some(e.line()),
                Some(parsed.logs.len()),
            )
        })?;
        let line = frame.line;
        let log = check_log(parsed.logs.len(), frame, schema, rules)?;
        parsed.logs.push(log);
        parsed.lines.push(line);
    }
    if parsed.logs.is_empty() {
        return Err(bad("the body holds no logs".into(), None, None));
    }
    Ok(parsed)
}

/// The `index`-th log of a body, checked: within the request's count, an object, decodable by
/// the schema, and small enough for one message; with its FIFO group when the queue has them.
fn check_log(
    index: usize,
    frame: Frame<'_>,
    schema: &Schema,
    rules: &BodyRules,
) -> Result<Log, BadBody> {
    let line = frame.line;
    let at = |message: String| bad(message, Some(line), Some(index));
    let too_large = |message: String| BadBody {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message,
        line: Some(line),
        log: Some(index),
    };
    if index >= rules.max_logs {
        return Err(too_large(format!(
            "more than {} logs in one request (ingest.max_logs_per_request); split it",
            rules.max_logs
        )));
    }
    let map = match frame.value {
        Value::Object(map) => map,
        other => {
            let found = not_an_object(&other);
            return Err(at(format!(
                "line {line}: log {index} is not a JSON object but {found}"
            )));
        }
    };
    let json = match frame.raw {
        Some(r) => r.trim().to_owned(),
        None => Value::Object(map.clone()).to_string(),
    };
    let group = group_of(&map, rules);
    sluice_core::codec::decode_log(index, map, schema)
        .map_err(|e| at(format!("line {line}: {e} ({})", e.reason())))?;
    let mut log = Log::from_json(json).map_err(|e| at(e.to_string()))?;
    if let Some(g) = group {
        log = log.with_group(g);
    }
    let bytes = log.json().len() + 1;
    if rules.max_log_bytes > 0 && bytes > rules.max_log_bytes {
        return Err(too_large(format!(
            "line {line}: log {index} is {bytes} bytes, more than one message can carry ({} bytes: producer.max_message_bytes or the queue's MaximumMessageSize)",
            rules.max_log_bytes
        )));
    }
    Ok(log)
}

/// What a value that should have been a log is, in words.
fn not_an_object(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        _ => "an array inside an array",
    }
}

/// FIFO queues: the message group a log names in the group field (its text; null: none).
fn group_of(map: &Map<String, Value>, rules: &BodyRules) -> Option<String> {
    let v = map.get(rules.group_field.as_ref()?)?;
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// Decompresses a gzip body whole: every member (`cat a.gz b.gz`, pigz and many shippers send
/// several), refusing trailing bytes that are not gzip.
pub fn read_gzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BadBody> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| {
        bad(
            format!("Content-Encoding is gzip but the body does not decompress: {e}"),
            None,
            None,
        )
    })?;
    if out.len() > limit {
        return Err(BadBody {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the body decompresses to more than {limit} bytes (ingest.max_body_bytes)"
            ),
            line: None,
            log: None,
        });
    }
    Ok(out)
}
