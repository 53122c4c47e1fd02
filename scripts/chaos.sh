#!/usr/bin/env bash
# The bigger chaos run: kill -9 the worker at random moments during a 20,000-message run,
# restarting it each time, against sluice-sim and MiniStack (the CI suite runs the same tests
# smaller). Scale with SLUICE_CHAOS_MESSAGES and SLUICE_CHAOS_KILLS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
bash scripts/install-test-servers.sh ministack
export SLUICE_CHAOS_MESSAGES=${SLUICE_CHAOS_MESSAGES:-20000} SLUICE_CHAOS_KILLS=${SLUICE_CHAOS_KILLS:-10}
exec cargo test --locked -p sluice --test binary chaos_kill -- --test-threads 1 --nocapture
