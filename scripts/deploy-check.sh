#!/usr/bin/env bash
# The deploy check: every deploy artifact validated by the real tool, and the dashboards proven
# against a real sluice under a real Prometheus. Fails loudly on the first problem and ends with a
# summary of what it checked.
#
#   Helm chart       helm lint --strict and helm template over deploy/helm/sluice/ci/*-values.yaml,
#                    plus values that must be refused; kubernetes-validate --strict (k8s 1.25,
#                    1.31, 1.37) on every render; KEDA and Prometheus Operator objects against
#                    their models; every rendered sluice.toml through `sluice validate`; the
#                    chart's config schema against config/sluice.example.toml
#   checkov          every render, the IAM and EC2 fleet CloudFormation templates, the Dockerfile:
#                    0 failed (each skip justified below)
#   IAM              JSON policies == CloudFormation policies, no wildcard
#   CloudFormation   cfn-lint on both templates (0 errors, 0 warnings); the EC2 fleet template's
#                    invariants (spot pools, drain hook, backlog-per-instance metric math, target ==
#                    deploy/ec2/README.md's worked example, IMDSv2, user data, IAM scope)
#   systemd          systemd-analyze verify (any output fails) and security ≤ 2.0 for both units;
#                    the spot-drain script against an IMDSv2 stand-in
#   packages         the .deb and .rpm built from the binary under check: lintian and rpmlint
#                    clean (justified overrides), contents and config files asserted, units as
#                    packaged verified, each installed into a scratch root (enabled, not started),
#                    and the install guide's steps run there against sluice sim
#   image            the image the chart runs, assembled from the binary under check
#                    (scripts/image.sh: FROM scratch, no shell) and run with podman as the rendered
#                    chart runs it (read-only root, uid 10001, its mounts): validate as the init
#                    container, ingest spooling through an SQS outage across podman kill, run
#                    draining a backlog, the chart's probes answering; podman stop exits 0 within
#                    the grace period less preStop
#   Prometheus       promtool check rules, promtool test rules, the chart's copy is identical
#   dashboards       JSON round-trips through grafana-foundation-sdk, every query parses
#   live             sluice sim + sluice run (as systemd would run it: NOTIFY_SOCKET, WATCHDOG_USEC)
#                    and, beside it, sluice run in Kafka mode on a noida-db broker
#                    + a real Prometheus scraping it every second with the alert rules loaded;
#                    a load with a fault phase; every dashboard query must name only exported
#                    metrics and return data; every rule evaluates; promtool check metrics on the
#                    scrape; READY/WATCHDOG/STOPPING seen; SIGTERM drains and exits 0; the
#                    overview panels drawn to a PNG
#
# Usage: scripts/deploy-check.sh [--write-docs]
#   --write-docs   write the PNG to docs/dashboard-overview.png (otherwise to
#                  target/deploy-check/dashboard-overview.png)
#   SLUICE_BIN=PATH  check this sluice binary instead of building target/debug/sluice
# Tools install into ${SLUICE_TOOLS_DIR:-.tools} (scripts/install-deploy-tools.sh), once.
# Everything it starts listens on 127.0.0.1 and is stopped when it ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
START_TS=$(date +%s)

WRITE_DOCS=0
for arg in "$@"; do
  case $arg in
    --write-docs) WRITE_DOCS=1 ;;
    *) echo "usage: $0 [--write-docs]" >&2; exit 2 ;;
  esac
done

source scripts/bootstrap.sh

