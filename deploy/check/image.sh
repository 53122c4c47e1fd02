# The image the Helm chart runs, assembled and run as the chart runs it. Sourced by
# scripts/deploy-check.sh (after the Helm section); uses its die, note, wait_for, free_port, PIDS,
# WORK, ROOT, SLUICE, HELM and PY.
#
#   - scripts/image.sh assembles the image from the binary under check (FROM scratch: the
#     binary, its ldd libraries, the CA bundle, a passwd/group line for 10001, nsswitch.conf)
#     and podman imports it. Its config is deploy/docker/Dockerfile's (USER, ENTRYPOINT, CMD,
#     ENV, EXPOSE, the binary's path), and the chart's (runAsUser/runAsGroup, the metrics port,
#     the config's path).
#   - What it must not have: a shell (no sh, bash, dash, ash, busybox anywhere; running /bin/sh
#     in it fails), anything but the files listed above, a file not owned by root, anything
#     group- or world-writable, setuid/setgid bits, a root user.
#   - The chart rendered with helm (ci/worker-keda and ci/ingest values): each container run
#     with podman as the pod spec says: its args (the image's ENTRYPOINT, as Kubernetes keeps
#     it), its env, the ConfigMap's sluice.toml read-only at its mountPath, Secrets read-only
#     (files root:fsGroup 0440, as defaultMode and fsGroup make them), the spool claim writable
#     at its mountPath and nothing else writable (--read-only and no tmpfs: Kubernetes gives none),
#     runAsUser/runAsGroup, fsGroup, no-new-privileges, all capabilities dropped, on the host
#     network. The environment adds only what a local simulator needs (AWS_ENDPOINT_URL, test
#     credentials, us-east-1, the simulator's queue URL) and moves the chart's 0.0.0.0 listen
#     addresses to free ports on 127.0.0.1.
#   - `sluice validate` as the init container runs it (worker and ingest, which reads the
#     mounted key and TLS Secrets), refusing a config without a table and a certificate missing
#     where the chart points; a spool directory outside the volume (on the root filesystem, or
#     /tmp) cannot be created.
#   - Each running container passes the chart's startup, liveness and readiness probes (the
#     paths and port the render gives them).
#   - ingest: logs sent over HTTPS (the chart's TLS Secret) while SQS refuses every send are
#     answered 202 and spooled on the volume; `podman kill` (SIGKILL); the next container on the
#     same volume replays them once SQS is back; `podman stop` ends it with exit 0 within the
#     chart's terminationGracePeriodSeconds less its preStop sleep (spent before SIGTERM).
#   - worker: after the init container, `sluice run` drains a backlog (the ingest run's logs
#     and a direct load) into the table (every row there, the queue empty); `podman stop`
#     (SIGTERM) ends it with exit 0 within terminationGracePeriodSeconds less preStop.
# Needs root and podman + runc (scripts/install-deploy-tools.sh). runc, not crun, and
# containers.conf's default_ulimits emptied (with --ulimit host): what runs on these hosts.

IMG_T0=$(date +%s.%N)
IMG=$WORK/image
mkdir -p "$IMG"
command -v podman >/dev/null || die "podman is not installed (scripts/install-deploy-tools.sh installs it)"
command -v runc >/dev/null || die "runc is not installed (scripts/install-deploy-tools.sh installs it)"
[[ $(id -u) -eq 0 ]] || die "the image check runs podman as root"
printf '[containers]\ndefault_ulimits = []\n' >"$IMG/containers.conf"
export CONTAINERS_CONF=$IMG/containers.conf
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
IMAGE_TAG=localhost/sluice:deploy-check
IMG_CHART=$ROOT/deploy/helm/sluice
IMG_LABEL=io.sluice.deploy-check=$$
IMG_N=0 # containers started

# --- assemble ------------------------------------------------------------------------------------
bash "$ROOT/scripts/image.sh" --binary "$SLUICE" --tag "$IMAGE_TAG" >"$IMG/build.log" 2>&1 \
  || { cat "$IMG/build.log"; die "scripts/image.sh failed"; }
read -r _ IMAGE_ID IMAGE_SIZE _ < <(grep '^image: [0-9a-f]\{12\} ' "$IMG/build.log") \
  || { cat "$IMG/build.log"; die "scripts/image.sh did not print the image id"; }
IMAGE_MB=$((IMAGE_SIZE / 1000000))
echo "  image $IMAGE_TAG: $IMAGE_ID, $IMAGE_MB MB ($(head -n1 "$IMG/build.log" | sed 's/^image: //'))"

# --- its config: the Dockerfile's and the chart's -------------------------------------------------
"${PODMAN[@]}" image inspect "$IMAGE_TAG" --format '{{json .Config}}' >"$IMG/config.json" \
  || die "podman image inspect $IMAGE_TAG failed"
