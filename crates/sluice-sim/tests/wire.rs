//! sluice-sim through the real AWS SDK for Rust: what SQS and DynamoDB clients see on the wire.
//!
//! Every test starts its own simulator on a free loopback port. SDK retries are disabled so each
//! call is exactly one request and the simulator's answers (throttles, injected errors) reach the
//! test unchanged. Timing is only used where behaviour depends on it, with generous bounds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemError, BatchWriteItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ProvisionedThroughput, PutRequest, ReturnConsumedCapacity, ScalarAttributeType, Select,
    WriteRequest,
};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::Value;
use sluice_sim::{Faults, Latency, SimConfig, SimServer, TableSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Item = HashMap<String, AttributeValue>;
type BatchResult = Result<
    BatchWriteItemOutput,
    SdkError<BatchWriteItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
>;

// ---- shared helpers ----------------------------------------------------------------------------

async fn start(config: SimConfig) -> SimServer {
    SimServer::start("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("the simulator starts")
}

async fn sdk_config(sim: &SimServer) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(sim.endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "t",
        ))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

async fn sqs_client(sim: &SimServer) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config(sim).await)
}

async fn ddb_client(sim: &SimServer) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(sim).await)
}

/// A minimal HTTP/1.1 client for the admin endpoints: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the simulator");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---- SQS helpers -------------------------------------------------------------------------------

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attrs: &[(QueueAttributeName, &str)],
) -> String {
    let mut req = sqs.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), *v);
    }
    req.send()
        .await
        .expect("CreateQueue")
        .queue_url()
        .expect("QueueUrl")
        .to_string()
}

async fn queue_attributes(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> HashMap<QueueAttributeName, String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .cloned()
        .unwrap_or_default()
}

/// (visible, in flight, delayed) as GetQueueAttributes reports them.
async fn counts(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64, u64) {
    let a = queue_attributes(sqs, url).await;
    let n = |k: QueueAttributeName| -> u64 {
        a.get(&k)
            .unwrap_or_else(|| panic!("{k:?} missing from {a:?}"))
            .parse()
            .expect("a count")
    };
    (
        n(QueueAttributeName::ApproximateNumberOfMessages),
        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

/// A short-poll receive asking for the receive count.
async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, max: i32) -> Vec<Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(0)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages()
        .to_vec()
}

fn receive_count(m: &Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .expect("ApproximateReceiveCount was asked for")
        .parse()
        .expect("a number")
}

fn body(m: &Message) -> &str {
    m.body().expect("a body")
}

fn receipt(m: &Message) -> &str {
    m.receipt_handle().expect("a receipt handle")
}

async fn nack(sqs: &aws_sdk_sqs::Client, url: &str, m: &Message) {
    sqs.change_message_visibility()
        .queue_url(url)
        .receipt_handle(receipt(m))
        .visibility_timeout(0)
        .send()
        .await
        .expect("ChangeMessageVisibility");
}

// ---- DynamoDB helpers --------------------------------------------------------------------------

/// A provisioned table (`Some(wcu)`) or an on-demand one (`None`), partition key `pk` (S).
async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str, wcu: Option<i64>) {
    let mut req = ddb
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        );
    req = match wcu {
        Some(w) => req.provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(5)
                .write_capacity_units(w)
                .build()
                .expect("throughput"),
        ),
        None => req.billing_mode(BillingMode::PayPerRequest),
    };
    req.send().await.expect("CreateTable");
}

/// An item of exactly 100 bytes as DynamoDB counts them (one WCU).
fn item(key: &str) -> Item {
    let pad = 100 - ("pk".len() + key.len() + "data".len());
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(key.to_string())),
        ("data".to_string(), AttributeValue::S("x".repeat(pad))),
    ])
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

fn put_request(item: Item) -> WriteRequest {
    WriteRequest::builder()
        .put_request(
            PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("put"),
        )
        .build()
}

async fn batch(ddb: &aws_sdk_dynamodb::Client, table: &str, keys: &[String]) -> BatchResult {
    ddb.batch_write_item()
        .request_items(table, keys.iter().map(|k| put_request(item(k))).collect())
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
}

