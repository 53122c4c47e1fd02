// Node.js peer for bench/compare.py: drains request logs (one JSON log per SQS message) into a
// DynamoDB table keyed by request_id, the way sqs-consumer's README recommends: Consumer.create
// with handleMessageBatch and our own SQSClient, several consumers in one process for
// concurrency. A batch's logs are written with BatchWriteItem (upserts, so redelivery is
// harmless); the handler returns the messages it wrote and sqs-consumer deletes exactly those.
//
// Env: QUEUE_URL, TABLE (required); AWS_ENDPOINT_URL, AWS_REGION (us-east-1),
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the SDK's default chain); PEER_CONSUMERS (8),
// PEER_WAIT_SECONDS (20).
import { Consumer } from "sqs-consumer";
import { SQSClient } from "@aws-sdk/client-sqs";
import { BatchWriteItemCommand, DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { marshall } from "@aws-sdk/util-dynamodb";

const env = process.env;
const QUEUE_URL = env.QUEUE_URL;
const TABLE = env.TABLE;
if (!QUEUE_URL || !TABLE) {
  console.error("consumer.mjs: set QUEUE_URL and TABLE");
  process.exit(2);
}
const CONSUMERS = Number(env.PEER_CONSUMERS ?? 8);
const WAIT_SECONDS = Number(env.PEER_WAIT_SECONDS ?? 20);
const MAX_BATCH_ITEMS = 25; // BatchWriteItem's limit
const MAX_ATTEMPTS = 10;

const clientConfig = {
  region: env.AWS_REGION ?? "us-east-1",
  ...(env.AWS_ENDPOINT_URL ? { endpoint: env.AWS_ENDPOINT_URL } : {}),
};
// AWS SDK v3 clients are safe to share: one of each for all consumers (keep-alive pools).
const sqs = new SQSClient(clientConfig);
const dynamodb = new DynamoDBClient(clientConfig);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const backoff = (attempt) => Math.random() * Math.min(2000, 50 * 2 ** attempt); // full jitter

// Writes up to 25 items, retrying UnprocessedItems (throttling) with backoff; throws when the
// items still are not written after MAX_ATTEMPTS, which leaves the batch's messages on the queue.
async function writeChunk(items) {
  let pending = { [TABLE]: items.map((Item) => ({ PutRequest: { Item } })) };
  for (let attempt = 0; ; attempt++) {
    const out = await dynamodb.send(new BatchWriteItemCommand({ RequestItems: pending }));
    const left = out.UnprocessedItems?.[TABLE]?.length ?? 0;
    if (left === 0) return;
    if (attempt + 1 >= MAX_ATTEMPTS) throw new Error(`${left} items still unprocessed after ${MAX_ATTEMPTS} attempts`);
    pending = out.UnprocessedItems;
    await sleep(backoff(attempt));
  }
}

async function handleMessageBatch(messages) {
  const items = new Map(); // request_id -> item: BatchWriteItem refuses duplicate keys in one call
  const written = [];
  for (const message of messages) {
    let log;
    try {
      log = JSON.parse(message.Body);
    } catch (err) {
      console.error(`message ${message.MessageId}: not JSON (${err.message}); left on the queue`);
      continue;
    }
    if (typeof log?.request_id !== "string" || log.request_id === "") {
      console.error(`message ${message.MessageId}: no request_id; left on the queue`);
      continue;
    }
    items.set(log.request_id, marshall(log, { removeUndefinedValues: true }));
    written.push(message);
  }
  const all = [...items.values()];
  const chunks = [];
  for (let i = 0; i < all.length; i += MAX_BATCH_ITEMS) chunks.push(all.slice(i, i + MAX_BATCH_ITEMS));
  await Promise.all(chunks.map(writeChunk)); // throws: nothing acked, the batch comes back
  return written; // sqs-consumer deletes these (DeleteMessageBatch)
}

const consumers = Array.from({ length: CONSUMERS }, (_, i) => {
  const consumer = Consumer.create({
    queueUrl: QUEUE_URL,
    batchSize: 10,
    waitTimeSeconds: WAIT_SECONDS,
    handleMessageBatch,
    sqs,
    pollingCompleteWaitTimeMs: 5_000,
  });
  for (const event of ["error", "processing_error", "timeout_error"]) {
    consumer.on(event, (err) => console.error(`consumer ${i}: ${event}: ${err.message}`));
  }
  return consumer;
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`${signal}: stopping ${consumers.length} consumers`);
  Promise.all(consumers.map((c) => new Promise((resolve) => {
    c.once("stopped", resolve);
    c.stop();
  }))).then(() => process.exit(0));
}
process.once("SIGINT", shutdown);
process.once("SIGTERM", shutdown);

for (const consumer of consumers) consumer.start();
console.error(`consuming ${QUEUE_URL} into ${TABLE} with ${CONSUMERS} consumers`);