python3 - "$IMG/config.json" "$ROOT/deploy/docker/Dockerfile" "$IMG_CHART/values.yaml" <<'PY' || die "the image's config disagrees (above)"
import json, re, sys
cfg = json.load(open(sys.argv[1]))
lines = open(sys.argv[2]).read().splitlines()
last_from = max(i for i, l in enumerate(lines) if l.startswith("FROM "))
final = {}
for l in lines[last_from:]:
    m = re.match(r"^(USER|EXPOSE|ENTRYPOINT|CMD|COPY|ENV)\s+(.*)$", l)
    if m:
        final.setdefault(m.group(1), []).append(m.group(2).strip())
bad = []
def want(what, got, exp):
    if got != exp:
        bad.append(f"{what}: image has {got!r}, expected {exp!r}")
want("User (Dockerfile USER)", cfg.get("User"), final["USER"][-1])
want("Entrypoint (Dockerfile ENTRYPOINT)", cfg.get("Entrypoint"), json.loads(final["ENTRYPOINT"][-1]))
want("Cmd (Dockerfile CMD)", cfg.get("Cmd"), json.loads(final["CMD"][-1]))
for e in final.get("ENV", []):
    if e not in (cfg.get("Env") or []):
        bad.append(f"Env: image lacks the Dockerfile's ENV {e!r}")
want("ExposedPorts (Dockerfile EXPOSE)", sorted(cfg.get("ExposedPorts") or {}), sorted(f"{p}/tcp" for p in final["EXPOSE"][-1].split()))
copy_dest = final["COPY"][-1].split()[-1]
want("the binary's path (Dockerfile COPY)", cfg.get("Entrypoint", [None])[0], copy_dest)
user = cfg.get("User", "")
if not re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user):
    bad.append(f"User {user!r} is not a numeric non-root uid:gid (runAsNonRoot needs a number)")
values = open(sys.argv[3]).read()
for key in ("runAsUser", "runAsGroup"):
    ids = set(re.findall(rf"^\s+{key}: (\d+)$", values, re.M))
    want(f"the chart's {key}", ids, {user.split(":")[0 if key == "runAsUser" else 1]})
port = re.search(r"^metrics:\n(?:\s+#.*\n)*\s+port: (\d+)", values, re.M)
want("the chart's metrics.port", port and f"{port.group(1)}/tcp", (sorted(cfg.get("ExposedPorts") or {}) or [None])[0])
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
note "image config = Dockerfile's final stage: USER $(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["User"], "ENTRYPOINT", json.dumps(c["Entrypoint"]), "CMD", json.dumps(c["Cmd"]), "ENV", *[e for e in c.get("Env") or [] if not e.startswith("PATH=")], "EXPOSE", *c["ExposedPorts"])' "$IMG/config.json") (= the chart's runAsUser/runAsGroup and metrics.port)"

# --- its filesystem: only what it needs ----------------------------------------------------------
MNT=$("${PODMAN[@]}" image mount "$IMAGE_TAG") || die "podman image mount $IMAGE_TAG failed"
[[ -d $MNT/usr ]] || { "${PODMAN[@]}" image unmount "$IMAGE_TAG" >/dev/null; die "podman image mount gave $MNT, which holds no /usr"; }
(cd "$MNT" && find . -mindepth 1 -printf '%y %m %U:%G %p\n' | sed 's# \./# /#' | sort -k4) >"$IMG/fs.list"
cp "$MNT/etc/passwd" "$IMG/passwd" 2>/dev/null || true
"${PODMAN[@]}" image unmount "$IMAGE_TAG" >/dev/null || die "podman image unmount failed"
# Regular files: exactly the binary, the libraries ldd names, the CA bundle, passwd and group.
{
  echo /usr/local/bin/sluice
  ldd "$SLUICE" | grep -o '/[^ ]*'
  printf '%s\n' /etc/ssl/certs/ca-certificates.crt /etc/passwd /etc/group /etc/nsswitch.conf
} | sort -u >"$IMG/files.expected"
awk '$1 != "d" {print $4}' "$IMG/fs.list" | sort >"$IMG/files.actual"
diff -u "$IMG/files.expected" "$IMG/files.actual" || die "the image holds other files than the binary, its libraries, the CA bundle, passwd, group and nsswitch.conf"
awk '$1 != "d" && $1 != "f" {print}' "$IMG/fs.list" | grep . && die "the image holds links or special files (above)"
awk '{n = split($4, p, "/"); print p[n]}' "$IMG/fs.list" | grep -xE 'sh|bash|dash|ash|zsh|ksh|mksh|busybox|toybox' \
  && die "the image holds a shell (above)"
awk '$3 != "0:0"' "$IMG/fs.list" | grep . && die "files in the image not owned by root (above)"
# Mode: no write bit for group or others, no setuid/setgid/sticky (%m prints octal, e.g. 755).
awk '{m = sprintf("%04d", $2); if (substr(m, 1, 1) != "0" || substr(m, 3, 1) ~ /[2367]/ || substr(m, 4, 1) ~ /[2367]/) print}' \
  "$IMG/fs.list" | grep . && die "group/world-writable or setuid/setgid entries in the image (above)"
