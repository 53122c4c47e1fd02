//! A stand-in for the parts of EC2 an instance's departure involves: IMDSv2 (token, instance id,
//! the group tag, and the three departure signals) and, on the same port, the Auto Scaling query
//! API's CompleteLifecycleAction, checked the way Auto Scaling checks it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;

/// The instance id the stand-in's IMDS reports.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// One CompleteLifecycleAction call Auto Scaling accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleAction {
    /// AutoScalingGroupName.
    pub group: String,
    /// LifecycleHookName.
    pub hook: String,
    /// InstanceId.
    pub instance: String,
    /// LifecycleActionResult (CONTINUE or ABANDON).
    pub result: String,
}

#[derive(Default)]
struct State {
    interruption: Option<String>,
    rebalance: Option<String>,
    lifecycle_state: Option<String>,
    group: Option<String>,
    hook: Option<String>,
    completed: Vec<LifecycleAction>,
    refused: Vec<String>,
}

/// An IMDSv2 server with an Auto Scaling endpoint beside it. Token PUTs succeed; `instance-id`
/// answers [`INSTANCE_ID`]; the group tag, the spot notice, the rebalance recommendation and the
/// target lifecycle state answer 404 until set. `POST /` takes CompleteLifecycleAction and accepts
/// it only for the group and hook set with [`FakeImds::in_group`], for this instance, while its
/// target lifecycle state is `Terminated` (Auto Scaling holds it in Terminating:Wait), with
/// CONTINUE or ABANDON, and only once; anything else gets Auto Scaling's ValidationError. Stops
/// when dropped.
pub struct FakeImds {
    /// Base URL of the server, for AWS_EC2_METADATA_SERVICE_ENDPOINT and
    /// AWS_ENDPOINT_URL_AUTO_SCALING.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeImds {
    /// Binds a free loopback port and serves on it in a task of the current runtime, with nothing
    /// set. Err: the port could not be bound.
    pub async fn start() -> Result<FakeImds> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Ok(FakeImds {
            endpoint,
            state,
            task,
        })
    }

    /// From now on, IMDS announces a spot interruption (`action` terminate, two minutes ahead).
    pub fn notify(&self, time_rfc3339: &str) {
        lock(&self.state).interruption = Some(format!(
            r#"{{"action":"terminate","time":"{time_rfc3339}"}}"#
        ));
    }

    /// From now on, IMDS shows a rebalance recommendation.
    pub fn recommend_rebalance(&self, time_rfc3339: &str) {
        lock(&self.state).rebalance = Some(format!(r#"{{"noticeTime":"{time_rfc3339}"}}"#));
    }

    /// The instance belongs to `group` (its `aws:autoscaling:groupName` tag), which has a
    /// termination lifecycle hook named `hook`, and is in service.
    pub fn in_group(&self, group: &str, hook: &str) {
        let mut s = lock(&self.state);
        s.group = Some(group.into());
        s.hook = Some(hook.into());
        s.lifecycle_state = Some("InService".into());
    }

    /// Sets the target lifecycle state IMDS reports (`Terminated` on scale-in).
    pub fn set_lifecycle_state(&self, state: &str) {
        lock(&self.state).lifecycle_state = Some(state.into());
    }

    /// The CompleteLifecycleAction calls accepted so far.
    pub fn completed(&self) -> Vec<LifecycleAction> {
        lock(&self.state).completed.clone()
    }

    /// The CompleteLifecycleAction calls refused so far, by the error message given.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.state).refused.clone()
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, text) = answer(method, path, &body, &mut lock(&state));
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

fn answer(
    method: &str,
    path: &str,
    body: &str,
    s: &mut State,
) -> (&'static str, &'static str, String) {
    let found = |v: &Option<String>| match v {
        Some(v) => ("200 OK", "text/plain", v.clone()),
        None => ("404 Not Found", "text/plain", String::new()),
    };
    match (method, path) {
        ("PUT", "/latest/api/token") => ("200 OK", "text/plain", "fake-imds-token".into()),
        ("GET", "/latest/meta-data/instance-id") => ("200 OK", "text/plain", INSTANCE_ID.into()),
        ("GET", "/latest/meta-data/spot/instance-action") => found(&s.interruption),
        ("GET", "/latest/meta-data/events/recommendations/rebalance") => found(&s.rebalance),
        ("GET", "/latest/meta-data/autoscaling/target-lifecycle-state") => {
            found(&s.lifecycle_state)
        }
        ("GET", "/latest/meta-data/tags/instance/aws:autoscaling:groupName") => found(&s.group),
        ("POST", "/") => autoscaling(body, s),
        _ => ("404 Not Found", "text/plain", String::new()),
    }
}

/// The Auto Scaling query API: CompleteLifecycleAction only.
fn autoscaling(body: &str, s: &mut State) -> (&'static str, &'static str, String) {
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let action = get("Action");
    if action != "CompleteLifecycleAction" {
        return error(&format!("{action} is not served here"));
    }
    let call = LifecycleAction {
        group: get("AutoScalingGroupName"),
        hook: get("LifecycleHookName"),
        instance: get("InstanceId"),
        result: get("LifecycleActionResult"),
    };
    let refusal = if s.group.as_deref() != Some(call.group.as_str()) {
        Some(format!("AutoScalingGroup name not found - {}", call.group))
    } else if s.hook.as_deref() != Some(call.hook.as_str()) {
        Some(format!(
            "No Lifecycle Hook found with name {} for group {}",
            call.hook, call.group
        ))
    } else if call.instance != INSTANCE_ID
        || s.lifecycle_state.as_deref() != Some("Terminated")
        || s.completed.iter().any(|c| c.instance == call.instance)
    {
        Some(format!(
            "No active Lifecycle Action found with instance ID {}",
            call.instance
        ))
    } else if !matches!(call.result.as_str(), "CONTINUE" | "ABANDON") {
        Some(format!(
            "LifecycleActionResult must be CONTINUE or ABANDON, got {}",
            call.result
        ))
    } else {
        None
    };
    if let Some(message) = refusal {
        s.refused.push(message.clone());
        return error(&message);
    }
    s.completed.push(call);
    (
        "200 OK",
        "text/xml",
        "<CompleteLifecycleActionResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><CompleteLifecycleActionResult/><ResponseMetadata><RequestId>fake-imds</RequestId></ResponseMetadata></CompleteLifecycleActionResponse>".into(),
    )
}

fn error(message: &str) -> (&'static str, &'static str, String) {
    (
        "400 Bad Request",
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error><Type>Sender</Type><Code>ValidationError</Code><Message>{message}</Message></Error><RequestId>fake-imds</RequestId></ErrorResponse>"
        ),
    )
}

/// application/x-www-form-urlencoded: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
