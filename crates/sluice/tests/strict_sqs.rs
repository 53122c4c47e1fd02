//! SQS as strict as AWS: each case asks sluice-sim and MiniStack the same question through the
//! real SDK. sluice-sim must answer as AWS documents (the error code the SDK reports, or
//! success); MiniStack's answers are recorded against the same expectation, and where it
//! differs from AWS the difference is written down in `MINISTACK_DIFFERS` below, so a change in
//! either server (the sim drifting, or a new MiniStack) fails this test instead of going
//! unnoticed. The sim's README section lists what it models (crates/sluice-sim/README.md).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use sluice_testkit::start_ministack;

/// What a call came to: Ok, or the error code the SDK reports.
type Verdict = Result<(), String>;

fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("(no code)").to_owned()
}

async fn client(endpoint: &str) -> Client {
    let base = sluice_testkit::sdk_config(endpoint).await;
    let config = aws_sdk_sqs::config::Builder::from(&base)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000_000
    )
}

async fn queue(c: &Client, prefix: &str, fifo: bool, visibility: u32) -> String {
    let name = if fifo {
        format!("{}.fifo", unique(prefix))
    } else {
        unique(prefix)
    };
    let mut req = c.create_queue().queue_name(name).attributes(
        QueueAttributeName::VisibilityTimeout,
        visibility.to_string(),
    );
    if fifo {
        req = req.attributes(QueueAttributeName::FifoQueue, "true");
    }
    req.send().await.unwrap().queue_url.unwrap()
}

async fn send(c: &Client, url: &str, body: &str) {
    let mut req = c.send_message().queue_url(url).message_body(body);
    if url.ends_with(".fifo") {
        req = req
            .message_group_id("g")
            .message_deduplication_id(unique("d"));
    }
    req.send().await.unwrap();
}

