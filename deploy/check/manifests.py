"""Checks of the rendered Helm manifests, the chart's values schema and the IAM policies, for
scripts/deploy-check.sh. Run with the deploy-py venv's python (PyYAML, cloudcoil models).

  manifests.py crds RENDER...              KEDA and Prometheus Operator objects against their models
  manifests.py configs SLUICE OUT RENDER... each render's sluice.toml + env through `sluice validate`
  manifests.py schema-drift SCHEMA EXAMPLE  the chart's config keys == config/sluice.example.toml's
  manifests.py iam DIR                      JSON policies == CloudFormation policies, no wildcards

Each prints one summary line per thing checked and exits 1 on the first class of failure.
"""

import json
import os
import re
import subprocess
import sys
import tomllib

import yaml


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def diff_paths(given, dumped, path=""):
    """Paths present in `given` that the model dropped or changed: unknown or misspelt fields."""
    out = []
    if isinstance(given, dict):
        if not isinstance(dumped, dict):
            return [path or "/"]
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}/{k}")
            else:
                out.extend(diff_paths(v, dumped[k], f"{path}/{k}"))
    elif isinstance(given, list):
        if not isinstance(dumped, list) or len(given) != len(dumped):
            return [path]
        for i, (a, b) in enumerate(zip(given, dumped)):
            out.extend(diff_paths(a, b, f"{path}[{i}]"))
    elif given != dumped:
        out.append(f"{path} ({given!r} became {dumped!r})")
    return out


# KEDA 2.16 aws-sqs-queue trigger parameters (trigger metadata is a free string map the model
# cannot check).
SQS_TRIGGER_KEYS = {
    "queueURL", "queueURLFromEnv", "queueLength", "activationQueueLength", "awsRegion",
    "awsEndpoint", "identityOwner", "scaleOnInFlight", "scaleOnDelayed", "awsRoleArn",
}

# KEDA 2.16 kafka trigger parameters.
KAFKA_TRIGGER_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
    "version", "partitionLimitation", "limitToPartitionsWithLag", "sasl", "tls", "unsafeSsl",
}


def check_kafka_trigger(render, trig, docs):
    extra = set(trig["metadata"]) - KAFKA_TRIGGER_KEYS
    if extra:
        fail(f"{render}: kafka trigger has unknown metadata {sorted(extra)}")
    # The trigger must watch what sluice consumes: the same brokers and group.
    toml_text = next(d["data"]["sluice.toml"] for d in docs if d["kind"] == "ConfigMap")
    kafka = tomllib.loads(toml_text).get("kafka", {})
    md = trig["metadata"]
    if md.get("bootstrapServers") != kafka.get("brokers"):
        fail(f"{render}: kafka trigger brokers {md.get('bootstrapServers')} != kafka.brokers {kafka.get('brokers')}")
    if md.get("consumerGroup") != kafka.get("group_id", "sluice"):
        fail(f"{render}: kafka trigger group {md.get('consumerGroup')} != kafka.group_id")
    if "topic" in md and [md["topic"]] != kafka.get("topics"):
        fail(f"{render}: kafka trigger topic {md['topic']} != kafka.topics {kafka.get('topics')}")
    if md.get("allowIdleConsumers") != "false":
        fail(f"{render}: the kafka trigger must not scale past the partition count (allowIdleConsumers)")


