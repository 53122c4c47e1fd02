#!/usr/bin/env bash
# Write-pacing benchmark: one command reproduces bench/README.md's table.
# Installs what it needs (toolchain via scripts/bootstrap.sh, Debian's redis-server), builds
# sluice (debug profile, the one the tests share), and runs `sluice bench-pacing` with any
# arguments given, e.g. `bench/pacing.sh --provisioned-wcu 2000 --scenarios 1,3-redis`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
bash scripts/install-test-servers.sh redis
cargo build --locked -q -p sluice
exec target/debug/sluice bench-pacing "$@"
