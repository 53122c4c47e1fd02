#!/usr/bin/env bash
# The whole test suite: installs what the tests need (toolchain, MiniStack, DynamoDB Local), then
# runs every unit and integration test. The integration tests start their own servers on free
# loopback ports and stop them when they end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

bash scripts/install-test-servers.sh
cargo test --workspace --locked "$@"
