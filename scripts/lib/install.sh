# Helpers shared by the install scripts (install-test-servers.sh, install-deploy-tools.sh,
# install-bench-peers.sh). Source it after defining `log MSG` and `die MSG`, with STAMP set.

# stamped DIR CONTENT: true when DIR holds a stamp with exactly CONTENT.
stamped() { [[ -f "$1/$STAMP" ]] && [[ "$(cat "$1/$STAMP")" == "$2" ]]; }

# apt_install PACKAGE...: Debian packages, as root or through sudo. The package lists are
# refreshed only when the install fails without it. Images without policy-rc.d may try to start
# a packaged service (prometheus, redis); that is harmless and not waited for.
APT_UPDATED=0
apt_install() {
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  log "apt: installing $*"
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
    if [[ $APT_UPDATED -eq 0 ]]; then
      "${sudo[@]}" apt-get update -q >/dev/null
      APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
  fi
}