/// The keys handed back as UnprocessedItems for `table`.
fn unprocessed(out: &BatchWriteItemOutput, table: &str) -> Vec<String> {
    out.unprocessed_items()
        .and_then(|u| u.get(table))
        .map(|writes| {
            writes
                .iter()
                .map(|w| {
                    let item = w.put_request().expect("a put").item();
                    item["pk"].as_s().expect("pk is S").clone()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn consumed_units(out: &BatchWriteItemOutput) -> f64 {
    out.consumed_capacity()
        .iter()
        .filter_map(|c| c.capacity_units())
        .sum()
}

async fn exists(ddb: &aws_sdk_dynamodb::Client, table: &str, key: &str) -> bool {
    ddb.get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(key.to_string()))
        .send()
        .await
        .expect("GetItem")
        .item()
        .is_some()
}

fn is_provisioned_throughput_exceeded<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    err.code() == Some("ProvisionedThroughputExceededException")
}

// ==== SQS ======================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_long_poll_returns_as_soon_as_a_message_is_sent() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(&sqs, "long-poll", &[]).await;

    let sender = {
        let (sqs, url) = (sqs.clone(), url.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sqs.send_message()
                .queue_url(url)
                .message_body("wake up")
                .send()
                .await
                .expect("SendMessage");
        })
    };
    let started = Instant::now();
    let out = sqs
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(10)
        .send()
        .await
        .expect("ReceiveMessage");
    let waited = started.elapsed();
    sender.await.expect("the sender task");

    let messages = out.messages();
    assert_eq!(
        messages.len(),
        1,
        "the long poll delivered the message sent while it waited"
    );
    assert_eq!(body(&messages[0]), "wake up");
    assert!(
        waited < Duration::from_secs(5),
        "a 10 s long poll returned {waited:?} after starting, not soon after the send"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_visibility_timeout_redelivers_and_old_receipts_do_not_delete() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(
        &sqs,
        "visibility",
        &[(QueueAttributeName::VisibilityTimeout, "1")],
    )
    .await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("m")
        .send()
        .await
        .expect("SendMessage");

    let first = receive(&sqs, &url, 10).await;
    assert_eq!(first.len(), 1);
    assert_eq!(receive_count(&first[0]), 1);
    assert!(
        receive(&sqs, &url, 10).await.is_empty(),
        "in flight: invisible"
    );
    assert_eq!(counts(&sqs, &url).await, (0, 1, 0));

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = receive(&sqs, &url, 10).await;
    assert_eq!(
        second.len(),
        1,
        "redelivered once the visibility timeout ran out"
    );
    assert_eq!(body(&second[0]), "m");
    assert_eq!(second[0].message_id(), first[0].message_id());
    assert_eq!(receive_count(&second[0]), 2);
    assert_ne!(
        receipt(&second[0]),
        receipt(&first[0]),
        "each receive gets a new receipt handle"
    );

    // The outdated receipt: accepted, but the message stays.
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(receipt(&first[0]))
        .send()
        .await
        .expect("DeleteMessage with an outdated receipt succeeds");
    assert_eq!(
        counts(&sqs, &url).await,
        (0, 1, 0),
        "the old receipt deleted nothing"
    );

    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(receipt(&second[0]))
        .send()
        .await
        .expect("DeleteMessage");
    assert_eq!(
        counts(&sqs, &url).await,
        (0, 0, 0),
        "the current receipt deleted it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_change_visibility_to_zero_and_partial_delete_batch() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(&sqs, "nack", &[]).await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("one")
        .send()
        .await
        .expect("SendMessage");

    let got = receive(&sqs, &url, 1).await;
    assert_eq!(got.len(), 1);
    assert!(
        receive(&sqs, &url, 1).await.is_empty(),
        "30 s default visibility: invisible"
    );
    nack(&sqs, &url, &got[0]).await;
    let again = receive(&sqs, &url, 1).await;
    assert_eq!(
        again.len(),
        1,
        "visible at once after ChangeMessageVisibility(0)"
    );
    assert_eq!(receive_count(&again[0]), 2);

    let out = sqs
        .delete_message_batch()
        .queue_url(&url)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("good")
                .receipt_handle(receipt(&again[0]))
                .build()
                .expect("entry"),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("bad")
                .receipt_handle("not-a-receipt-handle")
                .build()
                .expect("entry"),
        )
        .send()
        .await
        .expect("DeleteMessageBatch answers per entry");
    let ok: Vec<&str> = out.successful().iter().map(|e| e.id()).collect();
    assert_eq!(ok, ["good"]);
    assert_eq!(out.failed().len(), 1);
    let failed = &out.failed()[0];
    assert_eq!(failed.id(), "bad");
    assert!(
        failed.sender_fault(),
        "a bad receipt handle is the sender's fault"
    );
    assert_eq!(failed.code(), "ReceiptHandleIsInvalid");
    assert_eq!(
        counts(&sqs, &url).await,
        (0, 0, 0),
        "the good entry was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_redrive_moves_a_message_to_the_dead_letter_queue_after_max_receives() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let dlq_url = create_queue(&sqs, "work-dlq", &[]).await;
    let dlq_arn = queue_attributes(&sqs, &dlq_url)
        .await
        .remove(&QueueAttributeName::QueueArn)
        .expect("QueueArn");
    let policy =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string();
    let url = create_queue(
        &sqs,
        "work",
        &[(QueueAttributeName::RedrivePolicy, &policy)],
    )
    .await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("poison")
        .send()
        .await
        .expect("SendMessage");

    for n in 1..=2 {
        let got = receive(&sqs, &url, 1).await;
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(receive_count(&got[0]), n);
        nack(&sqs, &url, &got[0]).await;
    }
    assert!(
        receive(&sqs, &url, 1).await.is_empty(),
        "the third receive finds it gone"
    );
    assert_eq!(counts(&sqs, &url).await, (0, 0, 0));

    let dead = receive(&sqs, &dlq_url, 10).await;
    assert_eq!(dead.len(), 1, "the dead-letter queue holds it");
    assert_eq!(body(&dead[0]), "poison");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_fifo_deduplicates_and_locks_message_groups() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(
        &sqs,
        "x.fifo",
        &[
            (QueueAttributeName::FifoQueue, "true"),
            (QueueAttributeName::ContentBasedDeduplication, "true"),
        ],
    )
    .await;
    let send = |body: &'static str, group: &'static str| {
        let (sqs, url) = (sqs.clone(), url.clone());
        async move {
            sqs.send_message()
                .queue_url(url)
                .message_body(body)
                .message_group_id(group)
                .send()
                .await
                .expect("SendMessage")
                .message_id()
                .expect("MessageId")
                .to_string()
        }
    };
    let a1 = send("A1", "A").await;
    send("A2", "A").await;
    send("B1", "B").await;
    let again = send("A1", "A").await;
    assert_eq!(
        again, a1,
        "a duplicate inside the window gets the first MessageId"
    );
    assert_eq!(
        counts(&sqs, &url).await,
        (3, 0, 0),
        "the duplicate was not enqueued"
    );

    let first = receive(&sqs, &url, 1).await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["A1"]);
    let second = receive(&sqs, &url, 1).await;
    assert_eq!(
        second.iter().map(body).collect::<Vec<_>>(),
        ["B1"],
        "group A is locked while A1 is in flight"
    );
    assert!(
        receive(&sqs, &url, 1).await.is_empty(),
        "both groups locked"
    );

    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(receipt(&first[0]))
        .send()
        .await
        .expect("DeleteMessage");
    let next = receive(&sqs, &url, 1).await;
    assert_eq!(next.iter().map(body).collect::<Vec<_>>(), ["A2"]);

    let err = sqs
        .send_message()
        .queue_url(&url)
        .message_body("no group")
        .send()
        .await
        .expect_err("a FIFO send without MessageGroupId is refused");
    assert!(err.as_service_error().is_some(), "{err:?}");
    assert_eq!(err.code(), Some("MissingParameter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_missing_queue_is_the_typed_queue_does_not_exist() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;

    let err = sqs
        .get_queue_url()
        .queue_name("nope")
        .send()
        .await
        .expect_err("no such queue");
    assert_eq!(
        err.as_service_error().map(|e| e.is_queue_does_not_exist()),
        Some(true),
        "{err:?}"
    );
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.NonExistentQueue"));

    let missing_url = format!("{}/000000000000/nope", sim.endpoint());
    let err = sqs
        .receive_message()
        .queue_url(missing_url)
        .send()
        .await
        .expect_err("no such queue");
    assert_eq!(
        err.as_service_error().map(|e| e.is_queue_does_not_exist()),
        Some(true),
        "{err:?}"
    );
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.NonExistentQueue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_delay_size_limit_and_purge() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(&sqs, "delays", &[]).await;

    sqs.send_message()
        .queue_url(&url)
        .message_body("later")
        .delay_seconds(1)
        .send()
        .await
        .expect("SendMessage");
    assert_eq!(counts(&sqs, &url).await, (0, 0, 1), "delayed, not visible");
    assert!(receive(&sqs, &url, 10).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        counts(&sqs, &url).await,
        (1, 0, 0),
        "visible once the delay passed"
    );
    let got = receive(&sqs, &url, 10).await;
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["later"]);

    // 1 MiB is the limit: exactly that is accepted, one byte more is not.
    let limit = sluice_sim::DEFAULT_MAX_MESSAGE_BYTES;
    sqs.send_message()
        .queue_url(&url)
        .message_body("a".repeat(limit))
        .send()
        .await
        .expect("a 1 MiB message is accepted");
    let err = sqs
        .send_message()
        .queue_url(&url)
        .message_body("a".repeat(limit + 1))
        .send()
        .await
        .expect_err("over 1 MiB is rejected");
    assert!(err.as_service_error().is_some(), "{err:?}");
    assert_eq!(err.code(), Some("InvalidParameterValue"));

    for i in 0..5 {
        sqs.send_message()
            .queue_url(&url)
            .message_body(format!("m{i}"))
            .send()
            .await
            .expect("SendMessage");
    }
    assert_eq!(counts(&sqs, &url).await.0, 6);
    sqs.purge_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("PurgeQueue");
    // The in-flight message from above is gone too.
    assert_eq!(counts(&sqs, &url).await, (0, 0, 0));
    assert!(receive(&sqs, &url, 10).await.is_empty());
}

// ==== DynamoDB =================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_batch_write_takes_what_the_capacity_allows() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "one-wcu", Some(1)).await;

    let first_keys = keys("a", 25);
    let out = batch(&ddb, "one-wcu", &first_keys)
        .await
        .expect("BatchWriteItem");
    let left = unprocessed(&out, "one-wcu");
    assert_eq!(
        left.len(),
        24,
        "a new table has one second of capacity: 1 of 25 processed"
    );
    assert_eq!(consumed_units(&out), 1.0);

    let err = batch(&ddb, "one-wcu", &keys("b", 25))
        .await
        .expect_err("nothing fits: the whole request is refused");
    assert_eq!(
        err.as_service_error()
            .map(|e| e.is_provisioned_throughput_exceeded_exception()),
        Some(true),
        "{err:?}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let third_keys = keys("c", 25);
    let out = batch(&ddb, "one-wcu", &third_keys)
        .await
        .expect("BatchWriteItem");
    let third_left = unprocessed(&out, "one-wcu");
    let processed = 25 - third_left.len();
    assert!(
        (2..=3).contains(&processed),
        "2 s earn 2 units, got {processed}"
    );
    assert_eq!(consumed_units(&out), processed as f64);

    for (batch_keys, left) in [(&first_keys, &left), (&third_keys, &third_left)] {
        for k in batch_keys {
            assert_eq!(
                exists(&ddb, "one-wcu", k).await,
                !left.contains(k),
                "item {k}"
            );
        }
    }
    for k in keys("b", 25) {
        assert!(
            !exists(&ddb, "one-wcu", &k).await,
            "the refused batch wrote nothing ({k})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_update_table_raises_capacity_at_once() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "grows", Some(5)).await;
    // Spend the first second's capacity, so only the raise can make room.
    let out = batch(&ddb, "grows", &keys("a", 25))
        .await
        .expect("BatchWriteItem");
    assert_eq!(unprocessed(&out, "grows").len(), 20);

    ddb.update_table()
        .table_name("grows")
        .provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(5)
                .write_capacity_units(1000)
                .build()
                .expect("throughput"),
        )
        .send()
        .await
        .expect("UpdateTable");
    let out = batch(&ddb, "grows", &keys("b", 25))
        .await
        .expect("BatchWriteItem");
    assert!(
        unprocessed(&out, "grows").is_empty(),
        "at 1000 WCU a batch of 25 fits whole"
    );
    assert_eq!(consumed_units(&out), 25.0);

    let table = ddb
        .describe_table()
        .table_name("grows")
        .send()
        .await
        .expect("DescribeTable");
    let wcu = table
        .table()
        .and_then(|t| t.provisioned_throughput())
        .and_then(|p| p.write_capacity_units());
    assert_eq!(wcu, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_on_demand_ceiling_throttles_with_throttling_exception() {
    let config = SimConfig {
        tables: TableSettings {
            on_demand_ceiling_wcu: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let sim = start(config).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "on-demand", None).await;

    let out = batch(&ddb, "on-demand", &keys("a", 25))
        .await
        .expect("BatchWriteItem");
    assert_eq!(25 - unprocessed(&out, "on-demand").len(), 10);

    let err = batch(&ddb, "on-demand", &keys("b", 25))
        .await
        .expect_err("over the ceiling");
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    assert_eq!(
        err.as_service_error().map(|e| e.is_throttling_exception()),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_validation_and_typed_errors() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "strict", Some(1000)).await;

    let dup = vec!["k-1".to_string(), "k-2".to_string(), "k-1".to_string()];
    let err = batch(&ddb, "strict", &dup)
        .await
        .expect_err("duplicate keys");
    assert_eq!(err.code(), Some("ValidationException"), "{err:?}");

    let err = batch(&ddb, "strict", &keys("k", 26))
        .await
        .expect_err("26 writes");
    assert_eq!(err.code(), Some("ValidationException"), "{err:?}");

    let mut big = item("big");
    big.insert("data".into(), AttributeValue::S("x".repeat(401 * 1024)));
    let err = ddb
        .put_item()
        .table_name("strict")
        .set_item(Some(big.clone()))
        .send()
        .await
        .expect_err("over 400 KB");
    assert_eq!(err.code(), Some("ValidationException"), "{err:?}");
    let err = ddb
        .batch_write_item()
        .request_items("strict", vec![put_request(item("small")), put_request(big)])
        .send()
        .await
        .expect_err("over 400 KB in a batch");
    assert_eq!(err.code(), Some("ValidationException"), "{err:?}");
    assert!(
        !exists(&ddb, "strict", "small").await,
        "a refused batch writes nothing"
    );

    let err = ddb
        .put_item()
        .table_name("missing")
        .set_item(Some(item("k")))
        .send()
        .await
        .expect_err("no such table");
    assert_eq!(
        err.as_service_error()
            .map(|e| e.is_resource_not_found_exception()),
        Some(true),
        "{err:?}"
    );
    let err = batch(&ddb, "missing", &keys("k", 2))
        .await
        .expect_err("no such table");
    assert_eq!(
        err.as_service_error()
            .map(|e| e.is_resource_not_found_exception()),
        Some(true),
        "{err:?}"
    );

    create_table(&ddb, "tiny", Some(1)).await;
    ddb.put_item()
        .table_name("tiny")
        .set_item(Some(item("first")))
        .send()
        .await
        .expect("the first second's unit");
    let err = ddb
        .put_item()
        .table_name("tiny")
        .set_item(Some(item("second")))
        .send()
        .await
        .expect_err("over capacity");
    assert_eq!(
        err.as_service_error()
            .map(|e| e.is_provisioned_throughput_exceeded_exception()),
        Some(true),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_scan_count_pagination_and_query() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "rows", None).await;
    let all = keys("row", 23);
    for k in &all {
        ddb.put_item()
            .table_name("rows")
            .set_item(Some(item(k)))
            .send()
            .await
            .expect("PutItem");
    }

    let counted = ddb
        .scan()
        .table_name("rows")
        .select(Select::Count)
        .send()
        .await
        .expect("Scan");
    assert_eq!(counted.count(), 23);
    assert!(counted.items().is_empty(), "COUNT returns no items");

    let mut seen = Vec::new();
    let mut start = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let page = ddb
            .scan()
            .table_name("rows")
            .limit(5)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("Scan");
        assert!(page.items().len() <= 5);
        seen.extend(
            page.items()
                .iter()
                .map(|i| i["pk"].as_s().expect("S").clone()),
        );
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    assert!(pages >= 5, "23 rows in pages of 5");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, all, "every row exactly once");

    let out = ddb
        .query()
        .table_name("rows")
        .key_condition_expression("#k = :v")
        .expression_attribute_names("#k", "pk")
        .expression_attribute_values(":v", AttributeValue::S("row-07".into()))
        .send()
        .await
        .expect("Query");
    assert_eq!(out.count(), 1);
    assert_eq!(out.items().len(), 1);
    assert_eq!(out.items()[0], item("row-07"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_query_pages_through_a_partition_in_sort_key_order() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    ddb.create_table()
        .table_name("events")
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("sk")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("CreateTable");
    for (pk, n) in [("a", 12), ("b", 3)] {
        for sk in 1..=n {
            ddb.put_item()
                .table_name("events")
                .item("pk", AttributeValue::S(pk.into()))
                .item("sk", AttributeValue::N(sk.to_string()))
                .send()
                .await
                .expect("PutItem");
        }
    }

    let mut seen = Vec::new();
    let mut start = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(
            pages <= 10,
            "Query pagination does not end (ExclusiveStartKey ignored?)"
        );
        let page = ddb
            .query()
            .table_name("events")
            .key_condition_expression("pk = :v")
            .expression_attribute_values(":v", AttributeValue::S("a".into()))
            .limit(5)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("Query");
        seen.extend(
            page.items()
                .iter()
                .map(|i| i["sk"].as_n().expect("N").parse::<u32>().expect("a number")),
        );
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    assert_eq!(
        seen,
        (1..=12).collect::<Vec<_>>(),
        "every item of the partition once, in numeric sort-key order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_capacity_report_matches_what_happened() {
    // 4 WCU/s: a call has 250 ms before the table earns another unit.
    const W: u64 = 4;
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "reported", Some(W as i64)).await;

    // What the test saw: requests refused whole, items handed back, units written.
    #[derive(Default)]
    struct Tally {
        throttled: u64,
        handed_back: u64,
        written: u64,
    }
    impl Tally {
        /// Records one BatchWriteItem; returns the items handed back (None: refused whole).
        fn batch(&mut self, result: BatchResult) -> Option<Vec<String>> {
            match result {
                Ok(out) => {
                    let left = unprocessed(&out, "reported");
                    self.handed_back += left.len() as u64;
                    self.written += consumed_units(&out) as u64;
                    Some(left)
                }
                Err(err) => {
                    assert!(is_provisioned_throughput_exceeded(&err), "{err:?}");
                    self.throttled += 1;
                    None
                }
            }
        }
    }
    let mut tally = Tally::default();

    let mut pending = keys("r", 25);
    pending = tally
        .batch(batch(&ddb, "reported", &pending).await)
        .expect("the first batch is taken in part");
    assert_eq!(pending.len(), 21, "4 of 25 fit in the first second");

    // Straight away: nothing left to spend.
    let refused = tally.batch(batch(&ddb, "reported", &pending).await);
    assert!(refused.is_none(), "the immediate retry is refused whole");

    // A 15 KB item costs 15 units: more than the table has.
    let mut big = item("big");
    big.insert("data".into(), AttributeValue::S("x".repeat(15 * 1024 - 20)));
    let err = ddb
        .put_item()
        .table_name("reported")
        .set_item(Some(big))
        .send()
        .await
        .expect_err("over capacity");
    assert!(is_provisioned_throughput_exceeded(&err), "{err:?}");
    tally.throttled += 1;

    // Drain the rest as a well-behaved writer would: retry what came back, paced.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the table never took the remaining {} items",
            pending.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(left) = tally.batch(batch(&ddb, "reported", &pending).await) {
            pending = left;
        }
    }

    let report = sim
        .capacity_report("reported")
        .expect("a report for the table");
    let num = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing from {report}"))
    };
    assert_eq!(tally.written, 25);
    assert_eq!(num("consumed_wcu_total"), 25.0, "{report}");
    assert_eq!(
        num("throttled_requests") as u64,
        tally.throttled,
        "{report}"
    );
    assert_eq!(
        num("unprocessed_items") as u64,
        tally.handed_back,
        "{report}"
    );
    assert_eq!(num("items") as u64, 25, "{report}");
    assert_eq!(num("provisioned_wcu") as u64, W, "{report}");

    let per_second = report["per_second"].as_array().expect("per_second");
    assert!(!per_second.is_empty(), "{report}");
    let sum: f64 = per_second
        .iter()
        .map(|e| e[1].as_f64().expect("units"))
        .sum();
    assert_eq!(sum, 25.0, "per_second adds up to the total: {report}");
    let peak = num("peak_wcu_per_s");
    assert!(
        peak > 0.0 && peak <= (2 * W) as f64,
        "peak {peak} exceeds W plus the initial W: {report}"
    );
    assert_eq!(
        peak,
        per_second
            .iter()
            .map(|e| e[1].as_f64().expect("units"))
            .fold(0.0, f64::max),
        "{report}"
    );

    // The same report over HTTP.
    let (status, body) = http(sim.addr(), "GET", "/_sim/tables/reported/capacity", "").await;
    assert_eq!(status, 200, "{body}");
    let over_http: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        over_http["consumed_wcu_total"],
        report["consumed_wcu_total"]
    );
    let (status, _) = http(sim.addr(), "GET", "/_sim/tables/nope/capacity", "").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_reach_the_sdk_as_aws_would_send_them() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "faulty", None).await;
    let put = |key: &'static str| {
        ddb.put_item()
            .table_name("faulty")
            .set_item(Some(item(key)))
            .send()
    };
    let get = || {
        ddb.get_item()
            .table_name("faulty")
            .key("pk", AttributeValue::S("k".into()))
            .send()
    };

    // 500s for GetItem only.
    sim.set_faults(Faults {
        error_500_rate: 1.0,
        only_ops: Some(vec!["GetItem".into()]),
        ..Default::default()
    })
    .expect("valid faults");
    put("k").await.expect("PutItem is not affected");
    let err = get().await.expect_err("GetItem fails");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_internal_server_error()),
        "{err:?}"
    );
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(err.code(), Some("InternalServerError"));

    // Connection resets: no answer at all, so not a service error.
    sim.set_faults(Faults {
        reset_rate: 1.0,
        ..Default::default()
    })
    .expect("valid faults");
    let err = put("reset").await.expect_err("the connection is closed");
    assert!(err.as_service_error().is_none(), "{err:?}");
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "expected a dispatch or response failure, got {err:?}"
    );

    // Latency.
    sim.set_faults(Faults {
        latency: Latency {
            fixed_ms: 300,
            jitter_ms: 0,
        },
        ..Default::default()
    })
    .expect("valid faults");
    let started = Instant::now();
    get().await.expect("GetItem");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "took {:?}",
        started.elapsed()
    );

    // Faults over plain HTTP.
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/_sim/faults",
        r#"{"throttle_rate": 1.0}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let err = put("throttled")
        .await
        .expect_err("every request is throttled");
    assert_eq!(
        err.as_service_error()
            .map(|e| e.is_provisioned_throughput_exceeded_exception()),
        Some(true),
        "{err:?}"
    );
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/_sim/faults",
        r#"{"throttle_rate": 0.0, "bogus": 1}"#,
    )
    .await;
    assert_eq!(status, 400, "an unknown field is refused: {body}");
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/_sim/faults",
        r#"{"error_500_rate": 2.0}"#,
    )
    .await;
    assert_eq!(status, 400, "a rate over 1.0 is refused: {body}");
    let (status, body) = http(sim.addr(), "GET", "/_sim/faults", "").await;
    assert_eq!(status, 200);
    let current: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        current["throttle_rate"], 1.0,
        "refused updates change nothing: {body}"
    );
    assert!(put("still").await.is_err(), "still throttled");

    let (status, _) = http(sim.addr(), "POST", "/_sim/faults", "{}").await;
    assert_eq!(status, 200);
    put("fine").await.expect("no faults left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_redrive_to_a_missing_dead_letter_queue_keeps_the_message() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    // SQS refuses a policy naming a queue that does not exist; the target goes after it is set.
    let dlq = create_queue(&sqs, "no-such-dlq", &[]).await;
    let policy = serde_json::json!({
        "deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:no-such-dlq",
        "maxReceiveCount": 1
    })
    .to_string();
    let url = create_queue(
        &sqs,
        "orphan-source",
        &[(QueueAttributeName::RedrivePolicy, policy.as_str())],
    )
    .await;
    sqs.delete_queue().queue_url(&dlq).send().await.unwrap();
    sqs.send_message()
        .queue_url(&url)
        .message_body("keep me")
        .send()
        .await
        .unwrap();
    for round in 1..=3 {
        let got = receive(&sqs, &url, 1).await;
        assert_eq!(
            got.len(),
            1,
            "round {round}: SQS keeps a message whose DLQ does not exist"
        );
        assert_eq!(body(&got[0]), "keep me");
        nack(&sqs, &url, &got[0]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_overwrite_costs_the_larger_of_the_old_and_new_item() {
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    create_table(&ddb, "overwrites", Some(1000)).await;
    let put = |size: usize| {
        let mut it = item("k");
        it.insert("data".into(), AttributeValue::S("x".repeat(size)));
        ddb.put_item()
            .table_name("overwrites")
            .set_item(Some(it))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
    };
    let units = |out: aws_sdk_dynamodb::operation::put_item::PutItemOutput| {
        out.consumed_capacity()
            .and_then(|c| c.capacity_units())
            .unwrap()
    };
    assert_eq!(units(put(5000).await.unwrap()), 5.0, "a new 5 KB item");
    assert_eq!(
        units(put(100).await.unwrap()),
        5.0,
        "replacing it costs the old 5 KB"
    );
    assert_eq!(
        units(put(100).await.unwrap()),
        1.0,
        "now the old item is small too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_operation_is_never_answered_nor_carried_out_until_the_fault_is_lifted() {
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(&sqs, "hung", &[]).await;
    sim.set_faults(Faults {
        hang_ops: vec!["SendMessage".into()],
        ..Faults::default()
    })
    .unwrap();
    let send = sqs.send_message().queue_url(&url).message_body("b").send();
    let r = tokio::time::timeout(Duration::from_millis(800), send).await;
    assert!(r.is_err(), "a hung SendMessage answered: {r:?}");
    // Other operations still answer.
    assert_eq!(counts(&sqs, &url).await.0, 0);
    // Lifted: the hung call was dropped, never carried out; new calls go through.
    sim.set_faults(Faults::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        counts(&sqs, &url).await.0,
        0,
        "the hung call was carried out"
    );
    sqs.send_message()
        .queue_url(&url)
        .message_body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(counts(&sqs, &url).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_fifo_a_long_poll_on_a_locked_group_returns_when_its_message_is_deleted() {
    // As in SQS: the group's next message becomes available the moment the one in flight is
    // deleted, and a waiting long poll returns with it instead of sitting out its wait.
    let sim = start(SimConfig::default()).await;
    let sqs = sqs_client(&sim).await;
    let url = create_queue(&sqs, "g.fifo", &[(QueueAttributeName::FifoQueue, "true")]).await;
    for i in 0..2 {
        sqs.send_message()
            .queue_url(&url)
            .message_body(format!("m{i}"))
            .message_group_id("g")
            .message_deduplication_id(format!("d{i}"))
            .send()
            .await
            .unwrap();
    }
    let first = receive(&sqs, &url, 1).await;
    assert_eq!(body(&first[0]), "m0");
    let waiting = tokio::spawn({
        let (sqs, url) = (sqs.clone(), url.clone());
        async move {
            let started = Instant::now();
            let out = sqs
                .receive_message()
                .queue_url(&url)
                .wait_time_seconds(10)
                .send()
                .await
                .unwrap();
            (started.elapsed(), out.messages().len())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(receipt(&first[0]))
        .send()
        .await
        .unwrap();
    let (waited, n) = waiting.await.unwrap();
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
}

/// The ThrottlingReasons of a refused PutItem: (reason, resource ARN).
fn throttling_reasons(
    e: &SdkError<
        aws_sdk_dynamodb::operation::put_item::PutItemError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
) -> Vec<(String, String)> {
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    let reasons = match e.as_service_error() {
        Some(PutItemError::ProvisionedThroughputExceededException(x)) => {
            x.throttling_reasons().to_vec()
        }
        Some(PutItemError::ThrottlingException(x)) => x.throttling_reasons().to_vec(),
        other => panic!("not a throttle: {other:?}"),
    };
    reasons
        .iter()
        .map(|r| {
            (
                r.reason().unwrap_or_default().to_string(),
                r.resource().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_index_over_its_capacity_throttles_base_writes_and_says_so() {
    use aws_sdk_dynamodb::types::{GlobalSecondaryIndex, Projection, ProjectionType};
    let sim = start(SimConfig::default()).await;
    let ddb = ddb_client(&sim).await;
    let pt = |w| {
        ProvisionedThroughput::builder()
            .read_capacity_units(5)
            .write_capacity_units(w)
            .build()
            .unwrap()
    };
    ddb.create_table()
        .table_name("indexed")
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("user")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .provisioned_throughput(pt(1000))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("by_user")
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("user")
                        .key_type(KeyType::Hash)
                        .build()
                        .unwrap(),
                )
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .provisioned_throughput(pt(10))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let with_user = |k: &str, u: &str| {
        let mut i = item(k);
        i.insert("user".into(), AttributeValue::S(u.into()));
        i
    };
    // The index has 10 WCU: the eleventh write that lands in it in the first second is refused,
    // though the table has room; a write that does not touch the index still goes.
    let mut refused = None;
    for n in 0..20 {
        match ddb
            .put_item()
            .table_name("indexed")
            .set_item(Some(with_user(&format!("k{n}"), &format!("u{n}"))))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((n, throttling_reasons(&e)));
                break;
            }
        }
    }
    let (n, reasons) = refused.expect("the index throttled");
    assert_eq!(n, 10);
    assert_eq!(
        reasons,
        vec![(
            "IndexWriteProvisionedThroughputExceeded".to_string(),
            "arn:aws:dynamodb:us-east-1:000000000000:table/indexed/index/by_user".to_string()
        )]
    );
    ddb.put_item()
        .table_name("indexed")
        .set_item(Some(item("no-user")))
        .send()
        .await
        .unwrap();
    let report = sim.capacity_report("indexed").unwrap();
    assert_eq!(
        report["indexes"]["by_user"]["throttled_requests"], 1,
        "{report}"
    );
    assert_eq!(report["throttled_requests"], 1, "{report}");

    // One partition key value takes 1,000 WCU a second, whatever the table has.
    create_table(&ddb, "hot", Some(40_000)).await;
    let big = |k: &str| {
        let mut i = item(k);
        i.insert("data".into(), AttributeValue::S("x".repeat(399 * 1024)));
        i
    };
    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(
            ddb.put_item()
                .table_name("hot")
                .set_item(Some(big("same")))
                .send()
                .await,
        );
    }
    assert!(results[0].is_ok() && results[1].is_ok());
    let e = results[2].as_ref().unwrap_err();
    assert_eq!(
        throttling_reasons(e),
        vec![(
            "TableWriteKeyRangeThroughputExceeded".to_string(),
            "arn:aws:dynamodb:us-east-1:000000000000:table/hot".to_string()
        )]
    );
    ddb.put_item()
        .table_name("hot")
        .set_item(Some(big("other")))
        .send()
        .await
        .expect("another key is fine");

    // An on-demand table with a maximum: it is the limit, named as such; DescribeTable shows it
    // and the warm throughput.
    ddb.create_table()
        .table_name("capped")
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .on_demand_throughput(
            aws_sdk_dynamodb::types::OnDemandThroughput::builder()
                .max_write_request_units(5)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let d = ddb
        .describe_table()
        .table_name("capped")
        .send()
        .await
        .unwrap();
    let t = d.table().unwrap();
    assert_eq!(
        t.on_demand_throughput()
            .and_then(|o| o.max_write_request_units()),
        Some(5)
    );
    assert_eq!(
        t.warm_throughput().and_then(|w| w.write_units_per_second()),
        Some(4000)
    );
    let mut refused = None;
    for n in 0..10 {
        if let Err(e) = ddb
            .put_item()
            .table_name("capped")
            .set_item(Some(item(&format!("c{n}"))))
            .send()
            .await
        {
            refused = Some((n, throttling_reasons(&e)));
            break;
        }
    }
    let (n, reasons) = refused.expect("the maximum throttled");
    assert_eq!(n, 5);
    assert_eq!(reasons[0].0, "TableWriteMaxOnDemandThroughputExceeded");
}
