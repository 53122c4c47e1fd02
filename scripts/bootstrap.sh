# Sourced by the other scripts: makes sure the build toolchain is there, installing what is
# missing on a fresh Debian machine (a C compiler for aws-lc-sys and librdkafka, OpenSSL headers,
# Rust via rustup with rustfmt and clippy). Idempotent and quiet when everything is present.
# shellcheck shell=bash

_sluice_apt() {
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  command -v apt-get >/dev/null || { echo "bootstrap: apt-get not found; install $* by hand" >&2; return 1; }
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || {
    "${sudo[@]}" apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
  }
}

if [[ -d $HOME/.cargo/bin && ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

if ! command -v cc >/dev/null; then
  echo "bootstrap: installing a C toolchain (build-essential)"
  _sluice_apt build-essential pkg-config ca-certificates
fi

# rdkafka (Kafka mode) builds librdkafka with TLS against the system OpenSSL.
if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl 2>/dev/null; then
  echo "bootstrap: installing libssl-dev and pkg-config (librdkafka's TLS)"
  _sluice_apt libssl-dev pkg-config
fi

if ! command -v cargo >/dev/null; then
  echo "bootstrap: installing Rust with rustup (https://rustup.rs)"
  command -v curl >/dev/null || _sluice_apt curl ca-certificates
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
  export PATH="$HOME/.cargo/bin:$PATH"
fi

if command -v rustup >/dev/null; then
  for _c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$_c" || rustup component add "$_c" >/dev/null 2>&1 || true
  done
fi