grep -q ' /tmp$' "$IMG/fs.list" && die "the image has a /tmp"
[[ $(grep -c . "$IMG/files.actual") -ge 5 ]] || die "the image's file list is implausibly short"
[[ $(cat "$IMG/passwd" 2>/dev/null) == sluice:x:10001:10001:*:/sbin/nologin ]] \
  || die "the image's /etc/passwd is not one nologin line for sluice, 10001"
# No shell at run time either: the runtime finds no /bin/sh to start.
code=0
out=$("${PODMAN[@]}" run --rm --ulimit host --network none --entrypoint /bin/sh "$IMAGE_TAG" -c 'echo shell-ran' 2>&1) || code=$?
[[ $code != 0 ]] && ! grep -q shell-ran <<<"$out" && grep -qi '/bin/sh.*\(no such file\|not found\)' <<<"$out" \
  || die "podman run --entrypoint /bin/sh did not fail for want of /bin/sh (exit $code): $out"
nfiles=$(grep -c . "$IMG/files.actual")
note "image filesystem: $nfiles files (binary, $((nfiles - 5)) libraries, CA bundle, passwd, group, nsswitch.conf), all root-owned, nothing group/world-writable, no setuid, no /tmp, no shell (podman cannot start /bin/sh in it)"

# --- the chart's pod specs ---------------------------------------------------------------------------
# extract RENDER OUTDIR: from the rendered workload, per container (init, main): args, env (NAME=VALUE),
# mounts (volume, path, ro, kind), securityContext; the pod's fsGroup and grace; the ConfigMap's
# sluice.toml in OUTDIR/config.
cat >"$IMG/extract.py" <<'PY'
import os, sys, yaml
render, out = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(render)) if d]
work = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
assert len(work) == 1, f"{render}: expected one workload, found {len(work)}"
w = work[0]
pod = w["spec"]["template"]["spec"]
cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
kinds = {}
for v in pod.get("volumes", []):
    if "configMap" in v:
        cm = cms[v["configMap"]["name"]]
        os.makedirs(f"{out}/vol-{v['name']}", exist_ok=True)
        for k, text in cm["data"].items():
            open(f"{out}/vol-{v['name']}/{k}", "w").write(text)
        kinds[v["name"]] = "configMap"
    elif "secret" in v:
        kinds[v["name"]] = "secret:%o" % v["secret"].get("defaultMode", 0o644)
    elif "emptyDir" in v:
        kinds[v["name"]] = "emptyDir"
    else:
        kinds[v["name"]] = "other"
for t in w["spec"].get("volumeClaimTemplates", []):
    kinds[t["metadata"]["name"]] = "pvc"
open(f"{out}/grace", "w").write(str(pod["terminationGracePeriodSeconds"]))
# The kubelet runs a preStop sleep before SIGTERM, inside the grace period.
pre = (pod["containers"][0].get("lifecycle") or {}).get("preStop") or {}
assert set(pre) <= {"sleep"}, f"preStop {pre}: the check counts only a sleep preStop in the stop budget"
open(f"{out}/prestop", "w").write(str(pre.get("sleep", {}).get("seconds", 0)))
open(f"{out}/fsgroup", "w").write(str(pod.get("securityContext", {}).get("fsGroup", "")))
open(f"{out}/volumes", "w").write("".join(f"{n}\t{k}\n" for n, k in sorted(kinds.items())))
# The kubelet's probes: each an httpGet on the port telemetry listens on.
main = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in main.get("ports", []) if "name" in p}
listen = [e.get("value", "") for e in main.get("env", []) if e["name"] == "SLUICE__TELEMETRY__LISTEN"]
assert listen, f"{main['name']}: no SLUICE__TELEMETRY__LISTEN"
tel_port = int(listen[0].rsplit(":", 1)[1])
probes = []
for kind in ("startup", "liveness", "readiness"):
    g = main.get(f"{kind}Probe", {}).get("httpGet")
    assert g, f"{main['name']}: no httpGet {kind}Probe"
    port = ports.get(g["port"], g["port"])
    assert port == tel_port, f"{main['name']}: the {kind} probe asks port {g['port']} ({port}), not telemetry's {tel_port}"
    probes.append(f"{kind} {g['path']}\n")
