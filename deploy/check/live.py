"""The live part of scripts/deploy-check.sh: drives `sluice sim` over its AWS JSON 1.0 API (no
signature needed) and listens on a systemd notify socket. Standard library only.

  live.py setup ENDPOINT NAME WCU          queue + DLQ (maxReceiveCount 2) + table; prints the queue URL
  live.py load ENDPOINT QUEUE_URL TABLE SECONDS RATE FAULT_FROM FAULT_TO CAP_FROM CAP_TO
        sends request logs at RATE messages/s for SECONDS (10% multi-log, 5% duplicates);
        between FAULT_FROM and FAULT_TO seconds makes the simulator fail or throttle most
        receives, deletes, visibility changes and table writes, and sends poison; between
        CAP_FROM and CAP_TO lowers the table's capacity to a fifth (as another writer or a
        scale-down would), below sluice's budget
  live.py samples N                        N sample request logs of the load's shape, NDJSON, for
                                           `sluice dict train --from`
  live.py sqs-outage ENDPOINT FROM TO      from FROM to TO seconds from now, every SendMessage and
                                           SendMessageBatch answers 503 (ingest's SQS goes down)
  live.py notify-sink SOCKET OUT           records sd_notify datagrams, one per line, until killed
  live.py fake-imds PORT_FILE NOTICE_AFTER  IMDSv2 stand-in: a spot interruption notice after
                                            NOTICE_AFTER seconds (404 before), on a free port
  live.py depth ENDPOINT QUEUE_URL         prints the queue's visible + in-flight messages
  live.py rows ENDPOINT TABLE              prints the table's item count
"""

import json
import os
import random
import socket
import sys
import time
import urllib.request

SQS = "AmazonSQS"
DDB = "DynamoDB_20120810"


def call(endpoint, target, op, body):
    req = urllib.request.Request(
        endpoint,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"{target}.{op}",
            # The simulator does not check signatures; a header shaped like the SDK's is enough.
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def post_faults(endpoint, faults):
    req = urllib.request.Request(endpoint + "/_sim/faults", data=json.dumps(faults).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def setup(endpoint, name, wcu):
    dlq = call(endpoint, SQS, "CreateQueue", {"QueueName": f"{name}-dlq"})["QueueUrl"]
    arn = call(endpoint, SQS, "GetQueueAttributes",
               {"QueueUrl": dlq, "AttributeNames": ["QueueArn"]})["Attributes"]["QueueArn"]
    queue = call(endpoint, SQS, "CreateQueue", {
        "QueueName": name,
        "Attributes": {
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 2}),
        },
    })["QueueUrl"]
    call(endpoint, DDB, "CreateTable", {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": "request_id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "request_id", "KeyType": "HASH"}],
        "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": int(wcu)},
    })
    print(queue)


def log(rng, rid, now_ms):
    return {
        "request_id": rid,
        "ts": now_ms - rng.randrange(60_000),
        "method": rng.choice(["GET", "GET", "POST", "PUT"]),
        "path": rng.choice(["/v1/orders", "/v1/users/me", "/v1/search", "/v1/cart"]),
        "status": rng.choice([200, 200, 200, 201, 404, 500]),
        "latency_ms": round(rng.uniform(1, 250), 2),
        "user_id": f"u-{rng.randrange(5000)}",
        "attrs": {"region": "eu-west-1", "client": f"app/{rng.randrange(1, 9)}"},
    }


POISON = ["this is not JSON", json.dumps({"request_id": "p", "ts": 1, "path": "/", "status": 200, "latency_ms": 1}), "[1, 2, 3]"]


def samples(n):
    rng = random.Random(99)
    now_ms = int(time.time() * 1000)
    for i in range(int(n)):
        print(json.dumps(log(rng, f"sample-{i}", now_ms)))


def set_capacity(endpoint, table, wcu):
    call(endpoint, DDB, "UpdateTable", {
        "TableName": table,
        "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": int(wcu)},
    })


