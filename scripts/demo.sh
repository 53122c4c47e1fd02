#!/usr/bin/env bash
# The main job, end to end on this machine: starts a local SQS + DynamoDB server (MiniStack) on a
# free loopback port, then `sluice demo` creates a queue and a table, pushes a spike of request
# logs (multi-log messages and duplicate deliveries included), drains it with the worker pool and
# prints a summary (sent, written, duplicates collapsed, lost). Extra arguments go to
# `sluice demo` (see `sluice demo --help`), e.g. `scripts/demo.sh --messages 10000 --wcu 500`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

bash scripts/install-test-servers.sh ministack
echo "building sluice (first build takes a few minutes)..."
cargo build --locked -q -p sluice

T=${SLUICE_TOOLS_DIR:-$PWD/.tools}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
GATEWAY_PORT=$port BIND_HOST=127.0.0.1 SERVICES=sqs,dynamodb LOG_LEVEL=WARNING \
  "$T/ministack/bin/ministack" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT

for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/_ministack/health', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 $server 2>/dev/null || { echo "MiniStack exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
echo "MiniStack (SQS + DynamoDB) listening on 127.0.0.1:$port"

target/debug/sluice demo --endpoint "http://127.0.0.1:$port" "$@"
