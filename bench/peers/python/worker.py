"""Python peer for bench/compare.py: drains request logs (one JSON log per SQS message) into a
DynamoDB table keyed by request_id with boto3.

A pool of threads; each loops ReceiveMessage (10, long poll) -> Table.batch_writer (upserts keyed
by request_id; it batches by 25, drops duplicate keys and resends UnprocessedItems) ->
DeleteMessageBatch of the messages written. The SQS client is shared (botocore clients are
thread-safe); each thread has its own Session and Table resource (resources are not).

Env: QUEUE_URL, TABLE (required); AWS_ENDPOINT_URL, AWS_REGION (us-east-1), AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (boto3's default chain); PEER_THREADS (16), PEER_WAIT_SECONDS (20).
SIGTERM/SIGINT: stop receiving, finish the batches in hand, exit 0.
"""

import decimal
import json
import logging
import os
import signal
import sys
import threading
import time

import boto3
from botocore.config import Config

QUEUE_URL = os.environ.get("QUEUE_URL")
TABLE = os.environ.get("TABLE")
THREADS = int(os.environ.get("PEER_THREADS", "16"))
WAIT_SECONDS = int(os.environ.get("PEER_WAIT_SECONDS", "20"))
REGION = os.environ.get("AWS_REGION", "us-east-1")
ENDPOINT = os.environ.get("AWS_ENDPOINT_URL") or None
# Every thread may hold a connection at once; standard retries (throttling, 5xx) with backoff.
CONFIG = Config(max_pool_connections=THREADS + 4, retries={"mode": "standard", "max_attempts": 5})

log = logging.getLogger("worker")
stop = threading.Event()
busy = threading.Semaphore(THREADS)  # a batch in hand holds one; shutdown waits for all


def parse(message):
    """The log in a message's body, or None (poison: left on the queue)."""
    try:
        # boto3's TypeSerializer refuses float: numbers with a fraction become Decimal.
        item = json.loads(message["Body"], parse_float=decimal.Decimal)
    except ValueError as e:
        log.error("message %s: not JSON (%s); left on the queue", message["MessageId"], e)
        return None
    if not isinstance(item, dict) or not isinstance(item.get("request_id"), str) or not item["request_id"]:
        log.error("message %s: no request_id; left on the queue", message["MessageId"])
        return None
    return item


def handle(sqs, table, messages):
    written = []
    with table.batch_writer(overwrite_by_pkeys=["request_id"]) as batch:
        for message in messages:
            item = parse(message)
            if item is not None:
                batch.put_item(Item=item)
                written.append(message)
    if not written:
        return
    out = sqs.delete_message_batch(
        QueueUrl=QUEUE_URL,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(written)],
    )
    for failed in out.get("Failed", []):
        log.error("delete failed: %s %s", failed.get("Code"), failed.get("Message"))


def run(sqs):
    session = boto3.session.Session(region_name=REGION)  # Sessions and resources: one per thread
    table = session.resource("dynamodb", endpoint_url=ENDPOINT, config=CONFIG).Table(TABLE)
    while not stop.is_set():
        try:
            messages = sqs.receive_message(
                QueueUrl=QUEUE_URL, MaxNumberOfMessages=10, WaitTimeSeconds=WAIT_SECONDS
            ).get("Messages", [])
            if messages:
                with busy:
                    handle(sqs, table, messages)
        except Exception:  # noqa: BLE001 - a worker logs and goes on; unacked messages come back
            log.exception("batch failed; its messages come back after the visibility timeout")
            time.sleep(1)


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if not QUEUE_URL or not TABLE:
        sys.exit("worker.py: set QUEUE_URL and TABLE")
    sqs = boto3.session.Session(region_name=REGION).client("sqs", endpoint_url=ENDPOINT, config=CONFIG)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set())
    # Daemon threads: one blocked in a long poll does not hold up the exit.
    for i in range(THREADS):
        threading.Thread(target=run, args=(sqs,), name=f"w{i}", daemon=True).start()
    log.info("consuming %s into %s with %d threads", QUEUE_URL, TABLE, THREADS)
    while not stop.wait(1):
        pass
    log.info("stopping: finishing the batches in hand")
    deadline = time.monotonic() + 25
    for _ in range(THREADS):  # take every slot: no batch is being written any more
        if not busy.acquire(timeout=max(0, deadline - time.monotonic())):
            log.warning("shutdown grace over with batches still in hand")
            break
    log.info("stopped")


if __name__ == "__main__":
    main()