def cmd_crds(renders):
    from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    models = {
        ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    }
    counts = {}
    for render in renders:
        docs = load_docs(render)
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for d in docs:
            model = models.get((d["apiVersion"], d["kind"]))
            if model is None:
                if "keda.sh" in d["apiVersion"] or "coreos" in d["apiVersion"]:
                    fail(f"{render}: no model for {d['apiVersion']} {d['kind']}")
                continue
            try:
                obj = model.model_validate(d)
            except Exception as e:  # pydantic.ValidationError
                fail(f"{render}: {d['kind']} {d['metadata']['name']} is invalid: {e}")
            dumped = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
            unknown = diff_paths(d, dumped)
            if unknown:
                fail(f"{render}: {d['kind']} {d['metadata']['name']} has fields the model does not know: {unknown}")
            if d["kind"] == "ScaledObject":
                spec = d["spec"]
                target = spec["scaleTargetRef"]
                if ("Deployment", target["name"]) not in names:
                    fail(f"{render}: ScaledObject targets a Deployment {target['name']} that is not rendered")
                for trig in spec["triggers"]:
                    if not all(isinstance(v, str) for v in trig["metadata"].values()):
                        fail(f"{render}: trigger metadata values must be strings")
                    if trig["type"] == "kafka":
                        check_kafka_trigger(render, trig, docs)
                        counts["kafka trigger"] = counts.get("kafka trigger", 0) + 1
                        continue
                    if trig["type"] != "aws-sqs-queue":
                        fail(f"{render}: unexpected trigger {trig['type']}")
                    extra = set(trig["metadata"]) - SQS_TRIGGER_KEYS
                    if extra:
                        fail(f"{render}: aws-sqs-queue trigger has unknown metadata {sorted(extra)}")
                    if trig["metadata"].get("scaleOnInFlight") != "true":
                        fail(f"{render}: the trigger must count in-flight messages (scaleOnInFlight)")
                    ref = trig.get("authenticationRef", {}).get("name")
                    if ("TriggerAuthentication", ref) not in names:
                        fail(f"{render}: trigger references TriggerAuthentication {ref}, not rendered")
            if d["kind"] == "TriggerAuthentication":
                pid = d["spec"].get("podIdentity", {})
                if pid.get("provider") != "aws":
                    fail(f"{render}: TriggerAuthentication must use pod identity provider aws")
                if ("roleArn" in pid) == ("identityOwner" in pid):
                    fail(f"{render}: podIdentity needs exactly one of roleArn and identityOwner")
            if d["kind"] == "PrometheusRule":
                with open(os.path.join(os.path.dirname(__file__), "..", "prometheus", "sluice-rules.yaml")) as f:
                    canonical = yaml.safe_load(f)
                if d["spec"]["groups"] != canonical["groups"]:
                    fail(f"{render}: the PrometheusRule's groups differ from deploy/prometheus/sluice-rules.yaml")
                out = os.path.splitext(render)[0] + ".rules"
                with open(out, "w") as f:
                    yaml.safe_dump({"groups": d["spec"]["groups"]}, f, sort_keys=False)
            counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    if not counts.get("ScaledObject") or not counts.get("TriggerAuthentication"):
        fail("no render contained a KEDA ScaledObject and TriggerAuthentication")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"crds: {summary} valid against KEDA 2.16 / prometheus-operator models, no unknown fields")


def container(doc, name):
    spec = doc["spec"]["template"]["spec"]
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if c["name"] == name:
            return c
    return None


def duration_s(text):
    m = re.fullmatch(r"(\d+)s", text)
    return int(m.group(1)) if m else None


