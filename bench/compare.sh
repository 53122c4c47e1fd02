#!/usr/bin/env bash
# sluice against a Node.js (sqs-consumer) and a Python (boto3) peer, on MiniStack and sluice-sim:
# one command installs what it needs, builds sluice (release), and runs bench/compare.py.
#
#   bench/compare.sh                               # the full run: comparison, then the ceiling
#   bench/compare.sh --n-sim 3000 --n-ministack 1000 --ceiling-n 10000   # a quick one
#   bench/compare.sh --sluice-bin PATH ...         # skip the build, use that binary
#   bench/compare.sh --help                        # compare.py's options
#
# Installs (idempotent): MiniStack (scripts/install-test-servers.sh), the peers' pinned packages
# and the harness's venv (scripts/install-bench-peers.sh), all under .tools/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T=${SLUICE_TOOLS_DIR:-.tools}
PY=$T/bench/venv/bin/python

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then
    if [[ ! -x $PY ]]; then bash scripts/install-bench-peers.sh python >&2; fi
    exec "$PY" bench/compare.py --help
  fi
done

bash scripts/install-test-servers.sh ministack >&2
bash scripts/install-bench-peers.sh >&2

build=1
for arg in "$@"; do
  case $arg in --sluice-bin | --sluice-bin=*) build=0 ;; esac
done
if [[ $build -eq 1 ]]; then
  source scripts/bootstrap.sh
  echo "building sluice (release)" >&2
  cargo build --release -p sluice --locked >&2
fi

exec "$PY" bench/compare.py "$@"
