#!/usr/bin/env bash
# Assemble the image the Helm chart runs from a sluice binary that is already built, with podman
# and no registry: a FROM-scratch image holding only
#   /usr/local/bin/sluice                     the binary, stripped (as scripts/package.sh does)
#   the shared libraries `ldd` lists           at the paths ldd prints (the ELF interpreter too)
#   /etc/ssl/certs/ca-certificates.crt        the host's CA bundle: rustls (the AWS SDK) finds it
#                                             there; OpenSSL (librdkafka's TLS) through the
#                                             image's SSL_CERT_FILE, as on distroless
#   /etc/passwd, /etc/group                   one line each: sluice, 10001
#   /etc/nsswitch.conf                        hosts: files dns (without it glibc asks DNS first
#                                             and never reads /etc/hosts on an NXDOMAIN)
# and nothing else: no shell, no /tmp, every file owned by root, no directory writable by
# anyone but root. Its config is deploy/docker/Dockerfile's: USER 10001:10001, EXPOSE 9464,
# SSL_CERT_FILE, ENTRYPOINT ["/usr/local/bin/sluice"], CMD ["run", "--config", "/etc/sluice/sluice.toml"].
# (The Dockerfile builds the same layout on distroless, for those who can pull it.)
#
#   scripts/image.sh [--binary PATH] [--tag TAG] [--no-strip]
#
#   --binary PATH   the binary (default: target/release/sluice; build it first with
#                   `cargo build --release -p sluice --locked`). CI passes its debug binary.
#   --tag TAG       the image's name (default localhost/sluice:local)
#   --no-strip      put the binary in as it is
#
# Idempotent: the image carries a label with the digest of its files and config, and an image
# under TAG with the same digest is kept as it is. A replaced image is removed when nothing else
# names it. Prints the image id and size last (`image: ID SIZE TAG`). Runs as root (podman's
# root store); CONTAINERS_CONF and podman's other settings are honoured.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

binary="" tag=localhost/sluice:local strip=1
usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ -n $binary ]] || binary=${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice
[[ -f $binary && -x $binary ]] \
  || die "$binary is not an executable (cargo build --release -p sluice --locked, or pass --binary PATH)"
command -v podman >/dev/null || die "podman is not installed (scripts/install-deploy-tools.sh installs it)"
command -v ldd >/dev/null || die "ldd is not installed"
[[ $(id -u) -eq 0 ]] || die "run as root (the image goes into podman's root store)"
CA=/etc/ssl/certs/ca-certificates.crt
[[ -s $CA ]] || die "no CA bundle at $CA (apt-get install ca-certificates)"
[[ $tag == */*:* || $tag == *:* ]] || tag=$tag:latest

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/sluice-image.XXXXXX")
trap 'rm -rf -- "$STAGE"' EXIT
RFS=$STAGE/rootfs

# --- the root filesystem ---------------------------------------------------------------------
install -d -m 0755 "$RFS/usr/local/bin" "$RFS/etc/ssl/certs"
if [[ $strip == 1 ]]; then
  command -v strip >/dev/null || die "strip is not installed (apt-get install binutils, or --no-strip)"
  strip --strip-all -o "$RFS/usr/local/bin/sluice" "$binary" || die "strip failed on $binary"
else
  cp "$binary" "$RFS/usr/local/bin/sluice"
fi
chmod 0755 "$RFS/usr/local/bin/sluice"

# Every library ldd resolves, and the interpreter, at the path ldd prints (what the binary asks
# for); a library ldd cannot find fails here, not at the first start.
ldd_out=$(ldd "$binary" 2>&1) || die "ldd $binary failed: $ldd_out"
if grep -q 'not found' <<<"$ldd_out"; then
  die "ldd cannot resolve libraries of $binary: $(grep 'not found' <<<"$ldd_out" | paste -sd';')"
fi
grep -q 'statically linked\|not a dynamic executable' <<<"$ldd_out" && die "$binary is not dynamically linked; ldd says: $ldd_out"
LIBS=()
while read -r lib; do
  [[ -n $lib ]] || continue
  [[ -f $lib ]] || die "ldd names $lib, which is not a file"
  install -d -m 0755 "$RFS$(dirname "$lib")"
  cp -L "$lib" "$RFS$lib"
  chmod 0755 "$RFS$lib"
  LIBS+=("$lib")
done < <(grep -o '/[^ ]*' <<<"$ldd_out" | sort -u)
[[ ${#LIBS[@]} -gt 0 ]] || die "ldd listed no libraries for $binary"
interp=$(readelf -l "$binary" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p' || true)
if [[ -n $interp && ! -f $RFS$interp ]]; then
  die "the binary's interpreter $interp is not among ldd's libraries"
fi

cp -L "$CA" "$RFS$CA"
chmod 0644 "$RFS$CA"
printf 'sluice:x:10001:10001:sluice:/nonexistent:/sbin/nologin\n' >"$RFS/etc/passwd"
printf 'sluice:x:10001:\n' >"$RFS/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$RFS/etc/nsswitch.conf"
chmod 0644 "$RFS/etc/passwd" "$RFS/etc/group" "$RFS/etc/nsswitch.conf"
find "$RFS" -type d -exec chmod 0755 {} +

# A tar that depends only on the files: sorted, root-owned, one mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
  -C "$RFS" -cf "$STAGE/rootfs.tar" . || die "tar failed"
# --- podman ------------------------------------------------------------------------------------
CHANGES=(
  --change 'USER 10001:10001'
  --change 'EXPOSE 9464'
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
  --change 'ENTRYPOINT ["/usr/local/bin/sluice"]'
  --change 'CMD ["run", "--config", "/etc/sluice/sluice.toml"]'
  --change "LABEL org.opencontainers.image.title=sluice"
)
# The digest covers the files, the config above and the tag: a change to any is a new image.
digest=$({ sha256sum <"$STAGE/rootfs.tar"; printf '%s\n' "${CHANGES[@]}" "$tag"; } | sha256sum | cut -c1-64)
CHANGES+=(--change "LABEL io.sluice.rootfs-digest=$digest")
old_id=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
old_digest=$(podman image inspect --format '{{index .Config.Labels "io.sluice.rootfs-digest"}}' "$tag" 2>/dev/null || true)
if [[ -n $old_id && $old_digest == "$digest" ]]; then
  echo "image: $tag is up to date (root filesystem digest ${digest:0:12})"
else
  podman import "${CHANGES[@]}" --message "scripts/image.sh from $(basename "$binary")" \
    "$STAGE/rootfs.tar" "$tag" >"$STAGE/import.log" 2>&1 \
    || { cat "$STAGE/import.log" >&2; die "podman import failed"; }
  if [[ -n $old_id ]]; then
    # The previous image, now untagged; kept if a container or another tag still uses it.
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi
  echo "image: imported $tag ($(du -h "$STAGE/rootfs.tar" | cut -f1) root filesystem: binary$([[ $strip == 1 ]] && echo ' stripped'), ${#LIBS[@]} libraries, CA bundle, passwd/group)"
fi
id=$(podman image inspect --format '{{.Id}}' "$tag") || die "podman does not know $tag after the import"
size=$(podman image inspect --format '{{.Size}}' "$tag")
printf 'image: %s %s %s\n' "${id:0:12}" "$size" "$tag"