def cmd_configs(sluice, outdir, renders):
    checked = 0
    for render in renders:
        docs = load_docs(render)
        cms = [d for d in docs if d["kind"] == "ConfigMap" and "sluice.toml" in d.get("data", {})]
        deps = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
        if len(cms) != 1 or len(deps) != 1:
            fail(f"{render}: expected one sluice ConfigMap and one Deployment or StatefulSet")
        dep = deps[0]
        # Whatever scales the workload must name it by its kind.
        for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != (dep["kind"], dep["metadata"]["name"]):
                fail(f"{render}: the HPA scales {ref['kind']} {ref['name']}, not the {dep['kind']} rendered")
        pod = dep["spec"]["template"]["spec"]
        main = container(dep, "sluice")
        if main is None:
            fail(f"{render}: no container named sluice")
        env = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
        # Invariants the issue asks for, beyond what the validators check.
        grace = duration_s(env.get("SLUICE__WORKER__SHUTDOWN_GRACE", ""))
        if grace is None or pod["terminationGracePeriodSeconds"] <= grace:
            fail(f"{render}: terminationGracePeriodSeconds must exceed worker.shutdown_grace")
        sc = main["securityContext"]
        if not (sc.get("readOnlyRootFilesystem") and sc.get("runAsNonRoot")
                and sc.get("allowPrivilegeEscalation") is False and "ALL" in sc["capabilities"]["drop"]):
            fail(f"{render}: the sluice container must be non-root, read-only, no capabilities")
        if main["livenessProbe"]["httpGet"]["path"] != "/healthz" or main["readinessProbe"]["httpGet"]["path"] != "/readyz":
            fail(f"{render}: liveness must probe /healthz and readiness /readyz")
        if not main.get("resources", {}).get("requests") or not main.get("resources", {}).get("limits"):
            fail(f"{render}: the sluice container needs resource requests and limits")
        mode = "ingest" if main["args"][0] == "ingest" else "worker"
        if mode == "ingest":
            # Every 202 is in SQS or the spool: the spool must outlive the pod (a claim per pod of
            # a StatefulSet, kept on scale-in), mounted where producer.spool_dir points, and hold
            # spool_max_bytes.
            if dep["kind"] != "StatefulSet":
                fail(f"{render}: ingest must run as a StatefulSet (its spool outlives the pod)")
            claims = {c["metadata"]["name"]: c for c in dep["spec"].get("volumeClaimTemplates", [])}
            mounts = {m["name"]: m["mountPath"] for m in main.get("volumeMounts", [])}
            if "spool" not in claims or mounts.get("spool") != env.get("SLUICE__PRODUCER__SPOOL_DIR"):
                fail(f"{render}: the spool claim must be mounted at producer.spool_dir")
            if any(v.get("name") == "spool" for v in pod.get("volumes", [])):
                fail(f"{render}: the spool must be the claim, not a pod volume")
            retention = dep["spec"].get("persistentVolumeClaimRetentionPolicy", {})
            if retention.get("whenScaled") != "Retain":
                fail(f"{render}: a scaled-in pod's spool claim must be retained")
            size = claims["spool"]["spec"]["resources"]["requests"]["storage"]
            m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)", size)
            units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
            import tomllib
            spool_max = tomllib.loads(cms[0]["data"]["sluice.toml"]).get("producer", {}).get("spool_max_bytes", 1 << 30)
            if not m or int(m.group(1)) * units[m.group(2)] < spool_max:
                fail(f"{render}: the spool claim ({size}) is smaller than producer.spool_max_bytes ({spool_max})")
            # SIGTERM → drain_delay of serving → requests in flight (ingest.shutdown_timeout) →
            # sending and replaying the spool (producer.shutdown_timeout): all before the kill.
            cfg = tomllib.loads(cms[0]["data"]["sluice.toml"])
            def secs(section, key, default):
                v = cfg.get(section, {}).get(key, default)
                s = duration_s(v)
                if s is None:
                    fail(f"{render}: {section}.{key} = {v!r}: the check reads whole seconds only")
                return s
            stop = secs("ingest", "drain_delay", "5s") + secs("ingest", "shutdown_timeout", "10s") \
                + secs("producer", "shutdown_timeout", "10s")
            pre = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if pre + stop >= pod["terminationGracePeriodSeconds"]:
                fail(f"{render}: preStop {pre} s + drain_delay, ingest and producer shutdown ({stop} s) "
                     f"do not fit in terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}")
        name = os.path.splitext(os.path.basename(render))[0]
        toml_path = os.path.join(outdir, f"{name}.sluice.toml")
        with open(toml_path, "w") as f:
            f.write(cms[0]["data"]["sluice.toml"])
        # `sluice validate --for run|ingest` with exactly the pod's environment (plus PATH), as
        # the init container runs it.
        init = [c for c in pod.get("initContainers", []) if c["name"] == "validate-config"]
        want_for = "ingest" if mode == "ingest" else "run"
        if init and init[0]["args"][:3] != ["validate", "--for", want_for]:
            fail(f"{render}: the validate-config init container must run `validate --for {want_for}`")
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        run_env.update(env)
        if "SLUICE__RATE__REDIS__URL_FILE" in env:
            # The mounted Secret; a stand-in of the same shape here.
            url_file = os.path.join(outdir, f"{name}.redis-url")
            with open(url_file, "w") as f:
                f.write("redis://:check@redis.check:6379/0\n")
            run_env["SLUICE__RATE__REDIS__URL_FILE"] = url_file
        if "SLUICE__KAFKA__PROPERTIES_FILE" in env:
            # The mounted Secret, as the pod would see it (contents stand in for the real ones).
            props = os.path.join(outdir, f"{name}.kafka.properties")
            with open(props, "w") as f:
                f.write("sasl.username=check\nsasl.password=check\n")
            run_env["SLUICE__KAFKA__PROPERTIES_FILE"] = props
        r = subprocess.run([sluice, "validate", "--for", want_for, "--config", toml_path],
                           env=run_env, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{render}: sluice validate rejects the rendered config:\n{r.stdout}{r.stderr}")
        print(f"configs: {name} ({mode}): {r.stdout.strip()}")
        checked += 1
    print(f"configs: {checked} rendered configs accepted by `sluice validate`, pod invariants hold")


def example_keys(path):
    """Section → keys of config/sluice.example.toml, commented-out keys included."""
    keys, section = {}, None
    with open(path) as f:
        for line in f:
            m = re.match(r"^\[([a-z_.]+)\]", line)
            if m:
                section = m.group(1)
                keys.setdefault(section, set())
                continue
            m = re.match(r"^#?\s?([a-z_]+)\s*=\s*\S", line)
            if m and section:
                keys[section].add(m.group(1))
    return keys


def schema_keys(schema):
    """Section → leaf keys of the chart's `config` schema; nested objects are sections of their own
    (rate.redis), as TOML tables are in the example."""
    out = {}

    def walk(node, section):
        for k, v in node["properties"].items():
            if v.get("type") == "object" and "properties" in v:
                name = f"{section}.{k}" if section else k
                out.setdefault(name, set())
                walk(v, name)
            else:
                out.setdefault(section, set()).add(k)

    walk(schema["properties"]["config"], "")
    return out


def cmd_schema_drift(schema_path, example_path):
    with open(schema_path) as f:
        schema = json.load(f)

    def closed(node, path):
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                fail(f"values.schema.json: {path or '/'} must set additionalProperties: false")
            for k, v in node["properties"].items():
                closed(v, f"{path}/{k}")

    closed(schema, "")
    chart = schema_keys(schema)
    example = example_keys(example_path)
    # Keys the chart sets itself from other values, on purpose; and kafka.group_instance_id, which
    # must differ per process while every pod of a Deployment shares one ConfigMap.
    set_by_chart = {
        ("telemetry", "listen"), ("telemetry", "log_format"), ("worker", "shutdown_grace"),
        ("ingest", "listen"), ("ingest", "api_keys_file"), ("ingest", "tls_cert"),
        ("ingest", "tls_key"), ("producer", "spool_dir"), ("kafka", "group_instance_id"),
    }
    problems = []
    for section in sorted(set(chart) | set(example)):
        want, have = example.get(section, set()), chart.get(section, set())
        for k in sorted(want - have):
            if (section, k) not in set_by_chart:
                problems.append(f"config.{section}.{k}: in config/sluice.example.toml, missing from the chart's values.schema.json")
        for k in sorted(have - want):
            problems.append(f"config.{section}.{k}: in the chart's values.schema.json, not in config/sluice.example.toml")
    if problems:
        fail("the chart's config schema drifted from sluice's config (update deploy/helm/sluice/values.schema.json):\n  "
             + "\n  ".join(problems))
    n = sum(len(v) for v in example.values())
    print(f"schema: every object closed (additionalProperties: false); config keys match the {n} keys of config/sluice.example.toml")


def statements(policy):
    out = {}
    for s in policy["Statement"]:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for a in actions:
            if "*" in a:
                fail(f"IAM statement {s.get('Sid')}: wildcard action {a}")
        for r in resources:
            if r == "*" or (isinstance(r, str) and r.endswith(":*")):
                fail(f"IAM statement {s.get('Sid')}: wildcard resource {r}")
        if s.get("Effect") != "Allow":
            fail(f"IAM statement {s.get('Sid')}: unexpected effect")
        out[s["Sid"]] = sorted(actions)
    return out


def cmd_iam(directory):
    with open(os.path.join(directory, "sluice-iam.cfn.yaml")) as f:
        cfn = yaml.safe_load(f)
    res = cfn["Resources"]
    for kind, files, policies in [
        ("worker", "worker-policy.json", ["WorkerPolicy", "WorkerQueueKmsPolicy"]),
        ("ingest", "ingest-policy.json", ["IngestPolicy", "IngestQueueKmsPolicy"]),
        ("operator", "operator-policy.json", ["OperatorPolicy", "OperatorQueueKmsPolicy"]),
    ]:
        with open(os.path.join(directory, files)) as f:
            text = f.read()
        placeholders = set(re.findall(r"\$\{(\w+)\}", text))
        allowed = {"QueueArn", "DeadLetterQueueArn", "TableArn", "MembershipTableArn", "QueueKmsKeyArn", "Region"}
        if placeholders - allowed:
            fail(f"{files}: unknown placeholders {placeholders - allowed}")
        doc = json.loads(text)
        if doc.get("Version") != "2012-10-17":
            fail(f"{files}: Version must be 2012-10-17")
        from_json = statements(doc)
        from_cfn = {}
        for p in policies:
            from_cfn.update(statements(res[p]["Properties"]["PolicyDocument"]))
        if from_json != from_cfn:
            fail(f"{files} and sluice-iam.cfn.yaml grant different actions:\n  json {from_json}\n  cfn  {from_cfn}")
        n = sum(len(v) for v in from_json.values())
        print(f"iam: {kind}: {len(from_json)} statements, {n} actions, no wildcards, JSON == CloudFormation")


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "crds":
        cmd_crds(args)
    elif cmd == "configs":
        cmd_configs(args[0], args[1], args[2:])
    elif cmd == "schema-drift":
        cmd_schema_drift(args[0], args[1])
    elif cmd == "iam":
        cmd_iam(args[0])
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
