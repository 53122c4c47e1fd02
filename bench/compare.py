#!/usr/bin/env python3
"""Side-by-side benchmark: sluice against a Node.js and a Python peer draining the same job.

The job: a backlog of N request logs of ~1 KiB, one JSON log per message in an SQS standard
queue, into a PAY_PER_REQUEST DynamoDB table keyed by request_id (upserts), each message deleted
once its log is written. Every consumer runs against both local servers (MiniStack and
sluice-sim), each run on a fresh server with a fresh queue and table. Reported per run: drain
time from process start to an empty queue, msg/s, the consumer process's CPU time (utime + stime
of all its threads) per 10k messages, its peak RSS (VmHWM), and lost = N - items in the table.
Then, unless --no-ceiling, sluice alone against a sim with 10 ms latency per call, at several
concurrency settings, for its highest msg/s.

Progress goes to stderr, the Markdown tables to stdout, everything to --json-out. Run it with
bench/compare.sh, which installs the peers and builds sluice first.
"""

import argparse
import atexit
import concurrent.futures
import ctypes
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:
    sys.exit("compare.py: boto3 not found: run it with .tools/bench/venv/bin/python (bench/compare.sh does)")

ROOT = Path(__file__).resolve().parent.parent
NODE_PEER = ROOT / "bench/peers/node/consumer.mjs"
PYTHON_PEER = ROOT / "bench/peers/python/worker.py"
SERVERS = ("ministack", "sim")
CONSUMERS = ("sluice", "node", "python")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
POLL = 0.1  # seconds between queue samples while draining
SETTLE = 1.0  # the queue must read empty this long before the table is counted


class BenchError(Exception):
    """A failure to report plainly, without a traceback."""


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- child processes ----------------------------------------------------------------------------

_children = []
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed harness leaves nothing behind


def spawn(cmd, env, log_path):
    """Starts cmd (exec'd directly, so its pid is the process measured), output to log_path."""
    with open(log_path, "ab") as out:
        try:
            proc = subprocess.Popen([str(c) for c in cmd], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        except OSError as e:
            raise BenchError(f"cannot start {cmd[0]}: {e}") from e
    proc.log_path = log_path
    _children.append(proc)
    return proc


def stop(proc, timeout):
    """SIGTERM, then SIGKILL after timeout seconds. Returns the exit code and how long it took."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            proc.kill()
            proc.wait()
    if proc in _children:
        _children.remove(proc)
    return proc.returncode, time.monotonic() - t0


def stop_all():
    for proc in reversed(list(_children)):
        stop(proc, 5)


def log_tail(proc, lines=15):
    try:
        text = Path(proc.log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


# ---- /proc sampling -------------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of the whole process (every thread, live or exited), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) onwards
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid):
    """(VmHWM, VmRSS) in KiB: peak and current resident set size."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values.get("VmHWM", 0), values.get("VmRSS", 0)


# ---- servers --------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    """A fresh MiniStack or sluice-sim on a free loopback port."""

    def __init__(self, kind, args, log_path, sim_flags=()):
        self.kind = kind
        if kind == "ministack":
            port = free_port()
            env = dict(os.environ, GATEWAY_PORT=str(port), BIND_HOST="127.0.0.1", SERVICES="sqs,dynamodb",
                       LOG_LEVEL="WARNING")
            self.proc = spawn([args.ministack_bin], env, log_path)
            self.endpoint, health = f"http://127.0.0.1:{port}", "/_ministack/health"
        else:
            self.proc = spawn([args.sluice_bin, "sim", "--listen", "127.0.0.1:0", *sim_flags], dict(os.environ),
                              log_path)
            self.endpoint, health = self._sim_endpoint(log_path), "/_sim/health"
        deadline = time.monotonic() + 60
        while not http_ok(self.endpoint + health):
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{kind} at {self.endpoint} not healthy after 60s; log {log_path}")
            time.sleep(0.1)
        cfg = Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 8}, read_timeout=60)
        kw = dict(endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test",
                  aws_secret_access_key="test", config=cfg)
        self.sqs, self.ddb = boto3.client("sqs", **kw), boto3.client("dynamodb", **kw)

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"{self.kind} exited with code {self.proc.returncode}:\n{log_tail(self.proc)}")

    def _sim_endpoint(self, log_path):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://\S+)", log_path.read_text(errors="replace"))
            if m:
                return m.group(1)
            self._check_alive()
            time.sleep(0.05)
        raise BenchError(f"sluice sim printed no endpoint in 30s; log {log_path}")

    def create(self, name):
        """A standard queue and a PAY_PER_REQUEST table keyed by request_id (S)."""
        url = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
        self.ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "request_id", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "request_id", "AttributeType": "S"}])
        self.ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        return url

    def queue_counts(self, url):
        a = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])

    def table_count(self, table):
        count, kw = 0, {"TableName": table, "Select": "COUNT"}
        while True:
            page = self.ddb.scan(**kw)
            count += page["Count"]
            if "LastEvaluatedKey" not in page:
                return count
            kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def requests_served(self):
        """sluice-sim's count of requests per operation (includes the harness's own), else None."""
        if self.kind != "sim":
            return None
        with urllib.request.urlopen(self.endpoint + "/_sim/requests", timeout=10) as r:
            return json.load(r)

    def close(self):
        stop(self.proc, 10)


