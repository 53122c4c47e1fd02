#!/usr/bin/env bash
# Build the sluice .deb (cargo-deb) and .rpm (cargo-generate-rpm) from one binary.
#
#   scripts/package.sh [--binary PATH] [--out DIR] [--revision N] [--signing-key KEY]
#
#   --binary PATH      package this binary instead of building the release one
#                      (`cargo build --release -p sluice --locked`). The deploy check packages
#                      the debug binary it already has: it checks the packages, not the optimizer.
#   --out DIR          where the packages go (default target/packages)
#   --revision N       the package revision: 0.1.0-N (default 1; the deploy check builds 2 to
#                      upgrade to)
#   --signing-key KEY  sign the .rpm with this PGP private key file (releases; CI builds unsigned)
#
# Both packages hold the same files (see [package.metadata.deb] and
# [package.metadata.generate-rpm] in crates/sluice/Cargo.toml): /usr/bin/sluice (stripped),
# sluice.service, the spot-drain companion, /etc/sluice/sluice.toml and sluice.env as config
# files an upgrade keeps. The tools come from scripts/install-deploy-tools.sh (it installs them
# when missing). Prints the two paths at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T=${SLUICE_TOOLS_DIR:-$ROOT/.tools}

binary="" out=$ROOT/target/packages key="" revision=1
usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --signing-key) key=${2:?--signing-key needs a key file}; shift 2 ;;
    --revision) revision=${2:?--revision needs a number}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

if [[ ! -x $T/cargo-pkg/bin/cargo-deb || ! -x $T/cargo-pkg/bin/cargo-generate-rpm ]]; then
  bash scripts/install-deploy-tools.sh packaging
fi
export PATH=$T/cargo-pkg/bin:$PATH

if [[ -z $binary ]]; then
  echo "package: building the release binary (cargo build --release -p sluice --locked)"
  cargo build --release -p sluice --locked
  binary=target/release/sluice
fi
[[ -x $binary ]] || die "$binary is not an executable (build it, or pass --binary PATH)"

# Both tools take `target/release/sluice` from the target directory: stage a stripped copy of
# the chosen binary in one of our own, so the two packages hold the same bytes.
stage=$ROOT/target/package-stage
rm -rf "$stage"
mkdir -p "$stage/release" "$out"
strip --strip-all -o "$stage/release/sluice" "$binary"
version=$("$stage/release/sluice" --version | awk '{print $2}')
echo "package: sluice $version from $binary ($(du -h "$stage/release/sluice" | cut -f1) stripped)"

rm -f "$out"/sluice_*.deb "$out"/sluice-*.rpm
[[ $revision =~ ^[1-9][0-9]*$ ]] || die "--revision must be a positive number, not '$revision'"
CARGO_TARGET_DIR=$stage cargo deb -p sluice --no-build --profile release --no-strip \
  --deb-revision "$revision" -o "$out/" >/dev/null
rpm_args=(-p crates/sluice --target-dir "$stage" --profile release -o "$out/" -s "release = \"$revision\"")
[[ -z $key ]] || rpm_args+=(--signing-key "$key")
# SOURCE_DATE_EPOCH: the last commit's time, so a rebuild of one commit gives the same files.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)} \
  cargo generate-rpm "${rpm_args[@]}"
deb=$(ls "$out"/sluice_*.deb)
rpm=$(ls "$out"/sluice-*.rpm)
for f in "$deb" "$rpm"; do
  printf 'package: %s (%s)\n' "$f" "$(du -h "$f" | cut -f1)"
done