open(f"{out}/main.probes", "w").write("".join(probes))
for role, c in [("init", x) for x in pod.get("initContainers", [])] + [("main", main)]:
    assert not c.get("command"), f"{c['name']}: command overrides the image's ENTRYPOINT"
    open(f"{out}/{role}.args", "w").write("".join(a + "\n" for a in c["args"]))
    env = []
    for e in c.get("env", []):
        assert "value" in e, f"{c['name']}: env {e['name']} is not a literal value"
        env.append(f"{e['name']}={e['value']}\n")
    open(f"{out}/{role}.env", "w").write("".join(env))
    open(f"{out}/{role}.mounts", "w").write("".join(
        f"{m['name']}\t{m['mountPath']}\t{'ro' if m.get('readOnly') else 'rw'}\t{kinds.get(m['name'], 'missing')}\n"
        for m in c.get("volumeMounts", [])))
    s = c.get("securityContext", {})
    caps = ",".join(s.get("capabilities", {}).get("drop", []))
    open(f"{out}/{role}.sec", "w").write(
        f"{s.get('runAsUser', '')} {s.get('runAsGroup', '')} {str(s.get('readOnlyRootFilesystem', False)).lower()} "
        f"{str(s.get('allowPrivilegeEscalation', True)).lower()} {caps or '-'}\n")
PY
render_spec() { # render_spec NAME: renders ci/NAME-values.yaml into $IMG/NAME
  local name=$1 d=$IMG/$1
  mkdir -p "$d"
  "$HELM" template "sluice-$name" "$IMG_CHART" -n sluice -f "$IMG_CHART/ci/$name-values.yaml" >"$d/render.yaml" \
    || die "helm template failed for ci/$name-values.yaml"
  "$PY" "$IMG/extract.py" "$d/render.yaml" "$d" || die "cannot read the pod spec of the $name render"
}
render_spec worker-keda
render_spec ingest
[[ -s $IMG/worker-keda/init.args && -s $IMG/ingest/init.args ]] || die "the renders have no validate init container"