# ---- the backlog ----------------------------------------------------------------------------------

METHODS = ["GET"] * 7 + ["POST"] * 2 + ["PUT", "DELETE"]
STATUSES = [200] * 14 + [201, 204, 301, 304, 400, 401, 404, 404, 429, 500, 503]
PATHS = ["/api/v1/orders/{}", "/api/v1/users/{}/profile", "/api/v2/search?q=item-{}", "/static/img/{}.png",
         "/api/v1/cart/{}/items", "/healthz"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "okhttp/4.12.0",
    "curl/8.5.0",
    "python-requests/2.32.3",
]
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt "
BODY_BYTES = 1024


def make_log(rng, run_id, i, epoch):
    """One request log, serialized to exactly BODY_BYTES bytes with the padding field."""
    ts = datetime.datetime.fromtimestamp(epoch + i / 1000, datetime.timezone.utc)
    log = {
        "request_id": f"{run_id}-{i}",
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": rng.choice(METHODS),
        "path": rng.choice(PATHS).format(rng.randrange(1_000_000)),
        "status": rng.choice(STATUSES),
        "latency_ms": round(rng.lognormvariate(3, 1) + 0.001, 3),
        "user_id": f"user-{rng.randrange(100_000):05d}",
        "user_agent": rng.choice(AGENTS),
        "padding": "",
    }
    short = BODY_BYTES - len(json.dumps(log, separators=(",", ":")))
    log["padding"] = (FILLER * (short // len(FILLER) + 1))[:max(short, 0)]
    return json.dumps(log, separators=(",", ":"))


def fill(server, url, n, run_id, threads, label, logs_per_msg=1):
    """Sends N messages with SendMessageBatch (10 a call) from a thread pool, then waits until
    ApproximateNumberOfMessages reads N (it lags on MiniStack). A message is one log, or
    logs_per_msg logs as NDJSON (how sluice-producer packs them)."""
    epoch = time.time()

    def body(rng, m):
        return "\n".join(make_log(rng, run_id, m * logs_per_msg + j, epoch) for j in range(logs_per_msg))

    def send(start):
        rng = random.Random(start)
        entries = [{"Id": str(k), "MessageBody": body(rng, start + k)}
                   for k in range(min(10, n - start))]
        for attempt in range(8):
            failed = {f["Id"] for f in server.sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed", [])}
            if not failed:
                return
            entries = [e for e in entries if e["Id"] in failed]
            time.sleep(0.05 * 2 ** attempt)
        raise BenchError(f"SendMessageBatch kept failing for {len(entries)} messages")

    t0 = last = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(send, range(0, n, 10)), 1):
            if time.monotonic() - last >= 1:
                last = time.monotonic()
                say(f"{label}: filling {min(done * 10, n)}/{n}")
    say(f"{label}: sent {n} messages in {time.monotonic() - t0:.1f}s; waiting for the queue to show them")
    deadline = time.monotonic() + 120
    while (visible := server.queue_counts(url)[0]) != n:
        if visible > n or time.monotonic() > deadline:
            raise BenchError(f"{label}: queue shows {visible} messages, expected {n}")
        time.sleep(0.2)


# ---- consumers ------------------------------------------------------------------------------------

def consumer_command(kind, args, endpoint, url, table, pollers, concurrency):
    """The command and environment of one consumer, and a short description of its concurrency."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SLUICE"))}
    env.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    if kind == "sluice":
        env.update(SLUICE__SQS__QUEUE_URL=url, SLUICE__DYNAMODB__TABLE=table, SLUICE__TELEMETRY__LISTEN="127.0.0.1:0",
                   SLUICE__SQS__POLLERS=str(pollers), SLUICE__SQS__WAIT_TIME_SECONDS="20",
                   SLUICE__DYNAMODB__MAX_CONCURRENT_REQUESTS=str(concurrency))
        if args.sluice_max_in_flight:
            env["SLUICE__WORKER__MAX_IN_FLIGHT"] = str(args.sluice_max_in_flight)
        elif pollers * 10 > 1000:  # it must hold at least pollers x 10
            env["SLUICE__WORKER__MAX_IN_FLIGHT"] = str(pollers * 10)
        env.update(args.sluice_env)
        return [args.sluice_bin, "run"], env, f"{pollers} pollers, {concurrency} writes"
    env.update(QUEUE_URL=url, TABLE=table)
    if kind == "node":
        env["PEER_CONSUMERS"] = str(args.peer_consumers)
        return [args.node, NODE_PEER], env, f"{args.peer_consumers} Consumers"
    env["PEER_THREADS"] = str(args.peer_threads)
    return [args.python, PYTHON_PEER], env, f"{args.peer_threads} threads"


def run_one(args, logdir, server_kind, consumer, n, seq, sim_flags=(), pollers=None, concurrency=None,
            logs_per_msg=1):
    """One measured run: fresh server, queue and table; fill; drain; verify. N messages of
    logs_per_msg logs each; the table must end with N × logs_per_msg items."""
    pollers = pollers or args.sluice_pollers
    concurrency = concurrency or args.sluice_max_concurrent_requests
    name = f"bench-{consumer}-{seq}"
    label = f"{server_kind}/{consumer}" + (f" {pollers}x{concurrency}" if sim_flags else "") + \
        (f" {logs_per_msg} logs/msg" if logs_per_msg > 1 else "")
    logs = n * logs_per_msg
    prefix = f"{seq:02d}-{server_kind}-{consumer}"
    server = Server(server_kind, args, logdir / f"{prefix}.server.log", sim_flags)
    try:
        url = server.create(name)
        fill(server, url, n, f"{name}-{int(time.time())}", args.fill_threads, label, logs_per_msg)
        cmd, env, config = consumer_command(consumer, args, server.endpoint, url, name, pollers, concurrency)
        say(f"{label}: draining {n} messages ({config})")
        server_cpu0 = cpu_seconds(server.proc.pid)
        t0 = time.monotonic()
        proc = spawn(cmd, env, logdir / f"{prefix}.consumer.log")
        m = drain(server, proc, url, name, n, logs, t0, label, args.timeout)
        m["server_cpu_s"] = m.pop("server_cpu_end") - server_cpu0
        code, stop_s = stop(proc, args.stop_timeout)
        count = server.table_count(name)
        requests = server.requests_served()
    finally:
        server.close()
    cpu = m["cpu_s"]
    row = {
        "server": server_kind, "consumer": consumer, "config": config, "n": n, "logs_per_msg": logs_per_msg,
        "count": count, "lost": logs - count, "logs_per_s": logs / m["drain_s"],
        "timed_out": m["timed_out"], "drain_s": m["drain_s"], "first_receive_s": m["first_s"],
        "msgs_per_s": n / m["drain_s"], "cpu_s": cpu,
        "cpu_s_per_10k": cpu / n * 10_000, "cpu_us_per_msg": cpu / n * 1e6, "peak_rss_mib": m["hwm_kib"] / 1024,
        "max_sampled_rss_mib": m["rss_sampled_kib"] / 1024,
        "server_cpu_s": m["server_cpu_s"], "exit_code": code, "stop_s": stop_s, "log": str(proc.log_path),
        "server_requests": requests,
        "items_per_write": logs / requests["BatchWriteItem"] if requests and requests.get("BatchWriteItem") else None,
    }
    flag = " TIMED OUT" if row["timed_out"] else ""
    say(f"{label}: {row['drain_s']:.2f}s, {row['msgs_per_s']:.0f} msg/s, {cpu:.2f} CPU s, "
        f"{row['peak_rss_mib']:.0f} MiB peak, lost {row['lost']}{flag}")
    return row


def drain(server, proc, url, table, n, items, t0, label, timeout):
    """Samples the queue every POLL s until it reads empty for SETTLE s and the table holds
    `items` items (or timeout). CPU time is read at the first empty sample, peak RSS (VmHWM; VmRSS is
    sampled too, as a check) before the stop;
    first_s is when the queue first showed a message taken (start-up plus the first receive)."""
    pid, last_say = proc.pid, t0
    zero_since = zero_cpu = zero_server_cpu = first = None
    rss_max = 0
    while True:
        try:
            cpu, server_cpu = cpu_seconds(pid), cpu_seconds(server.proc.pid)
            rss_max = max(rss_max, memory_kib(pid)[1])
        except OSError:
            cpu = None
        if cpu is None or proc.poll() is not None:
            proc.wait()
            raise BenchError(f"{label}: consumer exited early with code {proc.returncode}:\n{log_tail(proc)}")
        visible, hidden = server.queue_counts(url)
        now = time.monotonic()
        if first is None and visible < n:
            first = now - t0
        if visible == 0 and hidden == 0:
            if zero_since is None:
                zero_since, zero_cpu, zero_server_cpu, next_count = now, cpu, server_cpu, now + SETTLE
            elif now >= next_count:
                if server.table_count(table) >= items:
                    timed_out, end = False, zero_since
                    break
                next_count = time.monotonic() + SETTLE  # counts lag, or items are missing: look again
        else:
            zero_since = None
        if now - t0 > timeout:
            timed_out, end, zero_cpu, zero_server_cpu = True, now, cpu, server_cpu
            break
        if now - last_say >= 1:
            last_say = now
            say(f"{label}: {visible + hidden} left ({visible} visible, {hidden} in flight), {now - t0:.0f}s")
        time.sleep(max(0.0, POLL - (time.monotonic() - now)))
    hwm, rss = memory_kib(pid)
    return {"drain_s": end - t0, "first_s": first, "cpu_s": zero_cpu, "hwm_kib": hwm,
            "rss_sampled_kib": max(rss_max, rss), "timed_out": timed_out, "server_cpu_end": zero_server_cpu}


# ---- report ---------------------------------------------------------------------------------------

def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def ratios(rows):
    """Per server: sluice / peer for msg/s, CPU per message and peak RSS."""
    out = []
    for server in SERVERS:
        by = {r["consumer"]: r for r in rows if r["server"] == server}
        if "sluice" not in by:
            continue
        for peer in ("node", "python"):
            if peer in by:
                s, p = by["sluice"], by[peer]
                out.append({"server": server, "peer": peer,
                            "msgs_per_s": s["msgs_per_s"] / p["msgs_per_s"],
                            "cpu_per_msg": s["cpu_us_per_msg"] / p["cpu_us_per_msg"] if p["cpu_us_per_msg"] else None,
                            "peak_rss": s["peak_rss_mib"] / p["peak_rss_mib"]})
    return out


def report(runs, ceiling, meta):
    x = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    parts = [f"Sluice binary: `{meta['sluice_bin']}` ({meta['sluice_version']}); {meta['host']}."]
    if runs:
        parts.append(md_table(
            ["server", "consumer", "concurrency", "N", "drain s", "first receive s", "msg/s", "CPU s / 10k msgs",
             "peak RSS MiB", "lost", "server CPU s", "items / BatchWriteItem"],
            [[r["server"], r["consumer"], r["config"], r["n"], f"{r['drain_s']:.2f}", fmt(r["first_receive_s"]),
              f"{r['msgs_per_s']:.0f}",
              f"{r['cpu_s_per_10k']:.2f}", f"{r['peak_rss_mib']:.1f}",
              f"{r['lost']}" + (" (timed out)" if r["timed_out"] else ""), f"{r['server_cpu_s']:.1f}",
              fmt(r["items_per_write"])]
             for r in runs]))
        rs = ratios(runs)
        if rs:
            parts.append("Ratios, sluice / peer (msg/s: higher is better for sluice; CPU and RSS: lower is):\n\n" +
                         md_table(["server", "peer", "msg/s", "CPU per msg", "peak RSS"],
                                  [[r["server"], r["peer"], x(r["msgs_per_s"]), x(r["cpu_per_msg"]), x(r["peak_rss"])]
                                   for r in rs]))
    if ceiling:
        best = max((r for r in ceiling if r["logs_per_msg"] == 1), key=lambda r: r["msgs_per_s"], default=None)
        parts.append(f"Ceiling: sluice alone, sim with {meta['ceiling_latency']} latency per call:\n\n" + md_table(
            ["pollers x writes", "logs / msg", "N msgs", "drain s", "msg/s", "logs/s", "CPU µs/msg", "CPU µs/log",
             "peak RSS MiB", "lost", "sim CPU s", "items / BatchWriteItem"],
            [[("**" if r is best else "") + f"{r['pollers']}x{r['concurrency']}" + ("**" if r is best else ""),
              r["logs_per_msg"], r["n"], f"{r['drain_s']:.2f}", f"{r['msgs_per_s']:.0f}", f"{r['logs_per_s']:.0f}",
              f"{r['cpu_us_per_msg']:.1f}", f"{r['cpu_us_per_msg'] / r['logs_per_msg']:.1f}",
              f"{r['peak_rss_mib']:.1f}", r["lost"], f"{r['server_cpu_s']:.1f}", fmt(r["items_per_write"])]
             for r in ceiling]))
    print("\n\n".join(parts), flush=True)


# ---- main -----------------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sluice-bin", type=Path, default=ROOT / "target/release/sluice", metavar="PATH",
                   help="sluice binary, for `run` and `sim` (default: %(default)s)")
    tools = Path(os.environ.get("SLUICE_TOOLS_DIR") or ROOT / ".tools")
    p.add_argument("--ministack-bin", type=Path, default=tools / "ministack/bin/ministack", metavar="PATH",
                   help="MiniStack launcher (default: %(default)s)")
    p.add_argument("--node", default="node", metavar="PATH", help="Node.js 20+ for the node peer (default: %(default)s)")
    p.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="Python with boto3 for the python peer (default: this interpreter)")
    p.add_argument("--servers", default=",".join(SERVERS), metavar="LIST", help="servers to run on (default: %(default)s)")
    p.add_argument("--consumers", default=",".join(CONSUMERS), metavar="LIST", help="consumers to run (default: %(default)s)")
    p.add_argument("--n-sim", type=int, default=60_000, metavar="N", help="messages per run on sluice-sim (default: %(default)s)")
    p.add_argument("--n-ministack", type=int, default=5_000, metavar="N",
                   help="messages per run on MiniStack, the slower server (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600, metavar="S", help="longest drain, seconds (default: %(default)s)")
    p.add_argument("--stop-timeout", type=float, default=30, metavar="S",
                   help="seconds from SIGTERM to SIGKILL for a consumer (default: %(default)s)")
    p.add_argument("--fill-threads", type=int, default=16, metavar="N",
                   help="threads sending the backlog, 10 messages a call (default: %(default)s)")
    p.add_argument("--sluice-pollers", type=int, default=8, metavar="N", help="SLUICE__SQS__POLLERS (default: %(default)s)")
    p.add_argument("--sluice-max-concurrent-requests", type=int, default=8, metavar="N",
                   help="SLUICE__DYNAMODB__MAX_CONCURRENT_REQUESTS (default: %(default)s)")
    p.add_argument("--sluice-max-in-flight", type=int, metavar="N",
                   help="SLUICE__WORKER__MAX_IN_FLIGHT (default: sluice's own, raised to pollers x 10 if needed)")
    p.add_argument("--sluice-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for sluice, e.g. SLUICE__SQS__ACK_LINGER=5ms (repeatable)")
    p.add_argument("--peer-consumers", type=int, default=8, metavar="N",
                   help="sqs-consumer Consumer instances in the node peer (default: %(default)s)")
    p.add_argument("--peer-threads", type=int, default=16, metavar="N", help="threads in the python peer (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--ceiling", action="store_true", help="run only the ceiling (sluice alone), not the comparison")
    mode.add_argument("--no-ceiling", action="store_true", help="skip the ceiling after the comparison")
    p.add_argument("--ceiling-n", type=int, default=100_000, metavar="N", help="messages per ceiling run (default: %(default)s)")
    p.add_argument("--ceiling-configs", default="16x16,32x16,64x32", metavar="PxC,...",
                   help="sluice pollers x max concurrent requests to try (default: %(default)s)")
    p.add_argument("--ceiling-packed", type=int, default=100, metavar="K",
                   help="after the one-log-per-message ceiling runs, one more at the best of them with K logs "
                        "per message as NDJSON (sluice-producer's packing), N/K messages; 0: skip "
                        "(default: %(default)s)")
    p.add_argument("--ceiling-latency", default="10ms", metavar="DURATION", help="sim --latency for the ceiling (default: %(default)s)")
    p.add_argument("--json-out", type=Path, default=ROOT / "bench/results/compare.json", metavar="PATH",
                   help="where to write every figure as JSON (default: %(default)s)")
    p.add_argument("--log-dir", type=Path, metavar="DIR",
                   help="where server and consumer logs go (default: a new directory under /tmp, kept)")
    args = p.parse_args()
    args.servers = [s for s in args.servers.split(",") if s]
    args.consumers = [c for c in args.consumers.split(",") if c]
    for s in args.servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r} (expected {', '.join(SERVERS)})")
    for c in args.consumers:
        if c not in CONSUMERS:
            p.error(f"unknown consumer {c!r} (expected {', '.join(CONSUMERS)})")
    try:
        args.ceiling_configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.ceiling_configs.split(",")]
        assert all(len(c) == 2 and min(c) > 0 for c in args.ceiling_configs)
    except (ValueError, AssertionError):
        p.error("--ceiling-configs: comma-separated POLLERSxCONCURRENCY pairs, e.g. 8x8,32x16")
    env = {}
    for kv in args.sluice_env:
        key, eq, value = kv.partition("=")
        if not eq or not key:
            p.error(f"--sluice-env {kv!r}: expected KEY=VALUE")
        env[key] = value
    args.sluice_env = env
    args.sluice_bin = args.sluice_bin.resolve()
    return args


def check_tools(args, consumers, servers):
    """Clear errors for anything missing, before any server starts."""
    need_sluice = "sluice" in consumers or "sim" in servers
    if need_sluice and not os.access(args.sluice_bin, os.X_OK):
        raise BenchError(f"sluice binary not found at {args.sluice_bin}: build it with "
                         "`cargo build --release -p sluice --locked` or pass --sluice-bin")
    if "ministack" in servers and not os.access(args.ministack_bin, os.X_OK):
        raise BenchError(f"MiniStack not found at {args.ministack_bin}: run scripts/install-test-servers.sh ministack")
    if "node" in consumers:
        node = shutil.which(args.node)
        if not node:
            raise BenchError(f"node not found ({args.node}): install Node.js 20+")
        major = int(subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                                   text=True, check=True).stdout)
        if major < 20:
            raise BenchError(f"{node} is Node.js {major}: the node peer needs Node.js 20+")
        if not (NODE_PEER.parent / "node_modules/sqs-consumer").is_dir():
            raise BenchError("the node peer's packages are missing: run scripts/install-bench-peers.sh node")
    if "python" in consumers and subprocess.run([args.python, "-c", "import boto3"], capture_output=True).returncode:
        raise BenchError(f"{args.python} has no boto3: run scripts/install-bench-peers.sh python")


def describe_host(args):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {
        "host": f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Node.js {out([args.node, '--version'])}, "
                f"Python {platform.python_version()}",
        "sluice_version": out([str(args.sluice_bin), "--version"]),
    }


def main():
    args = parse_args()
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _f: sys.exit(128 + signum))
    compare = not args.ceiling
    ceiling = args.ceiling or not args.no_ceiling
    check_tools(args, args.consumers if compare else ["sluice"], args.servers if compare else ["sim"])
    logdir = args.log_dir or Path(tempfile.mkdtemp(prefix="sluice-compare-"))
    logdir.mkdir(parents=True, exist_ok=True)
    say(f"logs in {logdir}")
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sluice_bin": str(args.sluice_bin), "ceiling_latency": args.ceiling_latency, **describe_host(args)}
    runs, ceiling_runs, seq = [], [], 0
    try:
        if compare:
            for server in args.servers:
                n = args.n_sim if server == "sim" else args.n_ministack
                for consumer in args.consumers:
                    seq += 1
                    runs.append(run_one(args, logdir, server, consumer, n, seq))
        if ceiling:
            flags = ["--latency", args.ceiling_latency, "--on-demand-ceiling-wcu", "100000000"]
            for pollers, concurrency in args.ceiling_configs:
                seq += 1
                row = run_one(args, logdir, "sim", "sluice", args.ceiling_n, seq, flags, pollers, concurrency)
                ceiling_runs.append(dict(row, pollers=pollers, concurrency=concurrency))
            if args.ceiling_packed > 1 and ceiling_runs:
                top = max(ceiling_runs, key=lambda r: r["msgs_per_s"])
                seq += 1
                n = max(1, args.ceiling_n // args.ceiling_packed)
                row = run_one(args, logdir, "sim", "sluice", n, seq, flags, top["pollers"], top["concurrency"],
                              logs_per_msg=args.ceiling_packed)
                ceiling_runs.append(dict(row, pollers=top["pollers"], concurrency=top["concurrency"]))
    finally:
        stop_all()
        if runs or ceiling_runs:
            args_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            result = {**meta, "args": args_json, "runs": runs, "ratios": ratios(runs), "ceiling": ceiling_runs}
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
            say(f"results in {args.json_out}")
    report(runs, ceiling_runs, meta)
    bad = [r for r in runs + ceiling_runs if r["lost"] or r["timed_out"]]
    if bad:
        say("FAILED: " + ", ".join(f"{r['server']}/{r['consumer']} lost {r['lost']}" for r in bad))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"compare.py: {e}")
    except (BotoCoreError, ClientError) as e:
        sys.exit(f"compare.py: a call to the server failed: {e}")
    except KeyboardInterrupt:
        sys.exit("compare.py: interrupted")