T=${SLUICE_TOOLS_DIR:-$ROOT/.tools}
SUMMARY=()
LATE_FAILURES=()
note() { SUMMARY+=("✓ $*"); printf '  ✓ %s\n' "$*"; }
flag() { SUMMARY+=("✗ $*"); printf '  ✗ %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
die() { printf '\nDEPLOY CHECK FAILED: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-deploy-check.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
  # The image check's containers and mount, when it stopped half-way.
  if [[ -n ${IMG_LABEL:-} && -n ${PODMAN+x} ]]; then
    "${PODMAN[@]}" ps -aq --filter "label=$IMG_LABEL" | xargs -r "${PODMAN[@]}" rm -f >/dev/null 2>&1 || true
    "${PODMAN[@]}" image unmount "$IMAGE_TAG" >/dev/null 2>&1 || true
  fi
  if [[ ${KEEP_WORK:-0} == 1 ]]; then
    echo "work dir kept: $WORK"
  else
    rm -rf -- "$WORK"
  fi
}
trap cleanup EXIT

# Waits up to $2 seconds for command $1 (a string) to succeed.
wait_for() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

section "tools"
bash scripts/install-deploy-tools.sh
PY=$T/deploy-py/bin/python
HELM=$T/helm/helm
KV=$T/deploy-py/bin/kubernetes-validate
YAMLLINT=$T/deploy-py/bin/yamllint
CHECKOV=$T/checkov/bin/checkov
CFNLINT=$T/cfn-lint/bin/cfn-lint
export HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data
if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE=$SLUICE_BIN # a binary built elsewhere (e.g. a release build)
else
  echo "building sluice (cargo build -p sluice)"
  cargo build --locked -q -p sluice
  SLUICE=${CARGO_TARGET_DIR:-$ROOT/target}/debug/sluice
fi
[[ -x $SLUICE ]] || die "no sluice binary at $SLUICE"
SLUICE=$(cd "$(dirname "$SLUICE")" && pwd)/$(basename "$SLUICE")

# --- Helm -------------------------------------------------------------------------------------
section "helm chart (deploy/helm/sluice)"
CHART=deploy/helm/sluice
mkdir -p "$WORK/render"
RENDERS=()
for values in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  out=$("$HELM" lint --strict -f "$values" "$CHART" 2>&1) || { echo "$out"; die "helm lint --strict failed for $values"; }
  if grep -E '^\[(WARNING|ERROR)\]' <<<"$out"; then die "helm lint reported problems for $values"; fi
  "$HELM" template "sluice-$name" "$CHART" -n sluice -f "$values" >"$WORK/render/$name.yaml" \
    || die "helm template failed for $values"
  RENDERS+=("$WORK/render/$name.yaml")
done
out=$("$HELM" lint --strict "$CHART" 2>&1) || { echo "$out"; die "helm lint --strict failed with the default values"; }
note "helm lint --strict: default values and ${#RENDERS[@]} value sets ($(cd "$CHART/ci" && ls -- *-values.yaml | sed 's/-values.yaml//' | paste -sd, -)): 0 warnings"
# Values the chart must refuse, each for its own reason.
refuse() { # refuse WHY EXPECTED_MESSAGE helm-template-args...
  local why=$1 expect=$2 out
  shift 2
  if out=$("$HELM" template t "$CHART" -n sluice "$@" 2>&1); then
    die "helm template accepted values it must refuse ($why)"
  fi
  grep -q -- "$expect" <<<"$out" || { echo "$out"; die "helm refused ($why) without saying '$expect'"; }
}
BASE=(-f "$CHART/ci/worker-keda-values.yaml")
refuse "no region, queue or table" "is required"
refuse "misspelt key (schema additionalProperties: false)" "additional properties 'queueurl' not allowed" "${BASE[@]}" --set config.sqs.queueurl=x
refuse "unknown top-level key" "additional properties 'replicas' not allowed" "${BASE[@]}" --set replicas=3
refuse "grace not above the drain" "must be longer than drainSeconds" "${BASE[@]}" --set drainSeconds=30 --set terminationGracePeriodSeconds=30
refuse "invalid mode" "mode" "${BASE[@]}" --set mode=batch
refuse "config key set by the chart" "additional properties 'listen' not allowed" "${BASE[@]}" --set config.telemetry.listen=0.0.0.0:1
refuse "ingest mode without API keys" "ingest mode needs API keys" --set mode=ingest --set aws.region=eu-west-1 --set config.sqs.queue_url=https://sqs.eu-west-1.amazonaws.com/1/q
refuse "an API key that is not a SHA-256" "sha256" -f "$CHART/ci/ingest-values.yaml" --set 'config.ingest.api_keys[0].name=a' --set 'config.ingest.api_keys[0].sha256=secret'
refuse "Kafka mode without brokers" "config.kafka.brokers is required" -f "$CHART/ci/worker-kafka-values.yaml" --set config.kafka.brokers=
refuse "Kafka mode without topics" "config.kafka.topics is required" -f "$CHART/ci/worker-kafka-values.yaml" --set-json 'config.kafka.topics=[]'
refuse "scale to zero with an activation threshold" "strands up to 10 messages" "${BASE[@]}" --set keda.minReplicaCount=0 --set keda.activationQueueLength=10
refuse "KEDA role and operator identity together" "are exclusive" "${BASE[@]}" --set keda.roleArn=arn:aws:iam::123456789012:role/r --set keda.identityOwner=keda
refuse "the retired ingest.spoolSizeLimit (now ingest.spoolStorage)" "additional properties 'spoolSizeLimit' not allowed" -f "$CHART/ci/ingest-values.yaml" --set ingest.spoolSizeLimit=2Gi
note "helm template refuses 13 bad value sets (missing required, misspelt key, unknown key, grace ≤ drain, bad mode, chart-owned key, ingest without keys, a key that is not a hash, Kafka mode without brokers or topics, scale to zero with an activation threshold, two KEDA identities, the retired spoolSizeLimit)"
"$HELM" package "$CHART" -d "$WORK/pkg" >/dev/null || die "helm package failed"
tar -tzf "$WORK"/pkg/sluice-*.tgz | grep -q '/ci/' && die "the packaged chart contains ci/ (check .helmignore)"
note "helm package: $(basename "$WORK"/pkg/sluice-*.tgz) ($(tar -tzf "$WORK"/pkg/sluice-*.tgz | wc -l) files)"
cmp -s deploy/prometheus/sluice-rules.yaml "$CHART/files/sluice-rules.yaml" \
  || die "$CHART/files/sluice-rules.yaml differs from deploy/prometheus/sluice-rules.yaml: copy it over"

section "kubernetes-validate --strict"
for k in 1.25.0 1.31.0 1.37.0; do
  # Rendered for that version (the chart sets some fields only where the API server has them,
  # e.g. the PDB's unhealthyPodEvictionPolicy from 1.27).
  mkdir -p "$WORK/render-$k"
  AT_K=()
  for values in "$CHART"/ci/*-values.yaml; do
    name=$(basename "$values" -values.yaml)
    "$HELM" template "sluice-$name" "$CHART" -n sluice -f "$values" --kube-version "$k" >"$WORK/render-$k/$name.yaml" \
      || die "helm template --kube-version $k failed for $values"
    AT_K+=("$WORK/render-$k/$name.yaml")
  done
  out=$("$KV" --strict -k "$k" "${AT_K[@]}" 2>&1) || { echo "$out"; die "kubernetes-validate failed for k8s $k"; }
  # Only CRDs may lack a schema; anything else not INFO is a failure.
  bad=$(grep -v '^INFO ' <<<"$out" | grep -Ev "Couldn't find schema for kind (ScaledObject|TriggerAuthentication|ServiceMonitor|PrometheusRule) " || true)
  [[ -z $bad ]] || { echo "$bad"; die "kubernetes-validate reported problems for k8s $k"; }
  passed=$(grep -c '^INFO .* passed' <<<"$out" || true)
done
note "kubernetes-validate --strict on ${#RENDERS[@]} renders × k8s 1.25/1.31/1.37: $passed resources pass each (CRDs go to the model check)"

section "KEDA and Prometheus Operator objects, rendered configs, values schema"
out=$("$PY" deploy/check/manifests.py crds "${RENDERS[@]}") || die "CRD model check failed"
echo "$out"; note "${out#crds: }"
for rules in "$WORK"/render/*.rules; do
  promtool check rules "$rules" >/dev/null || die "the chart's PrometheusRule does not pass promtool check rules"
done
mkdir -p "$WORK/configs"
out=$("$PY" deploy/check/manifests.py configs "$SLUICE" "$WORK/configs" "${RENDERS[@]}") || die "rendered config check failed"
echo "$out"; note "$(tail -n1 <<<"$out" | sed 's/^configs: //')"
out=$("$PY" deploy/check/manifests.py schema-drift "$CHART/values.schema.json" config/sluice.example.toml) || die "values schema check failed"
echo "$out"; note "${out#schema: }"

section "IAM policies"
out=$("$PY" deploy/check/manifests.py iam deploy/iam) || die "IAM check failed"
echo "$out"; while read -r line; do note "${line#iam: }"; done <<<"$out"

section "CloudFormation (cfn-lint)"
# Both templates against the resource schemas bundled in the pinned cfn-lint: property names and
# types, allowed values, Ref/GetAtt/Sub targets. Any error or warning fails (no rule is ignored);
# informational findings are off, as by default.
CFN_TEMPLATES=(deploy/iam/sluice-iam.cfn.yaml deploy/ec2/sluice-fleet.cfn.yaml)
out=$("$CFNLINT" -- "${CFN_TEMPLATES[@]}" 2>&1) || { echo "$out"; die "cfn-lint found problems"; }
[[ -z $out ]] || { echo "$out"; die "cfn-lint printed findings"; }
note "cfn-lint $("$CFNLINT" --version | awk '{print $2}'): ${#CFN_TEMPLATES[@]} templates (IAM, EC2 fleet): 0 errors, 0 warnings"
out=$("$PY" deploy/check/manifests.py fleet deploy/ec2/sluice-fleet.cfn.yaml deploy/ec2/README.md) \
  || die "EC2 fleet template check failed"
echo "$out"; note "${out#fleet: }"

section "checkov"
# checkov_run NAME FRAMEWORK FILE [--skip-check IDS]: requires 0 failed and at least one resource.
CK_PASSED=0 CK_FAILED=0 CK_SKIPPED=0
checkov_run() {
  local name=$1 framework=$2 file=$3 counts passed failed skipped resources
  shift 3
  "$CHECKOV" -f "$file" --framework "$framework" --skip-download --quiet -o json "$@" \
    >"$WORK/checkov.json" 2>"$WORK/checkov.err" || true
  counts=$(python3 - "$WORK/checkov.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d = d[0] if isinstance(d, list) else d
s = d.get("summary", d)
for c in d.get("results", {}).get("failed_checks", []):
    print(f"  FAILED {c['check_id']} {c['check_name']} on {c['resource']}", file=sys.stderr)
print(s["passed"], s["failed"], s["skipped"], s["resource_count"])
PY
) || { cat "$WORK/checkov.err"; die "cannot read checkov's report for $file"; }
  read -r passed failed skipped resources <<<"$counts"
  [[ $resources -gt 0 ]] || die "checkov found nothing to check in $file (did it parse?)"
  [[ $failed -eq 0 ]] || die "checkov: $failed failed checks in $name"
  CK_PASSED=$((CK_PASSED + passed)) CK_FAILED=$((CK_FAILED + failed)) CK_SKIPPED=$((CK_SKIPPED + skipped))
  printf '  checkov %-18s %-15s passed %3d, failed %d, skipped %d\n' "$name" "$framework" "$passed" "$failed" "$skipped"
}
for render in "${RENDERS[@]}"; do
  name=$(basename "$render" .yaml)
  skips=()
  case $name in
    # This value set turns the NetworkPolicy off on purpose (clusters whose CNI does not enforce
    # NetworkPolicy); every other render has one, and passes CKV2_K8S_6.
    worker-hpa) skips=(--skip-check CKV2_K8S_6) ;;
    # This value set exercises the image-by-tag path on purpose; production values pin
    # image.digest, and every other render does and passes CKV_K8S_43.
    worker-static) skips=(--skip-check CKV_K8S_43) ;;
  esac
  # In the chart itself, the helm test pod carries checkov.io/skip annotations, each with its
  # reason: CKV_K8S_8/CKV_K8S_9 (a one-shot test pod has nothing to probe) and, while
  # test.image.digest is empty, CKV_K8S_43 (a public busybox tag).
  checkov_run "$name" kubernetes "$render" "${skips[@]+"${skips[@]}"}"
done
checkov_run iam cloudformation deploy/iam/sluice-iam.cfn.yaml
checkov_run ec2-fleet cloudformation deploy/ec2/sluice-fleet.cfn.yaml
checkov_run docker dockerfile deploy/docker/Dockerfile
note "checkov: ${#RENDERS[@]} renders + IAM and EC2 fleet CloudFormation + Dockerfile: $CK_PASSED passed, $CK_FAILED failed, $CK_SKIPPED skipped by annotation (helm test pod: CKV_K8S_8/9 probes, CKV_K8S_43 busybox tag); excluded: CKV2_K8S_6 on the no-NetworkPolicy render, CKV_K8S_43 on the by-tag render"

section "yamllint"
"$YAMLLINT" -s -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}}}' \
  deploy/prometheus/*.yaml "$CHART/values.yaml" "$CHART/Chart.yaml" "$CHART"/ci/*.yaml deploy/iam/sluice-iam.cfn.yaml \
  deploy/ec2/sluice-fleet.cfn.yaml || die "yamllint found problems"
note "yamllint: rules, rule tests, chart values and CloudFormation are clean"

# --- systemd ----------------------------------------------------------------------------------
section "systemd units (deploy/systemd)"
mkdir -p "$WORK/systemd"
# verify needs ExecStart to exist: point temporary copies at the built binary and the script.
sed "s#/usr/bin/sluice#$SLUICE#g" deploy/systemd/sluice.service >"$WORK/systemd/sluice.service"
sed "s#/usr/libexec/sluice/sluice-spot-drain.sh#$ROOT/deploy/systemd/sluice-spot-drain.sh#g" \
  deploy/systemd/sluice-spot-drain.service >"$WORK/systemd/sluice-spot-drain.service"
out=$(cd "$WORK/systemd" && systemd-analyze verify --man=no ./sluice.service ./sluice-spot-drain.service 2>&1) || true
# `verify` exits 0 even on errors: any output at all is a failure.
[[ -z $out ]] || { echo "$out"; die "systemd-analyze verify reported problems"; }
for unit in sluice sluice-spot-drain; do
  out=$(cd "$WORK/systemd" && systemd-analyze security --offline=yes --threshold=20 "./$unit.service" 2>&1) \
    || { echo "$out" | tail -n 30; die "systemd-analyze security: $unit.service scores above 2.0"; }
  score=$(grep -o 'Overall exposure level for [^:]*: [0-9.]*' <<<"$out" | awk '{print $NF}')
  eval "SCORE_${unit//-/_}=$score"
done
note "systemd-analyze verify: no output; security: sluice.service $SCORE_sluice, sluice-spot-drain.service $SCORE_sluice_spot_drain (threshold 2.0)"
grep -q '^Type=notify' deploy/systemd/sluice.service || die "sluice.service must be Type=notify"
grep -q '^ExecStartPre=/usr/bin/sluice validate' deploy/systemd/sluice.service || die "sluice.service must validate before start"
sh -n deploy/systemd/sluice-spot-drain.sh || die "sluice-spot-drain.sh has a syntax error"
# The spot watcher against an IMDSv2 stand-in that posts a notice after 2 s, with a stand-in
# systemctl that records what it was asked.
mkdir -p "$WORK/spot/bin"
printf '#!/bin/sh\necho "$*" >>%q\n' "$WORK/spot/systemctl.log" >"$WORK/spot/bin/systemctl"
chmod +x "$WORK/spot/bin/systemctl"
python3 deploy/check/live.py fake-imds "$WORK/spot/port" 2 &
PIDS+=($!)
wait_for "test -s '$WORK/spot/port'" 10 || die "the IMDS stand-in did not start"
spot_start=$(date +%s.%N)
PATH="$WORK/spot/bin:$PATH" AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:$(cat "$WORK/spot/port")" \
  SLUICE_SPOT_POLL_SECONDS=1 timeout 20 sh deploy/systemd/sluice-spot-drain.sh >"$WORK/spot/out.log" 2>&1 \
  || { cat "$WORK/spot/out.log"; die "sluice-spot-drain.sh did not exit 0 on a notice"; }
spot_s=$(python3 -c "import time; print(f'{time.time() - $spot_start:.1f}')")
[[ $(cat "$WORK/spot/systemctl.log") == "stop --no-block sluice.service" ]] \
  || die "sluice-spot-drain.sh ran 'systemctl $(cat "$WORK/spot/systemctl.log")'"
note "sluice-spot-drain.sh: notice posted at 2 s → 'systemctl stop --no-block sluice.service' after ${spot_s} s, exit 0"

# --- packages -----------------------------------------------------------------------------------
section "packages (.deb and .rpm, scripts/package.sh)"
source deploy/check/packages.sh

# --- the image the chart runs -------------------------------------------------------------------
section "image (scripts/image.sh, run with podman as the chart runs it)"
source deploy/check/image.sh

# --- Prometheus rules -------------------------------------------------------------------------
section "alert rules (deploy/prometheus)"
out=$(promtool check rules deploy/prometheus/sluice-rules.yaml 2>&1) || { echo "$out"; die "promtool check rules failed"; }
nrules=$(grep -o 'SUCCESS: [0-9]* rules' <<<"$out")
out=$(cd deploy/prometheus && promtool test rules sluice-rules.test.yaml 2>&1) || { echo "$out"; die "promtool test rules failed"; }
ntests=$(grep -c '^  - name:' deploy/prometheus/sluice-rules.test.yaml)
nalerts=$(grep -c '^      - alert:' deploy/prometheus/sluice-rules.yaml)
for alert in $(grep -o '^      - alert: [A-Za-z]*' deploy/prometheus/sluice-rules.yaml | awk '{print $3}'); do
  grep -q "alertname: $alert\$" deploy/prometheus/sluice-rules.test.yaml || die "alert $alert has no promtool unit test"
done
note "promtool check rules: $nrules; promtool test rules: $ntests test groups pass, each of the $nalerts alerts tested"

# --- dashboards (static) ----------------------------------------------------------------------
section "dashboards (static)"
# The Kafka dashboard's queries are checked against the Kafka-mode sluice, the others against the
# SQS one.
dash_sqs=() dash_kafka=() dash_ingest=()
for d in dashboards/*.json; do
  if [[ $d == *kafka* ]]; then dash_kafka+=("$d")
  elif [[ $d == *ingest* ]]; then dash_ingest+=("$d")
  else dash_sqs+=("$d"); fi
done
[[ ${#dash_ingest[@]} -gt 0 ]] || die "no ingest dashboard in dashboards/"
[[ ${#dash_kafka[@]} -gt 0 ]] || die "no Kafka dashboard in dashboards/"
out=$("$PY" deploy/check/dashboards.py static "$WORK/queries.json" "${dash_sqs[@]}") || die "dashboard check failed"
echo "$out"; note "$(tail -n1 <<<"$out" | sed 's/^dashboards: //'); JSON round-trips through grafana-foundation-sdk"
out=$("$PY" deploy/check/dashboards.py static "$WORK/queries-kafka.json" "${dash_kafka[@]}") || die "dashboard check failed"
echo "$out"; note "$(tail -n1 <<<"$out" | sed 's/^dashboards: //'); JSON round-trips through grafana-foundation-sdk"
out=$("$PY" deploy/check/dashboards.py static "$WORK/queries-ingest.json" "${dash_ingest[@]}") || die "dashboard check failed"
echo "$out"; note "$(tail -n1 <<<"$out" | sed 's/^dashboards: //'); JSON round-trips through grafana-foundation-sdk"

# --- live: sluice sim + sluice run + Prometheus -----------------------------------------------
section "live run: sluice sim + sluice run + Prometheus"
mkdir -p "$WORK/live"
# Starts `sluice sim` (extra arguments passed on), logging to LOG; prints its endpoint.
start_sim() { # start_sim LOG [sim args...]
  local log=$1
  shift
  "$SLUICE" sim --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
  PIDS+=($!)
  wait_for "grep -q 'listening on http://127.0.0.1:' '$log'" 20 || { cat "$log" >&2; die "sluice sim did not start ($log)"; }
  grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -n1
}
# No burst credit, so lowering the table's capacity under sluice throttles at once.
start_sim "$WORK/live/sim.log" --burst-seconds 0 >"$WORK/live/endpoint"
EP=$(cat "$WORK/live/endpoint")
NAME=sluice-deploy-check
QUEUE=$(python3 deploy/check/live.py setup "$EP" "$NAME" 400) || die "cannot create the queue and table on the simulator"
echo "  simulator $EP: queue $QUEUE (DLQ after 2 receives), table $NAME at 400 WCU/s"

# sluice run, configured only through the environment, as the systemd unit's env file would.
SLUICE_ENV=(
  AWS_ENDPOINT_URL="$EP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  SLUICE__SQS__QUEUE_URL="$QUEUE" SLUICE__DYNAMODB__TABLE="$NAME"
  SLUICE__RATE__WCU_PER_SECOND=300 SLUICE__SQS__POISON_NACK_DELAY=0s
  # A fleet of one in membership mode (the chart's default for several pods): its lease table
  # is created on the simulator, and the fleet dashboard's membership panels get data.
  SLUICE__RATE__MODE=membership SLUICE__RATE__MEMBERSHIP__TABLE=sluice-members
  SLUICE__WORKER__SHUTDOWN_GRACE=10s
  SLUICE__TELEMETRY__LISTEN=127.0.0.1:0 SLUICE__TELEMETRY__LOG_FORMAT=json
)
# Compressed items and the write cache, as an operator turns them on: a dictionary trained from
# sample logs and stored in the table, its id in the config (the dashboards chart what they save).
python3 deploy/check/live.py samples 600 >"$WORK/live/samples.ndjson"
DICT=$(env "${SLUICE_ENV[@]}" "$SLUICE" dict train --from "$WORK/live/samples.ndjson" --json) \
  || die "sluice dict train failed: $DICT"
DICT_ID=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["dictionary_id"])' "$DICT")
echo "  sluice dict train: dictionary $DICT_ID stored in $NAME"
SLUICE_ENV+=(SLUICE__SCHEMA__COMPRESSION=zstd SLUICE__SCHEMA__DICTIONARY_ID="$DICT_ID" SLUICE__CACHE__ENABLED=true)
env "${SLUICE_ENV[@]}" "$SLUICE" validate >/dev/null || die "sluice validate rejects the live run's config"
python3 deploy/check/live.py notify-sink "$WORK/live/notify.sock" "$WORK/live/notify.log" &
PIDS+=($!)
wait_for "test -S '$WORK/live/notify.sock'" 10 || die "the notify socket did not appear"
env "${SLUICE_ENV[@]}" NOTIFY_SOCKET="$WORK/live/notify.sock" WATCHDOG_USEC=2000000 \
  "$SLUICE" run >"$WORK/live/sluice.log" 2>&1 &
SLUICE_PID=$!
PIDS+=($SLUICE_PID)
wait_for "grep -q 'READY=1' '$WORK/live/notify.log'" 60 || { tail -n 20 "$WORK/live/sluice.log"; die "sluice run never sent READY=1"; }
# The telemetry address a `sluice run` logged at start (LOG_FORMAT=json).
telemetry_of() { grep -o '"telemetry":"127.0.0.1:[0-9]*"' "$1" | head -n1 | cut -d'"' -f4; }
TELEMETRY=$(telemetry_of "$WORK/live/sluice.log")
[[ -n $TELEMETRY ]] || { tail -n 20 "$WORK/live/sluice.log"; die "cannot find sluice's telemetry address in its log"; }
curl -sf "http://$TELEMETRY/readyz" >/dev/null || die "/readyz is not 200 after READY=1"
echo "  sluice run: READY=1, telemetry on $TELEMETRY"

# Kafka mode beside it: a noida-db broker, a topic of 4 partitions and a DLQ topic, and a second
# sluice run consuming them into its own table on the same simulator.
bash scripts/install-test-servers.sh noida-db >/dev/null || die "cannot install noida-db"
mkdir -p "$WORK/kafka"
KAFKA_PORT=$(free_port)
"$T/noida-db/noida_db/noida-db" start --only kafka --kafka-port "$KAFKA_PORT" --data-dir "$WORK/kafka/data" \
  >"$WORK/kafka/broker.log" 2>&1 &
PIDS+=($!)
wait_for "(exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT)" 20 || { cat "$WORK/kafka/broker.log"; die "noida-db did not start"; }
KNAME=sluice-deploy-check-kafka
python3 deploy/check/live.py setup "$EP" "$KNAME" 1000 >/dev/null || die "cannot create the Kafka run's table"
KAFKA_ENV=(
  AWS_ENDPOINT_URL="$EP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  SLUICE__KAFKA__ENABLED=true SLUICE__KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
  SLUICE__KAFKA__TOPICS=request-logs SLUICE__KAFKA__DLQ_TOPIC=request-logs-dlq
  SLUICE__DYNAMODB__TABLE="$KNAME" SLUICE__RATE__WCU_PER_SECOND=600
  SLUICE__TELEMETRY__LISTEN=127.0.0.1:0 SLUICE__TELEMETRY__LOG_FORMAT=json
)
env "${KAFKA_ENV[@]}" "$SLUICE" kafka create-topics --partitions 4 >"$WORK/kafka/topics.log" 2>&1 \
  || { cat "$WORK/kafka/topics.log"; die "sluice kafka create-topics failed"; }
env "${KAFKA_ENV[@]}" "$SLUICE" validate >/dev/null || die "sluice validate rejects the Kafka run's config"
env "${KAFKA_ENV[@]}" "$SLUICE" run >"$WORK/kafka/sluice.log" 2>&1 &
KAFKA_PID=$!
PIDS+=($KAFKA_PID)
wait_for "grep -q 'partitions assigned' '$WORK/kafka/sluice.log'" 60 || { tail -n 20 "$WORK/kafka/sluice.log"; die "the Kafka-mode sluice was never assigned its partitions"; }
KAFKA_TELEMETRY=$(telemetry_of "$WORK/kafka/sluice.log")
[[ -n $KAFKA_TELEMETRY ]] || die "cannot find the Kafka-mode sluice's telemetry address in its log"
echo "  sluice run (Kafka mode): noida-db on 127.0.0.1:$KAFKA_PORT, topic request-logs (4 partitions), telemetry on $KAFKA_TELEMETRY"

# Ingest beside them, on a simulator of its own so its SQS can go down without touching the
# workers': sluice ingest fed by sluice load; the ingest dashboard is checked against it.
mkdir -p "$WORK/ingest"
start_sim "$WORK/ingest/sim.log" >"$WORK/ingest/endpoint"
IEP=$(cat "$WORK/ingest/endpoint")
IQUEUE=$(python3 deploy/check/live.py setup "$IEP" sluice-deploy-check-ingest 100) || die "cannot create the ingest run's queue"
INGEST_KEY=deploy-check-key
INGEST_PORT=$(free_port)
cat >"$WORK/ingest/ingest.toml" <<TOML
[sqs]
queue_url = "$IQUEUE"
[ingest]
api_keys = [{ name = "check", sha256 = "$(printf %s "$INGEST_KEY" | sha256sum | cut -d' ' -f1)" }]
[producer]
spool_dir = "$WORK/ingest/spool"
retry_base = "100ms"
retry_max = "1s"
TOML
env AWS_ENDPOINT_URL="$IEP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  SLUICE__TELEMETRY__LISTEN=127.0.0.1:0 SLUICE__TELEMETRY__LOG_FORMAT=json \
  "$SLUICE" ingest --config "$WORK/ingest/ingest.toml" --listen "127.0.0.1:$INGEST_PORT" >"$WORK/ingest/ingest.log" 2>&1 &
INGEST_PID=$!
PIDS+=($INGEST_PID)
wait_for "grep -q 'sluice ingest started' '$WORK/ingest/ingest.log'" 30 || { tail -n 20 "$WORK/ingest/ingest.log"; die "sluice ingest did not start"; }
INGEST_TELEMETRY=$(telemetry_of "$WORK/ingest/ingest.log")
[[ -n $INGEST_TELEMETRY ]] || die "cannot find sluice ingest's telemetry address in its log"
echo "  sluice ingest on 127.0.0.1:$INGEST_PORT (queue on its own simulator $IEP), telemetry on $INGEST_TELEMETRY"

PROM_PORT=$(free_port)
mkdir -p "$WORK/prom"
cat >"$WORK/prom/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/sluice-rules.yaml
scrape_configs:
  - job_name: sluice
    static_configs:
      - targets: ["$TELEMETRY"]
  - job_name: sluice-kafka
    static_configs:
      - targets: ["$KAFKA_TELEMETRY"]
  - job_name: sluice-ingest
    static_configs:
      - targets: ["$INGEST_TELEMETRY"]
EOF
prometheus --config.file="$WORK/prom/prometheus.yml" --storage.tsdb.path="$WORK/prom/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prom/prometheus.log" 2>&1 &
PIDS+=($!)
PROM=http://127.0.0.1:$PROM_PORT
wait_for "curl -sf $PROM/-/ready" 30 || { cat "$WORK/prom/prometheus.log"; die "Prometheus did not start"; }
wait_for "curl -sf '$PROM/api/v1/query?query=up' | grep -q '\"value\":\\[[0-9.]*,\"1\"\\]'" 30 \
  || die "Prometheus does not scrape sluice"
echo "  Prometheus $(prometheus --version 2>&1 | head -n1 | awk '{print $3}') on $PROM, scraping every 1 s, rules loaded"

RUN_START=$(date +%s)
echo "  load: 30 s at 350 msg/s into a 300 WCU/s budget; from 2 s to 10 s most receives, deletes,"
echo "        visibility changes and writes fail or throttle and poison arrives; from 14 s to 20 s the"
echo "        table drops to 80 WCU/s"
# Meanwhile into Kafka: 6,000 logs at 300/s, then 3 over 400 KB (poison: to the DLQ topic).
(
  env "${KAFKA_ENV[@]}" SLUICE__PRODUCER__KAFKA_TOPIC=request-logs \
    "$SLUICE" load --count 6000 --rate 300 --size 300-1500 --run-id kafka-check &&
  env "${KAFKA_ENV[@]}" SLUICE__PRODUCER__KAFKA_TOPIC=request-logs SLUICE__PRODUCER__MAX_MESSAGE_BYTES=1048576 \
    "$SLUICE" load --count 3 --rate 0 --size 420000 --run-id kafka-check-poison
) >"$WORK/kafka/load.log" 2>&1 &
KAFKA_LOAD_PID=$!
# Meanwhile into ingest: 6,000 logs at 200/s over HTTP, with its SQS down from 5 s to 12 s (it
# answers 202 and spools, then replays), and a few requests without a key (401).
(
  python3 deploy/check/live.py sqs-outage "$IEP" 5 12 &
  "$SLUICE" load --ingest "http://127.0.0.1:$INGEST_PORT" --api-key "$INGEST_KEY" --count 6000 --rate 200 \
    --size 300-1500 --run-id ingest-check --json >"$WORK/ingest/load.json" &
  for _ in 1 2 3; do curl -s -o /dev/null -X POST "http://127.0.0.1:$INGEST_PORT/v1/logs" -d '{}' || true; done
  wait
) >"$WORK/ingest/load.log" 2>&1 &
INGEST_LOAD_PID=$!
python3 deploy/check/live.py load "$EP" "$QUEUE" "$NAME" 30 350 2 10 14 20 >"$WORK/live/load.json" \
  || die "the load generator failed"
# Drained: the source queue empty (visible and in flight), by the simulator's own count.
drained() {
  curl -sf "$EP/_sim/queues" | python3 -c '
import json,sys
q=json.load(sys.stdin)
q=q.get("queues",q)
items=q.items() if isinstance(q,dict) else [(x.get("name"),x) for x in q]
for name,c in items:
    if name=="'"$NAME"'":
        sys.exit(0 if c.get("visible",1)==0 and c.get("in_flight",c.get("not_visible",1))==0 else 1)
sys.exit(1)'
}
wait_for drained 120 || { curl -s "$EP/_sim/queues"; die "sluice did not drain the queue within 120 s"; }
DRAINED_S=$(($(date +%s) - RUN_START))
wait "$KAFKA_LOAD_PID" || { cat "$WORK/kafka/load.log"; die "the Kafka load failed"; }
kafka_drained() {
  env "${KAFKA_ENV[@]}" "$SLUICE" kafka lag --json | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
sys.exit(0 if rows and all(r["lag"] == 0 for r in rows) else 1)'
}
wait_for kafka_drained 120 || { env "${KAFKA_ENV[@]}" "$SLUICE" kafka lag; die "the Kafka-mode sluice did not drain its topic within 120 s"; }
wait "$INGEST_LOAD_PID" || { cat "$WORK/ingest/load.log"; die "the ingest load failed"; }
ingest_settled() { curl -sf "http://$INGEST_TELEMETRY/metrics" | awk '/^sluice_producer_spool_messages /{n=$2} /^sluice_producer_spooling /{s=$2} END {exit !(n == 0 && s == 0)}'; }
wait_for ingest_settled 60 || die "sluice ingest did not replay its spool within 60 s of SQS coming back"
# Let the 15 s queue poller and a few scrapes see the drained queue and the DLQ.
sleep 16
RUN_END=$(date +%s)
curl -sf "http://$TELEMETRY/metrics" >"$WORK/live/metrics.txt" || die "cannot scrape sluice's /metrics"
curl -sf "http://$KAFKA_TELEMETRY/metrics" >"$WORK/kafka/metrics.txt" || die "cannot scrape the Kafka-mode sluice's /metrics"
curl -sf "http://$INGEST_TELEMETRY/metrics" >"$WORK/ingest/metrics.txt" || die "cannot scrape sluice ingest's /metrics"
nseries=$(cat "$WORK/live/metrics.txt" "$WORK/kafka/metrics.txt" "$WORK/ingest/metrics.txt" | grep -cv '^#')
out=$({ promtool check metrics <"$WORK/live/metrics.txt"; promtool check metrics <"$WORK/kafka/metrics.txt"; promtool check metrics <"$WORK/ingest/metrics.txt"; } 2>&1) || true
if [[ -n $out ]]; then
  # A lint problem (a metric without help text, say) does not stop the rest of the check; it
  # fails it at the end.
  echo "$out" | sed 's/^/  promtool check metrics: /'
  LATE_FAILURES+=("promtool check metrics: $(wc -l <<<"$out") problems in sluice's /metrics: $(paste -sd';' <<<"$out")")
  metrics_lint="$(wc -l <<<"$out") PROBLEMS (see the end)"
else
  metrics_lint="clean"
fi
sent=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("%d messages sent (%d poison) in %s s" % (d["sent"], d["poison"], d["seconds"]))' "$WORK/live/load.json")
if [[ $metrics_lint == clean ]]; then
  note "live: $sent, drained after ${DRAINED_S} s; promtool check metrics on the scrape ($nseries series): clean"
else
  flag "live: $sent, drained after ${DRAINED_S} s; promtool check metrics on the scrape ($nseries series): $metrics_lint"
fi

# Every rule of deploy/prometheus evaluated against the live data without error.
curl -sf "$PROM/api/v1/rules" >"$WORK/live/rules.json" || die "cannot read Prometheus' rules"
python3 - "$WORK/live/rules.json" >"$WORK/live/rules.txt" <<'PY' || die "$(cat "$WORK/live/rules.txt")"
import json, sys
groups = json.load(open(sys.argv[1]))["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
bad = ["%s: %s" % (r.get("name"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
if bad:
    print("rules that do not evaluate: " + "; ".join(bad))
    sys.exit(1)
active = sorted({r["name"] for r in rules if r.get("type") == "alerting" and r.get("state") != "inactive"})
print("%d rules evaluate cleanly on the live data (pending or firing: %s)" % (len(rules), ", ".join(active) or "none"))
PY
note "Prometheus: $(cat "$WORK/live/rules.txt")"

out=$("$PY" deploy/check/dashboards.py live "$WORK/queries.json" "$PROM" "$WORK/live/metrics.txt" "$RUN_START" "$RUN_END" sluice) \
  || die "the dashboards do not hold against the live run"
echo "$out"; while read -r line; do note "${line#dashboards: }"; done <<<"$out"
out=$("$PY" deploy/check/dashboards.py live "$WORK/queries-kafka.json" "$PROM" "$WORK/kafka/metrics.txt" "$RUN_START" "$RUN_END" sluice-kafka) \
  || die "the Kafka dashboard does not hold against the Kafka-mode run"
echo "$out"; while read -r line; do note "${line#dashboards: } (Kafka mode)"; done <<<"$out"
out=$("$PY" deploy/check/dashboards.py live "$WORK/queries-ingest.json" "$PROM" "$WORK/ingest/metrics.txt" "$RUN_START" "$RUN_END" sluice-ingest sluice_ingest_requests_total) \
  || die "the ingest dashboard does not hold against the ingest run"
echo "$out"; while read -r line; do note "${line#dashboards: } (ingest)"; done <<<"$out"
out=$(python3 deploy/check/dashboards.py coverage README.md "$WORK/live/metrics.txt" "$WORK/kafka/metrics.txt" \
  "$WORK/ingest/metrics.txt" -- dashboards/*.json) || die "a metric is neither charted nor named in the README as not charted"
note "${out#dashboards: }"
i_accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted"])' "$WORK/ingest/load.json")
i_spooled=$(awk '/^sluice_producer_spooled_messages_total /{print int($2)}' "$WORK/ingest/metrics.txt")
i_queued=$(curl -sf "$IEP/_sim/queues" | python3 -c '
import json,sys
q=json.load(sys.stdin)
q=q.get("queues",q)
items=q.items() if isinstance(q,dict) else [(x.get("name"),x) for x in q]
print(sum(c.get("visible",0) for n,c in items if n=="sluice-deploy-check-ingest"))')
[[ $i_accepted -eq 6000 && ${i_spooled:-0} -gt 0 && ${i_queued:-0} -gt 0 ]] \
  || die "ingest: $i_accepted of 6000 logs accepted, ${i_spooled:-0} messages spooled (want > 0: the outage), ${i_queued:-0} messages in its queue"
note "live, ingest: 6000 logs accepted over HTTP through a 7 s SQS outage ($i_spooled messages spooled and replayed, the spool empty after), $i_queued messages in its queue"
k_written=$(awk '/^sluice_logs_written_total /{print int($2)}' "$WORK/kafka/metrics.txt")
k_dlq=$(awk '/^sluice_dead_lettered_total/{n += $2} END {print int(n)}' "$WORK/kafka/metrics.txt")
[[ ${k_written:-0} -ge 6000 && $k_dlq -eq 3 ]] \
  || die "Kafka mode: $k_written logs written (want 6000) and $k_dlq dead-lettered (want 3)"
note "live, Kafka mode: 6000 logs through 4 partitions written, lag 0, the 3 poison records in the DLQ topic"

PNG=$WORK/dashboard-overview.png
out=$("$PY" deploy/check/dashboards.py plot dashboards/sluice-overview.json "$PROM" "$RUN_START" "$RUN_END" sluice "$PNG" \
  "$(printf '%s\n%s' "sluice / overview: the panels of dashboards/sluice-overview.json from a live run of scripts/deploy-check.sh" \
    "sluice run on sluice-sim, scraped every second; 350 msg/s for 30 s into a 300 WCU/s budget (backlog builds, then drains)")" \
  "2:10:faults: most receives, deletes, nacks and writes fail; poison" "14:20:table capacity cut to 80 WCU/s") \
  || die "cannot draw the overview PNG"
echo "$out"
if [[ $WRITE_DOCS == 1 ]]; then
  cp "$PNG" docs/dashboard-overview.png
  note "PNG of the overview panels written to docs/dashboard-overview.png"
else
  OUT_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/deploy-check
  mkdir -p "$OUT_DIR"
  cp "$PNG" "$OUT_DIR/dashboard-overview.png"
  note "PNG of the overview panels drawn to $OUT_DIR/dashboard-overview.png (--write-docs updates docs/)"
fi
[[ -s docs/dashboard-overview.png ]] || die "docs/dashboard-overview.png is missing (run with --write-docs)"

# systemd's view of the run, then the drain: SIGTERM → STOPPING=1 → exit 0 within the grace.
grep -q 'STOPPING=1' "$WORK/live/notify.log" && die "STOPPING=1 before any signal"
stop_start=$(date +%s.%N)
kill -TERM "$SLUICE_PID"
rc=0
wait "$SLUICE_PID" || rc=$?
stop_s=$(python3 -c "import time; print(f'{time.time() - $stop_start:.1f}')")
[[ $rc -eq 0 ]] || { tail -n 20 "$WORK/live/sluice.log"; die "sluice run exited $rc on SIGTERM (want 0)"; }
wait_for "grep -q 'STOPPING=1' '$WORK/live/notify.log'" 5 || die "sluice never sent STOPPING=1"
pings=$(grep -c 'WATCHDOG=1' "$WORK/live/notify.log" || true)
run_s=$(python3 -c "import json; l=[json.loads(x) for x in open('$WORK/live/notify.log')]; r=[e['t'] for e in l if 'READY=1' in e['msg']][0]; s=[e['t'] for e in l if 'STOPPING=1' in e['msg']][0]; print(f'{s-r:.0f}')")
# WATCHDOG_USEC=2 s: a ping every second.
[[ $pings -ge $((run_s * 2 / 3)) ]] || die "only $pings WATCHDOG=1 pings in ${run_s} s (want one a second)"
note "sd_notify: READY=1, $pings WATCHDOG=1 pings in ${run_s} s (WATCHDOG_USEC=2 s), STOPPING=1 on SIGTERM; exit 0 after ${stop_s} s"

ELAPSED=$(($(date +%s) - START_TS))
printf '\n== deploy check summary (%d s)\n' "$ELAPSED"
for line in "${SUMMARY[@]}"; do printf '  %s\n' "$line"; done
if [[ ${#LATE_FAILURES[@]} -gt 0 ]]; then
  printf '\n'
  for f in "${LATE_FAILURES[@]}"; do printf 'DEPLOY CHECK FAILED: %s\n' "$f" >&2; done
  exit 1
fi
printf '\ndeploy check passed\n'
