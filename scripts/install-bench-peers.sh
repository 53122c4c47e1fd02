#!/usr/bin/env bash
# Install the peer consumers and the Python that bench/compare.py runs with.
#
#   node    bench/peers/node's locked dependencies (npm ci from package-lock.json) in
#           $T/bench/node/node_modules; bench/peers/node/node_modules is a symlink to it, so
#           `node bench/peers/node/consumer.mjs` resolves them.
#   python  a venv with bench/peers/python/requirements.txt (boto3, pinned): $T/bench/venv.
#           bench/peers/python/worker.py and bench/compare.py both run with its python.
#
# T = ${SLUICE_TOOLS_DIR:-<repo root>/.tools}. Idempotent: each finished install carries a stamp
# file naming the SHA-256 of its lock file (package-lock.json, requirements.txt), and a re-run
# skips it; editing the lock file makes the next run reinstall. An interrupted install is never
# stamped and is redone from scratch on the next run.
#
# Needs Node.js 20+ with npm (installed from Debian's packages when missing) and python3 with venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=${SLUICE_TOOLS_DIR:-$ROOT/.tools}
mkdir -p "$T/bench"
T=$(cd "$T" && pwd)
NODE_SRC=$ROOT/bench/peers/node
PY_SRC=$ROOT/bench/peers/python
STAMP=.sluice-installed

log() { printf '%s\n' "$*"; }
die() { printf 'install-bench-peers: %s\n' "$*" >&2; exit 1; }

# One installer at a time per tools dir (shared with install-test-servers.sh).
if command -v flock >/dev/null; then
  exec 9>"$T/.lock"
  flock 9
fi


sha() { sha256sum "$1" | cut -d' ' -f1; }

source "$ROOT/scripts/lib/install.sh"

# --- node peer -------------------------------------------------------------------
install_node() {
  local dest=$T/bench/node want link=$NODE_SRC/node_modules major
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  command -v node >/dev/null || die "node not found: install Node.js 20+"
  major=$(node -p 'process.versions.node.split(".")[0]')
  [[ $major -ge 20 ]] || die "node $(node --version) is too old: the node peer needs Node.js 20+"
  want="package-lock.json sha256:$(sha "$NODE_SRC/package-lock.json")"
  if stamped "$dest" "$want" && [[ -d $dest/node_modules/sqs-consumer ]]; then
    log "bench node peer: already installed"
  else
    log "bench node peer: npm ci ($NODE_SRC/package-lock.json)"
    rm -rf -- "$dest"
    mkdir -p "$dest"
    cp "$NODE_SRC/package.json" "$NODE_SRC/package-lock.json" "$dest/"
    (cd "$dest" && npm ci --silent --no-audit --no-fund --ignore-scripts) \
      || die "npm ci failed in $dest"
    printf '%s\n' "$want" >"$dest/$STAMP"
    log "bench node peer: installed"
  fi
  if [[ -L $link || ! -e $link ]]; then
    ln -sfn "$dest/node_modules" "$link"
  elif [[ $(readlink -f "$link") != "$(readlink -f "$dest/node_modules")" ]]; then
    die "$link exists and is not a symlink to $dest/node_modules; remove it"
  fi
}

# --- python peer + harness ---------------------------------------------------------
install_python() {
  local dest=$T/bench/venv want
  command -v python3 >/dev/null || apt_install python3 python3-venv
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  want="requirements.txt sha256:$(sha "$PY_SRC/requirements.txt")"
  if stamped "$dest" "$want" && [[ -x $dest/bin/python ]]; then
    log "bench python venv: already installed"
    return
  fi
  log "bench python venv: installing $PY_SRC/requirements.txt"
  # A venv hard-codes its own path, so it is built in place; the stamp, written last, marks it
  # complete.
  rm -rf -- "$dest"
  python3 -m venv "$dest"
  "$dest/bin/pip" install --quiet --disable-pip-version-check -r "$PY_SRC/requirements.txt" \
    || die "pip install -r $PY_SRC/requirements.txt failed"
  printf '%s\n' "$want" >"$dest/$STAMP"
  log "bench python venv: installed"
}

# Usage: install-bench-peers.sh [node] [python]   (default: both)
want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(node python)
for what in "${want[@]}"; do
  case $what in
    node) install_node ;;
    python) install_python ;;
    *) die "unknown peer '$what' (expected node or python)" ;;
  esac
done