def load(endpoint, queue, table, seconds, rate, fault_from, fault_to, cap_from, cap_to):
    rng = random.Random(7)
    seconds, rate, fault_from, fault_to, cap_from, cap_to = map(
        float, (seconds, rate, fault_from, fault_to, cap_from, cap_to))
    capacity = call(endpoint, DDB, "DescribeTable", {"TableName": table})["Table"]["ProvisionedThroughput"]["WriteCapacityUnits"]
    cap_on = cap_done = False
    start = time.monotonic()
    sent = batches = poison = 0
    faults_on = faults_done = False
    recent = []
    n = 0
    while True:
        t = time.monotonic() - start
        if t >= seconds:
            break
        if not faults_on and not faults_done and t >= fault_from:
            post_faults(endpoint, {
                "error_500_rate": 0.5, "throttle_rate": 0.2,
                "only_ops": ["ReceiveMessage", "DeleteMessageBatch", "DeleteMessage",
                             "ChangeMessageVisibility", "ChangeMessageVisibilityBatch", "BatchWriteItem"],
            })
            faults_on = True
            print(f"load: faults on at {t:.1f}s", file=sys.stderr)
        if faults_on and t >= fault_to:
            post_faults(endpoint, {})
            faults_on, faults_done = False, True
            print(f"load: faults off at {t:.1f}s", file=sys.stderr)
        if not cap_on and not cap_done and t >= cap_from:
            set_capacity(endpoint, table, max(1, capacity // 5))
            cap_on = True
            print(f"load: table capacity {capacity} -> {max(1, capacity // 5)} WCU/s at {t:.1f}s", file=sys.stderr)
        if cap_on and t >= cap_to:
            set_capacity(endpoint, table, capacity)
            cap_on, cap_done = False, True
            print(f"load: table capacity back to {capacity} WCU/s at {t:.1f}s", file=sys.stderr)
        now_ms = int(time.time() * 1000)
        entries = []
        for i in range(10):
            n += 1
            if faults_on and n % 7 == 0:
                body = POISON[n % len(POISON)] + ("" if n % 3 else f" {n}")
                poison += 1
            elif recent and rng.random() < 0.05:
                body = rng.choice(recent)  # delivered twice: must land once
            else:
                k = rng.randint(2, 5) if rng.random() < 0.1 else 1
                logs = [log(rng, f"deploy-check-{n}-{j}", now_ms) for j in range(k)]
                body = json.dumps(logs if k > 1 else logs[0])
                recent = (recent + [body])[-100:]
            entries.append({"Id": str(i), "MessageBody": body})
        # Retried on the simulator's own faults? SendMessageBatch is not in the fault list.
        call(endpoint, SQS, "SendMessageBatch", {"QueueUrl": queue, "Entries": entries})
        sent += len(entries)
        batches += 1
        # Pace: `rate` messages per second in batches of 10.
        ahead = batches * 10 / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    if faults_on:
        post_faults(endpoint, {})
    if cap_on:
        set_capacity(endpoint, table, capacity)
    print(json.dumps({"sent": sent, "poison": poison, "seconds": round(time.monotonic() - start, 1)}))


def notify_sink(path, out):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    start = time.monotonic()
    with open(out, "a", buffering=1) as f:
        while True:
            data = s.recv(4096).decode(errors="replace")
            f.write(json.dumps({"t": round(time.monotonic() - start, 3), "msg": data}) + "\n")


def fake_imds(port_file, notice_after):
    """Just enough of IMDSv2 for deploy/systemd/sluice-spot-drain.sh."""
    import http.server

    started = time.monotonic()
    notice_after = float(notice_after)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self.reply(200, "fake-token")
            else:
                self.reply(400, "")

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != "fake-token":
                self.reply(401, "")
            elif self.path == "/latest/meta-data/spot/instance-action" and time.monotonic() - started >= notice_after:
                self.reply(200, json.dumps({"action": "terminate", "time": "2026-01-01T00:02:00Z"}))
            else:
                self.reply(404, "")

        def reply(self, code, body):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


def sqs_outage(endpoint, start, end):
    time.sleep(float(start))
    post_faults(endpoint, {"error_503_rate": 1.0, "only_ops": ["SendMessage", "SendMessageBatch"]})
    print(f"ingest: SQS sends fail from {float(start):.0f}s", file=sys.stderr)
    time.sleep(float(end) - float(start))
    post_faults(endpoint, {})
    print(f"ingest: SQS sends work again at {float(end):.0f}s", file=sys.stderr)


def depth(endpoint, queue):
    """Prints the queue's visible + in-flight messages."""
    attrs = call(endpoint, SQS, "GetQueueAttributes", {
        "QueueUrl": queue,
        "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    })["Attributes"]
    print(int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def rows(endpoint, table):
    """Prints the number of items in the table (a full scan, page by page)."""
    n, start = 0, None
    while True:
        body = {"TableName": table, "Select": "COUNT"}
        if start:
            body["ExclusiveStartKey"] = start
        page = call(endpoint, DDB, "Scan", body)
        n += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    print(n)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "setup":
        setup(*args)
    elif cmd == "samples":
        samples(*args)
    elif cmd == "sqs-outage":
        sqs_outage(*args)
    elif cmd == "load":
        load(*args)
    elif cmd == "notify-sink":
        notify_sink(*args)
    elif cmd == "fake-imds":
        fake_imds(*args)
    elif cmd == "depth":
        depth(*args)
    elif cmd == "rows":
        rows(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