/// Receives one message (long poll of up to 2 s): its receipt handle.
async fn receive_one(c: &Client, url: &str) -> Option<String> {
    let out = c
        .receive_message()
        .queue_url(url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    out.messages()
        .first()
        .and_then(|m| m.receipt_handle().map(String::from))
}

/// A queue of one message, received with a 1 s visibility timeout that has then lapsed: the
/// queue's URL and the (now late) receipt handle.
async fn received_and_lapsed(c: &Client, prefix: &str, fifo: bool) -> (String, String) {
    let url = queue(c, prefix, fifo, 1).await;
    send(c, &url, "m").await;
    let h = receive_one(c, &url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    (url, h)
}

// ---- the cases -------------------------------------------------------------------------------

/// FIFO: deleting after the visibility timeout lapsed is refused ("The receipt handle has
/// expired"); on AWS the message is then delivered again.
async fn fifo_late_delete(c: &Client) -> Verdict {
    let (url, h) = received_and_lapsed(c, "late", true).await;
    c.delete_message()
        .queue_url(&url)
        .receipt_handle(h)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

/// FIFO, the batch form: the entry fails as a sender fault, ReceiptHandleIsInvalid.
async fn fifo_late_delete_batch(c: &Client) -> Verdict {
    let (url, h) = received_and_lapsed(c, "lateb", true).await;
    let out = c
        .delete_message_batch()
        .queue_url(&url)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("a")
                .receipt_handle(h)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .map_err(|e| code(&e))?;
    match out.failed().first() {
        Some(f) if f.sender_fault() => Err(f.code().to_owned()),
        Some(f) => Err(format!("{} (not a sender fault)", f.code())),
        None => Ok(()),
    }
}

/// FIFO: changing the visibility with an expired handle is refused too.
async fn fifo_late_change_visibility(c: &Client) -> Verdict {
    let (url, h) = received_and_lapsed(c, "latec", true).await;
    c.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(h)
        .visibility_timeout(30)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

/// Standard: the latest receipt still deletes after its visibility lapsed (the message is gone).
async fn standard_late_delete_deletes(c: &Client) -> Verdict {
    let (url, h) = received_and_lapsed(c, "lates", false).await;
    c.delete_message()
        .queue_url(&url)
        .receipt_handle(h)
        .send()
        .await
        .map_err(|e| code(&e))?;
    match receive_one(c, &url).await {
        None => Ok(()),
        Some(_) => Err("still delivered after its delete".into()),
    }
}

/// 12 hours from the receive, across extensions: 43,200 s asked a second after the receive
/// is beyond it; 43,000 s is not.
async fn visibility_total_is_capped_at_12_hours(c: &Client) -> Verdict {
    let url = queue(c, "cap", false, 30).await;
    send(c, &url, "m").await;
    let h = receive_one(c, &url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let change = |t: i32| {
        c.change_message_visibility()
            .queue_url(&url)
            .receipt_handle(&h)
            .visibility_timeout(t)
            .send()
    };
    change(43_000).await.map_err(|e| code(&e))?;
    change(43_200).await.map(|_| ()).map_err(|e| code(&e))
}

async fn negative_visibility_is_refused(c: &Client) -> Verdict {
    let url = queue(c, "neg", false, 30).await;
    send(c, &url, "m").await;
    let h = receive_one(c, &url).await.unwrap();
    c.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(h)
        .visibility_timeout(-1)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

async fn negative_wait_is_refused(c: &Client) -> Verdict {
    let url = queue(c, "negw", false, 30).await;
    c.receive_message()
        .queue_url(&url)
        .wait_time_seconds(-1)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

async fn delay_over_900_is_refused(c: &Client) -> Verdict {
    let url = queue(c, "delay", false, 30).await;
    c.send_message()
        .queue_url(&url)
        .message_body("m")
        .delay_seconds(901)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

async fn create_with(c: &Client, attrs: &[(QueueAttributeName, &str)]) -> Verdict {
    let mut req = c.create_queue().queue_name(unique("attrs"));
    for (k, v) in attrs {
        req = req.attributes(k.clone(), *v);
    }
    req.send().await.map(|_| ()).map_err(|e| code(&e))
}

async fn visibility_over_12_hours_is_refused(c: &Client) -> Verdict {
    create_with(c, &[(QueueAttributeName::VisibilityTimeout, "43201")]).await
}

async fn maximum_message_size_under_1024_is_refused(c: &Client) -> Verdict {
    create_with(c, &[(QueueAttributeName::MaximumMessageSize, "1023")]).await
}

async fn an_unknown_attribute_is_refused(c: &Client) -> Verdict {
    create_with(c, &[(QueueAttributeName::from("VisibilityTimeOut"), "30")]).await
}

async fn redrive(c: &Client, policy: impl FnOnce(&str) -> String, fifo_dlq: bool) -> Verdict {
    let dlq = queue(c, "dlq", fifo_dlq, 30).await;
    let arn = c
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();
    create_with(
        c,
        &[(QueueAttributeName::RedrivePolicy, policy(&arn).as_str())],
    )
    .await
}

/// A RedrivePolicy of `max_receive_count` to the dead-letter queue's ARN plus `suffix`.
async fn redrive_with(c: &Client, max_receive_count: u32, suffix: &str, fifo_dlq: bool) -> Verdict {
    redrive(
        c,
        |arn| {
            format!(
                r#"{{"deadLetterTargetArn":"{arn}{suffix}","maxReceiveCount":{max_receive_count}}}"#
            )
        },
        fifo_dlq,
    )
    .await
}

async fn redrive_max_receive_count_0_is_refused(c: &Client) -> Verdict {
    redrive_with(c, 0, "", false).await
}

async fn redrive_max_receive_count_1001_is_refused(c: &Client) -> Verdict {
    redrive_with(c, 1001, "", false).await
}

async fn redrive_to_a_missing_queue_is_refused(c: &Client) -> Verdict {
    redrive_with(c, 5, "-missing", false).await
}

async fn redrive_to_a_fifo_queue_from_a_standard_one_is_refused(c: &Client) -> Verdict {
    redrive_with(c, 5, "", true).await
}

async fn recreating_a_queue_with_other_values_is_refused(c: &Client) -> Verdict {
    let name = unique("again");
    let create = |v: &'static str| {
        c.create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::VisibilityTimeout, v)
            .send()
    };
    create("30").await.map_err(|e| code(&e))?;
    create("30")
        .await
        .map_err(|e| format!("same values: {}", code(&e)))?;
    create("60").await.map(|_| ()).map_err(|e| code(&e))
}

async fn send_with(c: &Client, attrs: Vec<(String, MessageAttributeValue)>) -> Verdict {
    let url = queue(c, "attr", false, 30).await;
    let mut req = c.send_message().queue_url(&url).message_body("m");
    for (k, v) in attrs {
        req = req.message_attributes(k, v);
    }
    req.send().await.map(|_| ()).map_err(|e| code(&e))
}

fn text(data_type: &str, v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(v)
        .build()
        .unwrap()
}

async fn eleven_message_attributes_are_refused(c: &Client) -> Verdict {
    send_with(
        c,
        (0..11)
            .map(|i| (format!("a{i}"), text("String", "v")))
            .collect(),
    )
    .await
}

async fn an_empty_attribute_value_is_refused(c: &Client) -> Verdict {
    send_with(c, vec![("a".into(), text("String", ""))]).await
}

async fn an_attribute_name_starting_with_aws_is_refused(c: &Client) -> Verdict {
    send_with(c, vec![("AWS.trace".into(), text("String", "v"))]).await
}

async fn an_unknown_attribute_type_is_refused(c: &Client) -> Verdict {
    send_with(c, vec![("a".into(), text("Text", "v"))]).await
}

async fn a_nul_in_an_attribute_value_is_refused(c: &Client) -> Verdict {
    send_with(c, vec![("a".into(), text("String", "x\u{0}y"))]).await
}

async fn a_valid_attribute_set_is_taken(c: &Client) -> Verdict {
    send_with(
        c,
        vec![
            ("trace.id".into(), text("String", "t-1")),
            ("size".into(), text("Number", "12.5")),
            ("kind".into(), text("String.custom", "x")),
        ],
    )
    .await
}

async fn a_bad_batch_entry_id_is_refused(c: &Client) -> Verdict {
    let url = queue(c, "ids", false, 30).await;
    c.send_message_batch()
        .queue_url(&url)
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("not valid!")
                .message_body("m")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

/// Ten 100 KiB bodies (1,000 KiB, under 1 MiB) with a 5 KiB attribute each: over 1 MiB
/// once the attributes count, as they do on SQS.
async fn a_batch_counts_its_attributes_against_1_mib(c: &Client) -> Verdict {
    let url = queue(c, "big", false, 30).await;
    let body = "b".repeat(100 * 1024);
    let attr = "a".repeat(5 * 1024);
    let mut req = c.send_message_batch().queue_url(&url);
    for i in 0..10 {
        req = req.entries(
            SendMessageBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .message_body(&body)
                .message_attributes("pad", text("String", &attr))
                .build()
                .unwrap(),
        );
    }
    req.send().await.map(|_| ()).map_err(|e| code(&e))
}

/// A FIFO duplicate inside the deduplication window is answered with the first send's
/// MessageId and SequenceNumber.
async fn a_fifo_duplicate_gets_the_first_sequence_number(c: &Client) -> Verdict {
    let url = queue(c, "dup", true, 30).await;
    let send = || {
        c.send_message()
            .queue_url(&url)
            .message_body("m")
            .message_group_id("g")
            .message_deduplication_id("same")
            .send()
    };
    let a = send().await.map_err(|e| code(&e))?;
    let b = send().await.map_err(|e| code(&e))?;
    if (a.message_id(), a.sequence_number()) == (b.message_id(), b.sequence_number()) {
        Ok(())
    } else {
        Err(format!(
            "duplicate answered {:?}/{:?}, first {:?}/{:?}",
            b.message_id(),
            b.sequence_number(),
            a.message_id(),
            a.sequence_number()
        ))
    }
}

async fn an_empty_binary_attribute_is_refused(c: &Client) -> Verdict {
    let url = queue(c, "bin", false, 30).await;
    c.send_message()
        .queue_url(&url)
        .message_body("m")
        .message_attributes(
            "b",
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(aws_sdk_sqs::primitives::Blob::new(Vec::<u8>::new()))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

async fn a_number_attribute_out_of_range_is_refused(c: &Client) -> Verdict {
    send_with(c, vec![("n".into(), text("Number", "1e200"))]).await
}

async fn recreating_a_queue_naming_a_default_value_is_the_same_queue(c: &Client) -> Verdict {
    let name = unique("defaults");
    c.create_queue()
        .queue_name(&name)
        .send()
        .await
        .map_err(|e| code(&e))?;
    c.create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "345600")
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

async fn fifo_queue_false_on_a_standard_queue_is_refused(c: &Client) -> Verdict {
    create_with(c, &[(QueueAttributeName::FifoQueue, "false")]).await
}

async fn a_deduplication_id_on_a_standard_queue_is_refused(c: &Client) -> Verdict {
    let url = queue(c, "stddedup", false, 30).await;
    c.send_message()
        .queue_url(&url)
        .message_body("m")
        .message_deduplication_id("d")
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

// ---- the table -------------------------------------------------------------------------------

type CaseFn =
    for<'a> fn(
        &'a Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>>;

macro_rules! case {
    ($f:ident, $aws:expr) => {
        (
            stringify!($f),
            (|c| Box::pin($f(c))) as CaseFn,
            $aws as Result<(), &str>,
        )
    };
}

/// Each case, and what AWS answers (the error code the SDK reports).
fn cases() -> Vec<(&'static str, CaseFn, Result<(), &'static str>)> {
    vec![
        case!(fifo_late_delete, Err("InvalidParameterValue")),
        case!(fifo_late_delete_batch, Err("ReceiptHandleIsInvalid")),
        case!(fifo_late_change_visibility, Err("InvalidParameterValue")),
        case!(standard_late_delete_deletes, Ok(())),
        case!(
            visibility_total_is_capped_at_12_hours,
            Err("InvalidParameterValue")
        ),
        case!(negative_visibility_is_refused, Err("InvalidParameterValue")),
        case!(negative_wait_is_refused, Err("InvalidParameterValue")),
        case!(delay_over_900_is_refused, Err("InvalidParameterValue")),
        case!(
            visibility_over_12_hours_is_refused,
            Err("InvalidAttributeValue")
        ),
        case!(
            maximum_message_size_under_1024_is_refused,
            Err("InvalidAttributeValue")
        ),
        case!(an_unknown_attribute_is_refused, Err("InvalidAttributeName")),
        case!(
            redrive_max_receive_count_0_is_refused,
            Err("InvalidAttributeValue")
        ),
        case!(
            redrive_max_receive_count_1001_is_refused,
            Err("InvalidAttributeValue")
        ),
        case!(
            redrive_to_a_missing_queue_is_refused,
            Err("InvalidAttributeValue")
        ),
        case!(
            redrive_to_a_fifo_queue_from_a_standard_one_is_refused,
            Err("InvalidAttributeValue")
        ),
        case!(
            recreating_a_queue_with_other_values_is_refused,
            Err("QueueAlreadyExists")
        ),
        case!(
            eleven_message_attributes_are_refused,
            Err("InvalidParameterValue")
        ),
        case!(
            an_empty_attribute_value_is_refused,
            Err("InvalidParameterValue")
        ),
        case!(
            an_attribute_name_starting_with_aws_is_refused,
            Err("InvalidParameterValue")
        ),
        case!(
            an_unknown_attribute_type_is_refused,
            Err("InvalidParameterValue")
        ),
        case!(
            a_nul_in_an_attribute_value_is_refused,
            Err("InvalidParameterValue")
        ),
        case!(a_valid_attribute_set_is_taken, Ok(())),
        case!(
            a_bad_batch_entry_id_is_refused,
            Err("AWS.SimpleQueueService.InvalidBatchEntryId")
        ),
        case!(
            a_batch_counts_its_attributes_against_1_mib,
            Err("AWS.SimpleQueueService.BatchRequestTooLong")
        ),
        case!(a_fifo_duplicate_gets_the_first_sequence_number, Ok(())),
        case!(
            an_empty_binary_attribute_is_refused,
            Err("InvalidParameterValue")
        ),
        case!(
            a_number_attribute_out_of_range_is_refused,
            Err("InvalidParameterValue")
        ),
        case!(
            recreating_a_queue_naming_a_default_value_is_the_same_queue,
            Ok(())
        ),
        case!(
            fifo_queue_false_on_a_standard_queue_is_refused,
            Err("InvalidAttributeName")
        ),
        case!(
            a_deduplication_id_on_a_standard_queue_is_refused,
            Err("InvalidParameterValue")
        ),
    ]
}

/// Where MiniStack 1.5.33 answers otherwise than AWS: (case, what it answers). Recorded by this
/// test; a MiniStack that changes fails it, so the record stays true.
const MINISTACK_DIFFERS: &[(&str, &str)] = &[
    ("a_batch_counts_its_attributes_against_1_mib", "Ok"),
    ("a_deduplication_id_on_a_standard_queue_is_refused", "Ok"),
    ("a_nul_in_an_attribute_value_is_refused", "Ok"),
    ("a_number_attribute_out_of_range_is_refused", "Ok"),
    ("an_attribute_name_starting_with_aws_is_refused", "Ok"),
    ("an_empty_attribute_value_is_refused", "Ok"),
    ("an_empty_binary_attribute_is_refused", "Ok"),
    ("an_unknown_attribute_is_refused", "Ok"),
    ("an_unknown_attribute_type_is_refused", "Ok"),
    ("delay_over_900_is_refused", "Ok"),
    ("eleven_message_attributes_are_refused", "Ok"),
    ("fifo_late_change_visibility", "Ok"),
    ("fifo_late_delete", "Ok"),
    ("fifo_late_delete_batch", "Ok"),
    ("fifo_queue_false_on_a_standard_queue_is_refused", "Ok"),
    ("negative_visibility_is_refused", "Ok"),
    ("negative_wait_is_refused", "Ok"),
    (
        "redrive_to_a_fifo_queue_from_a_standard_one_is_refused",
        "Ok",
    ),
    ("visibility_total_is_capped_at_12_hours", "Ok"),
];

async fn run_all(endpoint: &str) -> Vec<(&'static str, Result<(), &'static str>, Verdict)> {
    let c = client(endpoint).await;
    let mut runs = tokio::task::JoinSet::new();
    for (name, f, aws) in cases() {
        let c = c.clone();
        runs.spawn(async move { (name, aws, f(&c).await) });
    }
    let mut out = runs.join_all().await;
    out.sort_by_key(|(name, _, _)| *name);
    out
}

fn as_aws(v: &Verdict) -> Result<(), &str> {
    v.as_ref().map(|_| ()).map_err(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_sim_answers_as_aws_documents() {
    let sim = sluice_sim::SimServer::start("127.0.0.1:0".parse().unwrap(), Default::default())
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for (name, aws, got) in run_all(sim.endpoint()).await {
        if as_aws(&got) != aws {
            wrong.push(format!("{name}: AWS {aws:?}, sluice-sim {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "sluice-sim differs from AWS:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ministack_is_held_to_the_same_cases_and_its_differences_are_recorded() {
    let server = start_ministack().await.unwrap();
    let mut differs = Vec::new();
    for (name, aws, got) in run_all(&server.endpoint).await {
        if as_aws(&got) != aws {
            let answer = match &got {
                Ok(()) => "Ok".to_string(),
                Err(e) => e.clone(),
            };
            eprintln!("MiniStack differs from AWS on {name}: AWS {aws:?}, MiniStack {answer}");
            differs.push((name, answer));
        }
    }
    let recorded: Vec<(&str, String)> = MINISTACK_DIFFERS
        .iter()
        .map(|(n, a)| (*n, a.to_string()))
        .collect();
    assert_eq!(
        differs, recorded,
        "MiniStack's differences from AWS changed: update MINISTACK_DIFFERS and the sim README"
    );
}

// ---- what only the simulator can be asked to do --------------------------------------------

/// Short polls: deterministic by default (every visible message, up to what was asked); with a
/// seed, a random number from none to what was asked, as SQS's sampling short poll may answer
/// on a small queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_poll_samples_when_asked_and_is_deterministic_by_default() {
    async fn counts(config: sluice_sim::SimConfig) -> Vec<usize> {
        let sim = sluice_sim::SimServer::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let c = client(sim.endpoint()).await;
        let url = queue(&c, "short", false, 30).await;
        for i in 0..10 {
            send(&c, &url, &format!("m{i}")).await;
        }
        let mut out = Vec::new();
        for _ in 0..20 {
            let got = c
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
            out.push(got.messages().len());
        }
        out
    }
    assert_eq!(counts(Default::default()).await, vec![10; 20]);
    let sampled = counts(sluice_sim::SimConfig {
        short_poll_sampling_seed: Some(7),
        ..Default::default()
    })
    .await;
    assert!(sampled.iter().any(|&n| n < 10), "{sampled:?}");
    assert!(sampled.iter().any(|&n| n > 0), "{sampled:?}");
    assert!(sampled.iter().all(|&n| n <= 10), "{sampled:?}");
}

/// A batch entry can fail on the server's side (SenderFault false) inside a call that
/// succeeds; the producer sends such entries again, over the real SDK, and loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_failing_on_the_servers_side_are_retried_by_the_producer() {
    let sim = sluice_sim::SimServer::start(
        "127.0.0.1:0".parse().unwrap(),
        sluice_sim::SimConfig {
            faults: sluice_sim::Faults {
                entry_server_fault_rate: 1.0,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let c = client(sim.endpoint()).await;
    let url = queue(&c, "entries", false, 30).await;
    let out = c
        .send_message_batch()
        .queue_url(&url)
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("a")
                .message_body("m")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let f = &out.failed()[0];
    assert_eq!((f.code(), f.sender_fault()), ("InternalError", false));
    assert!(
        receive_one(&c, &url).await.is_none(),
        "a failed entry is not enqueued"
    );

    // A third of the entries fail: every log still arrives.
    sim.set_faults(sluice_sim::Faults {
        entry_server_fault_rate: 0.3,
        ..Default::default()
    })
    .unwrap();
    let producer = sluice_producer::Producer::start(
        sluice_producer::ProducerConfig {
            linger: Duration::from_millis(5),
            max_message_bytes: 1024,
            retry_base: Duration::from_millis(10),
            ..Default::default()
        },
        sluice_producer::sqs::SqsTransport::new(c.clone(), &url),
    )
    .unwrap();
    let logs: Vec<serde_json::Value> = (0..300)
        .map(|i| serde_json::json!({"request_id": format!("r{i}"), "pad": "x".repeat(400)}))
        .collect();
    producer.send_durable(&logs).await.unwrap();
    producer.close().await;
    sim.set_faults(Default::default()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let got = c
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            break;
        }
        for m in got.messages() {
            for line in m.body().unwrap_or_default().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                seen.insert(v["request_id"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(
        seen.len(),
        300,
        "every log arrived once its entry was retried"
    );
}

/// On a FIFO queue SQS refuses a delete that arrives after the visibility timeout lapsed. When
/// sluice's ack is that late (its heartbeat cannot reach the queue, and the delete is slow), the
/// refusal is counted as an ack failure, the message comes back, is written again to the same
/// row, and is deleted once the queue answers in time: nothing lost, nothing doubled, no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_fifo_ack_that_sqs_refuses_is_rewritten_to_the_same_row_and_acked_later() {
    use sluice::pipeline::Pipeline;
    use std::sync::atomic::Ordering;
    let env = sluice_testkit::TestEnv::start(sluice_testkit::Backend::Sim)
        .await
        .unwrap();
    let sim = env.sim.as_ref().unwrap();
    let url = queue(&env.sqs, "late-ack", true, 2).await;
    sluice_dynamodb::admin::create_table(&env.dynamodb, "late", "request_id", Some(1000))
        .await
        .unwrap();
    for i in 0..5 {
        env.sqs
            .send_message()
            .queue_url(&url)
            .message_body(format!(
                r#"{{"request_id":"late-{i}","ts":1795341600000,"method":"GET","path":"/","status":200,"latency_ms":1}}"#
            ))
            .message_group_id(format!("g{i}"))
            .message_deduplication_id(format!("d{i}"))
            .send()
            .await
            .unwrap();
    }
    // The heartbeat cannot reach the queue, and a delete takes longer than the visibility.
    let mut op_latency = std::collections::HashMap::new();
    op_latency.insert(
        "DeleteMessageBatch".to_string(),
        sluice_sim::Latency {
            fixed_ms: 3000,
            jitter_ms: 0,
        },
    );
    sim.set_faults(sluice_sim::Faults {
        op_latency,
        hang_ops: vec!["ChangeMessageVisibilityBatch".into()],
        ..Default::default()
    })
    .unwrap();
    let mut s = sluice::config::Settings::default();
    s.sqs.queue_url = Some(url.parse().unwrap());
    s.sqs.wait_time_seconds = 1;
    s.dynamodb.table = "late".into();
    s.validate().unwrap();
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = std::time::Instant::now();
    while stats.ack_failures.load(Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no late ack was refused: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.set_faults(Default::default()).unwrap();
    while stats.acked.load(Ordering::Relaxed) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not acked once the queue answered in time: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let summary = run.await.unwrap();
    assert!(
        summary.received > 5,
        "the refused messages came back: {summary:?}"
    );
    let rows = env.scan_keys("late", "request_id").await.unwrap();
    assert_eq!(rows.len(), 5, "one row per log, rewritten in place");
    assert_eq!(
        sim.queues_report()
            .as_object()
            .unwrap()
            .values()
            .map(|q| q["visible"].as_u64().unwrap() + q["in_flight"].as_u64().unwrap())
            .sum::<u64>(),
        0,
        "every message deleted in the end"
    );
}