# chart_args DIR ROLE [NAME=VALUE...]: sets RUN_ARGS (podman run options) and CTR_ARGS (the
# container's args) for container ROLE of the render in DIR, as the pod spec says, with the
# environment overrides given. Secrets need DIR/vol-NAME prepared; writable volumes are
# DIR/vol-NAME (created root:fsGroup 2770, as the kubelet's fsGroup leaves a volume).
chart_args() {
  local d=$1 role=$2 line name path mode kind uid gid ro noesc caps fsg key
  shift 2
  read -r uid gid ro noesc caps <"$d/$role.sec"
  fsg=$(cat "$d/fsgroup")
  [[ $ro == true ]] || die "$d: $role has no readOnlyRootFilesystem: true"
  [[ -n $uid && -n $gid ]] || die "$d: $role sets no runAsUser/runAsGroup"
  RUN_ARGS=(--read-only --read-only-tmpfs=false --network host --ulimit host --user "$uid:$gid"
    --label "$IMG_LABEL")
  [[ -n $fsg ]] && RUN_ARGS+=(--group-add "$fsg")
  [[ $noesc == false ]] && RUN_ARGS+=(--security-opt no-new-privileges)
  [[ $caps == ALL ]] && RUN_ARGS+=(--cap-drop ALL)
  WRITABLE=()
  while IFS=$'\t' read -r name path mode kind; do
    case $kind in
      configMap) RUN_ARGS+=(-v "$d/vol-$name:$path:ro") ;;
      secret:*)
        [[ -d $d/vol-$name ]] || die "the check has no content for the $name Secret mounted at $path"
        [[ $mode == ro ]] || die "$d: the $name Secret is mounted writable"
        RUN_ARGS+=(-v "$d/vol-$name:$path:ro") ;;
      pvc | emptyDir)
        [[ $mode == rw ]] || die "$d: volume $name ($kind) mounted read-only"
        if [[ ! -d $d/vol-$name ]]; then
          install -d -o 0 -g "${fsg:-0}" -m 2770 "$d/vol-$name"
        fi
        RUN_ARGS+=(-v "$d/vol-$name:$path:rw")
        WRITABLE+=("$path") ;;
      *) die "$d: $role mounts $name ($kind), which the check does not know how to provide" ;;
    esac
  done <"$d/$role.mounts"
  declare -gA CTR_ENV=()
  CTR_ENV_ORDER=()
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    key=${line%%=*}
    [[ -n ${CTR_ENV[$key]+x} ]] || CTR_ENV_ORDER+=("$key")
    CTR_ENV[$key]=${line#*=}
  done < <(cat "$d/$role.env"; printf '%s\n' "$@")
  for key in "${CTR_ENV_ORDER[@]}"; do RUN_ARGS+=(-e "$key=${CTR_ENV[$key]}"); done
  mapfile -t CTR_ARGS <"$d/$role.args"
}
# ctr_start NAME LOG: starts the container in the background (podman run --rm, attached; its
# exit code is the container's), sets CTR_PID.
ctr_start() {
  "${PODMAN[@]}" run --rm --name "$1" "${RUN_ARGS[@]}" "$IMAGE_TAG" "${CTR_ARGS[@]}" >"$2" 2>&1 &
  CTR_PID=$!
  PIDS+=("$CTR_PID")
  IMG_N=$((IMG_N + 1))
  wait_for "[[ \$(${PODMAN[*]} inspect --format '{{.State.Status}}' '$1' 2>/dev/null) == running ]] || ! kill -0 $CTR_PID" 30 \
    || die "container $1 did not start"
}
# ctr_once NAME LOG TIMEOUT: runs the container to its end; prints nothing, returns its exit code.
ctr_once() {
  local code=0
  timeout "$3" "${PODMAN[@]}" run --rm --name "$1" "${RUN_ARGS[@]}" "$IMAGE_TAG" "${CTR_ARGS[@]}" >"$2" 2>&1 || code=$?
  IMG_N=$((IMG_N + 1))
  if [[ $code == 124 ]]; then "${PODMAN[@]}" rm -f "$1" >/dev/null 2>&1 || true; fi
  return "$code"
}
# ctr_stop NAME PID BUDGET WHAT: podman stop (SIGTERM; SIGKILL only well after BUDGET, so a slow
# clean exit is seen as slow, not killed); the container must exit 0 within BUDGET s: the chart's
# terminationGracePeriodSeconds less its preStop sleep, which the kubelet spends before SIGTERM.
# Sets STOP_S.
ctr_stop() {
  local t0 code=0
  t0=$(date +%s.%N)
  "${PODMAN[@]}" stop -t "$(($3 * 2))" "$1" >/dev/null || die "podman stop $1 failed"
  wait "$2" || code=$?
  STOP_S=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  [[ $code == 0 ]] || die "$4 exited $code on podman stop (SIGTERM) after $STOP_S s"
  python3 -c "import sys; sys.exit(0 if $STOP_S < $3 else 1)" || die "$4 took $STOP_S s to stop: over the $3 s the chart leaves after SIGTERM (terminationGracePeriodSeconds less preStop)"
}
# The listen addresses the chart sets (0.0.0.0) move to free ports on 127.0.0.1.
chart_listen() { # chart_listen DIR ROLE: the port of the chart's SLUICE__TELEMETRY__LISTEN
  local v
  v=$(sed -n 's/^SLUICE__TELEMETRY__LISTEN=//p' "$1/$2.env")
  [[ $v == 0.0.0.0:9464 ]] || die "$1: the chart's telemetry listen is '$v', not the image's EXPOSE 9464 on 0.0.0.0"
}
# Only the volumes the chart declares are writable in the running container: the root is
# read-only and every writable mount is a volume of the pod spec or one the runtime adds
# (/proc, /dev, /dev/pts, /dev/mqueue, /dev/shm, as in a pod).
assert_writable() { # assert_writable NAME EXPECTED_PATHS...
  local name=$1 cfg
  shift
  cfg=$("${PODMAN[@]}" inspect --format '{{.OCIConfigPath}}' "$name") || die "podman inspect $name failed"
  python3 - "$cfg" "$@" <<'PY' || die "$name: writable paths besides the pod's volumes (above)"
import json, sys
c = json.load(open(sys.argv[1]))
want = set(sys.argv[2:])
bad = []
if not c["root"].get("readonly"):
    bad.append("the root filesystem is writable")
# What every container (and pod) has writable: the kernel's and the runtime's own filesystems.
# (/sys, cgroup, /etc/hosts, /etc/resolv.conf, /etc/hostname, /run/.containerenv come read-only.)
runtime = {"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/dev/shm"}
rw = {m["destination"] for m in c["mounts"] if "ro" not in m.get("options", [])}
for d in sorted(rw - want - runtime):
    bad.append(f"{d} is mounted writable")
for d in sorted(want - rw):
    bad.append(f"the volume {d} is not writable")
for d in ("/tmp", "/var/tmp", "/run"):
    if any(m["destination"] == d for m in c["mounts"]):
        bad.append(f"{d} is mounted (a tmpfs the pod does not have)")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
chart_listen "$IMG/worker-keda" main
chart_listen "$IMG/ingest" main
WORKER_GRACE=$(( $(cat "$IMG/worker-keda/grace") - $(cat "$IMG/worker-keda/prestop") ))
INGEST_GRACE=$(( $(cat "$IMG/ingest/grace") - $(cat "$IMG/ingest/prestop") ))

# --- a simulator, the chart's table ----------------------------------------------------------------
"$SLUICE" sim --listen 127.0.0.1:0 >"$IMG/sim.log" 2>&1 &
PIDS+=($!)
wait_for "grep -q 'listening on http://127.0.0.1:' '$IMG/sim.log'" 20 || { cat "$IMG/sim.log"; die "sluice sim did not start"; }
IEP=$(grep -o 'http://127.0.0.1:[0-9]*' "$IMG/sim.log" | head -n1)
# The table the worker render names, so its config needs no table override.
ITABLE=$(sed -n 's/^ *table = "\(.*\)"$/\1/p' "$IMG/worker-keda/vol-config/sluice.toml")
[[ -n $ITABLE ]] || die "the worker render's sluice.toml names no table"
IQUEUE=$(python3 deploy/check/live.py setup "$IEP" "$ITABLE" 5000) || die "cannot create the queue and table on the simulator"
SIM_ENV=(AWS_ENDPOINT_URL="$IEP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  SLUICE__SQS__QUEUE_URL="$IQUEUE")

# --- sluice validate, as the init containers run it ------------------------------------------------
mkdir -p "$IMG/ingest/vol-api-keys" "$IMG/ingest/vol-tls"
INGEST_KEY=image-check-$$-key
printf 'image-check %s\n' "$(printf %s "$INGEST_KEY" | sha256sum | cut -d' ' -f1)" >"$IMG/ingest/vol-api-keys/api_keys"
# A private CA and a server certificate for 127.0.0.1 signed by it (what cert-manager would put
# in the Secret); clients trust the CA.
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=sluice-check-ca \
    -keyout "$IMG/ca.key" -out "$IMG/ca.crt" &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
    -keyout "$IMG/ingest/vol-tls/tls.key" -out "$IMG/tls.csr" &&
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' >"$IMG/tls.ext" &&
  openssl x509 -req -in "$IMG/tls.csr" -CA "$IMG/ca.crt" -CAkey "$IMG/ca.key" -CAcreateserial -days 1 \
    -extfile "$IMG/tls.ext" -out "$IMG/ingest/vol-tls/tls.crt"
} >"$IMG/openssl.log" 2>&1 || { cat "$IMG/openssl.log"; die "cannot make the TLS Secret's certificate"; }
fsg=$(cat "$IMG/ingest/fsgroup")
for v in api-keys tls; do
  mode=$(awk -F'\t' -v n="$v" '$1 == n {sub(/^secret:/, "", $2); print $2}' "$IMG/ingest/volumes")
  [[ -n $mode ]] || die "the ingest render has no $v Secret volume"
  chown "0:$fsg" "$IMG/ingest/vol-$v"/*
  chmod "$mode" "$IMG/ingest/vol-$v"/*
done
for r in worker-keda ingest; do
  chart_args "$IMG/$r" init "${SIM_ENV[@]}"
  code=0
  ctr_once "sluice-check-$$-validate-$r" "$IMG/$r/validate.log" 30 || code=$?
  [[ $code == 0 ]] || { cat "$IMG/$r/validate.log"; die "the $r init container (${CTR_ARGS[*]}) exited $code"; }
done
chart_args "$IMG/worker-keda" init "${SIM_ENV[@]}" SLUICE__DYNAMODB__TABLE=
code=0
ctr_once "sluice-check-$$-validate-bad" "$IMG/validate-bad.log" 30 || code=$?
[[ $code == 2 ]] && grep -q 'dynamodb.table' "$IMG/validate-bad.log" \
  || { cat "$IMG/validate-bad.log"; die "the init container accepted a config without a table (exit $code)"; }
# The certificate missing where the chart points (a Secret without that key): the ingest init
# container stops the pod there, naming the setting.
tls_cert=$(sed -n 's/^SLUICE__INGEST__TLS_CERT=//p' "$IMG/ingest/init.env")
[[ -n $tls_cert ]] || die "the ingest init container's environment sets no SLUICE__INGEST__TLS_CERT"
chart_args "$IMG/ingest" init "${SIM_ENV[@]}" SLUICE__INGEST__TLS_CERT="${tls_cert%/*}/missing.crt"
code=0
ctr_once "sluice-check-$$-validate-bad-tls" "$IMG/validate-bad-tls.log" 30 || code=$?
[[ $code == 2 ]] && grep -q 'ingest.tls_cert' "$IMG/validate-bad-tls.log" \
  || { cat "$IMG/validate-bad-tls.log"; die "the ingest init container accepted a TLS Secret without the certificate (exit $code)"; }
note "init containers: 'sluice $(paste -sd' ' "$IMG/worker-keda/init.args")' and the ingest one (which reads the key and TLS Secrets) exit 0 with the chart's mounts, read-only; without a table, or with no certificate where the chart points: exit 2 naming dynamodb.table, ingest.tls_cert"

# --- nothing writable but the volume -----------------------------------------------------------------
for probe in /var/lib/sluice/outside-the-volume /tmp/spool; do
  chart_args "$IMG/ingest" main "${SIM_ENV[@]}" SLUICE__TELEMETRY__LISTEN="127.0.0.1:$(free_port)" \
    SLUICE__PRODUCER__SPOOL_DIR="$probe"
  CTR_ARGS=("${CTR_ARGS[@]/#0.0.0.0:/127.0.0.1:}")
  CTR_ARGS[-1]=127.0.0.1:$(free_port)
  code=0
  ctr_once "sluice-check-$$-probe" "$IMG/probe.log" 30 || code=$?
  [[ $code != 0 && $code != 124 ]] && grep -qi 'read-only file system' "$IMG/probe.log" \
    || { tail -n 5 "$IMG/probe.log"; die "ingest with its spool at $probe (outside the volume) did not fail on a read-only filesystem (exit $code)"; }
done
note "read-only: ingest cannot create a spool at /var/lib/sluice/outside-the-volume or /tmp/spool (EROFS, no tmpfs at /tmp)"

# probes_pass DIR ADDR [-v]: every probe of the render in DIR (startup, liveness, readiness: the
# path the chart gives each) answers 200 on the telemetry address ADDR; -v says which did not.
probes_pass() {
  local kind path ok=0
  while read -r kind path; do
    if ! curl -sf -o /dev/null "http://$2$path"; then
      ok=1
      [[ ${3:-} == -v ]] && echo "  the $kind probe (GET $path) does not answer 200" >&2
    fi
  done <"$1/main.probes"
  return $ok
}
# --- ingest: an SQS outage, a SIGKILL, the replay ------------------------------------------------------
# ctr_ingest NAME LOG: the chart's ingest container on free ports; sets ING_PORT, ING_TEL, ING_PID.
ctr_ingest() {
  ING_PORT=$(free_port)
  ING_TEL=127.0.0.1:$(free_port)
  chart_args "$IMG/ingest" main "${SIM_ENV[@]}" SLUICE__TELEMETRY__LISTEN="$ING_TEL"
  [[ ${CTR_ARGS[-2]} == --listen && ${CTR_ARGS[-1]} == 0.0.0.0:* ]] || die "the chart's ingest args end in '${CTR_ARGS[*]: -2}', not --listen 0.0.0.0:PORT"
  CTR_ARGS[-1]=127.0.0.1:$ING_PORT
  ctr_start "$1" "$2"
  ING_PID=$CTR_PID
  wait_for "probes_pass $IMG/ingest $ING_TEL" 30 || { tail -n 20 "$2"; probes_pass "$IMG/ingest" "$ING_TEL" -v; die "the ingest container did not pass the chart's probes within 30 s"; }
}
metric() { curl -sf "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
sim_faults() { curl -sf -X POST "$IEP/_sim/faults" -H 'Content-Type: application/json' -d "$1" >/dev/null || die "cannot set the simulator's faults"; }
SPOOL_HOST=$IMG/ingest/vol-spool
ctr_ingest "sluice-check-$$-ingest-1" "$IMG/ingest-1.log"
assert_writable "sluice-check-$$-ingest-1" "${WRITABLE[@]}"
[[ ${WRITABLE[*]} == /var/lib/sluice/spool ]] || die "the ingest pod's writable volumes are '${WRITABLE[*]}', not the spool"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$IMG/ca.crt" -X POST "https://127.0.0.1:$ING_PORT/v1/logs" -d '{}')
[[ $code == 401 ]] || die "ingest answered $code to a request without an API key (expected 401)"
sim_faults '{"error_503_rate": 1.0, "only_ops": ["SendMessage", "SendMessageBatch"]}'
INGEST_N=400
"$SLUICE" load --ingest "https://127.0.0.1:$ING_PORT" --cacert "$IMG/ca.crt" --api-key "$INGEST_KEY" \
  --count "$INGEST_N" --rate 0 --retry-for 0 --run-id image-check-ingest --json >"$IMG/ingest-load.json" 2>"$IMG/ingest-load.log" \
  || { cat "$IMG/ingest-load.log"; die "sluice load through the ingest container failed"; }
python3 - "$IMG/ingest-load.json" "$INGEST_N" <<'PY' || die "not every log sent while SQS was down got a 202 (above)"
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
n = int(sys.argv[2])
if not (d["accepted"] == n and d["failed"] == 0 and d["status_503"] == 0 and d["status_429"] == 0 and d["status_other"] == 0):
    print(f"  {d}", file=sys.stderr)
    sys.exit(1)
PY
[[ $(python3 deploy/check/live.py depth "$IEP" "$IQUEUE") == 0 ]] || die "logs reached the queue while SQS refused every send"
spooled=$(metric "$ING_TEL" sluice_producer_spool_messages)
[[ ${spooled:-0} != 0 ]] || die "ingest spooled nothing while SQS was down (sluice_producer_spool_messages ${spooled:-missing})"
[[ -n $(find "$SPOOL_HOST" -type f -size +0 -user 10001 -print -quit) ]] || die "nothing written by uid 10001 on the spool volume"
"${PODMAN[@]}" kill "sluice-check-$$-ingest-1" >/dev/null || die "podman kill failed"
code=0
wait "$ING_PID" || code=$?
[[ $code == 137 ]] || die "the killed ingest container exited $code, not 137 (SIGKILL)"
spool_files=$(find "$SPOOL_HOST" -type f -size +0 | wc -l)
[[ $spool_files -gt 0 ]] || die "the spool volume is empty after the SIGKILL"
sim_faults '{}'
ctr_ingest "sluice-check-$$-ingest-2" "$IMG/ingest-2.log"
replayed() { [[ $(metric "$ING_TEL" sluice_producer_spool_messages) == 0 && $(metric "$ING_TEL" sluice_producer_spooling) == 0 ]] \
  && [[ $(python3 deploy/check/live.py depth "$IEP" "$IQUEUE") -gt 0 ]]; }
wait_for replayed 60 || { tail -n 20 "$IMG/ingest-2.log"; die "the restarted ingest container did not replay the spool into the queue within 60 s"; }
ctr_stop "sluice-check-$$-ingest-2" "$ING_PID" "$INGEST_GRACE" "the ingest container"
note "ingest (HTTPS, the chart's key and TLS Secrets): $INGEST_N logs answered 202 while SQS refused every send, $spooled messages spooled on the volume (by uid 10001); podman kill (137); the next container on the volume passed the chart's probes and replayed them into the queue; podman stop: exit 0 after $STOP_S s (budget after SIGTERM ${INGEST_GRACE} s: grace less preStop)"

# --- worker: the init container, then drain the backlog ------------------------------------------------
LOAD_N=1000
"$SLUICE" load --endpoint "$IEP" --queue-url "$IQUEUE" --count "$LOAD_N" --rate 0 --run-id image-check-load --json \
  >"$IMG/load.json" 2>"$IMG/load.log" || { cat "$IMG/load.log"; die "cannot send the backlog"; }
grep -q "\"accepted\":$LOAD_N," "$IMG/load.json" || { cat "$IMG/load.json"; die "the backlog was not all accepted"; }
EXPECT_ROWS=$((INGEST_N + LOAD_N))
[[ $(python3 deploy/check/live.py rows "$IEP" "$ITABLE") == 0 ]] || die "the table is not empty before the worker starts"
chart_args "$IMG/worker-keda" init "${SIM_ENV[@]}"
ctr_once "sluice-check-$$-worker-init" "$IMG/worker-init.log" 30 || { cat "$IMG/worker-init.log"; die "the worker's init container failed"; }
WK_TEL=127.0.0.1:$(free_port)
# The endpoint by name: resolving localhost exercises the image's nsswitch.conf (files, then dns).
chart_args "$IMG/worker-keda" main "${SIM_ENV[@]}" SLUICE__TELEMETRY__LISTEN="$WK_TEL" \
  AWS_ENDPOINT_URL="${IEP/127.0.0.1/localhost}"
[[ ${#WRITABLE[@]} == 0 ]] || die "the worker pod has writable volumes: ${WRITABLE[*]}"
W_T0=$(date +%s.%N)
ctr_start "sluice-check-$$-worker" "$IMG/worker.log"
WK_PID=$CTR_PID
assert_writable "sluice-check-$$-worker"
wait_for "probes_pass $IMG/worker-keda $WK_TEL" 30 || { tail -n 20 "$IMG/worker.log"; probes_pass "$IMG/worker-keda" "$WK_TEL" -v; die "the worker container did not pass the chart's probes within 30 s"; }
drained() { [[ $(python3 deploy/check/live.py depth "$IEP" "$IQUEUE") == 0 && $(python3 deploy/check/live.py rows "$IEP" "$ITABLE") == "$EXPECT_ROWS" ]]; }
wait_for drained 120 || { tail -n 20 "$IMG/worker.log"; die "the worker container did not drain the queue into $EXPECT_ROWS rows within 120 s (depth $(python3 deploy/check/live.py depth "$IEP" "$IQUEUE"), rows $(python3 deploy/check/live.py rows "$IEP" "$ITABLE"))"; }
DRAIN_S=$(python3 -c "import time; print(f'{time.time() - $W_T0:.1f}')")
ctr_stop "sluice-check-$$-worker" "$WK_PID" "$WORKER_GRACE" "the worker container"
grep -q '"level":"ERROR"' "$IMG/worker.log" && { grep '"level":"ERROR"' "$IMG/worker.log" | head -n 5; die "the worker container logged errors"; }
note "worker (ci/worker-keda render): init container, the chart's startup, liveness and readiness probes, then $EXPECT_ROWS rows ($INGEST_N replayed by ingest + $LOAD_N loaded) in $ITABLE and the queue empty after $DRAIN_S s; podman stop: exit 0 after $STOP_S s (budget after SIGTERM ${WORKER_GRACE} s)"

# --- done ------------------------------------------------------------------------------------------------
mapfile -t left < <("${PODMAN[@]}" ps -a --filter "label=$IMG_LABEL" --format '{{.Names}}')
[[ ${#left[@]} == 0 ]] || { "${PODMAN[@]}" rm -f "${left[@]}" >/dev/null 2>&1 || true; die "containers left behind: ${left[*]}"; }
IMG_S=$(python3 -c "import time; print(f'{time.time() - $IMG_T0:.0f}')")
note "image check: $IMG_N containers run, none left; ${IMG_S} s (image $IMAGE_ID, $IMAGE_MB MB, assembled from $(basename "$SLUICE") by scripts/image.sh)"
