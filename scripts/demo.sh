#!/usr/bin/env bash
# The main job, end to end on this machine, with nothing else installed: `sluice demo` starts the
# embedded SQS + DynamoDB simulator (which enforces provisioned write capacity) on a free loopback
# port, creates a queue with a dead-letter queue and a table provisioned at 5,000 WCU/s, pushes a
# spike of 100,000 messages (multi-log messages, duplicate deliveries and a few poison messages
# included), drains it paced at the table's capacity with live progress, and prints a summary.
# Arguments go to `sluice demo` (see `sluice demo --help`), e.g.
#   scripts/demo.sh --messages 20000 --provisioned-wcu 1000 --json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

echo "building sluice (the first build takes a few minutes)..."
cargo build --locked -q -p sluice
exec target/debug/sluice demo "$@"
