"""Checks of the rendered Helm manifests, the chart's values schema and the IAM policies, for
scripts/deploy-check.sh. Run with the deploy-py venv's python (PyYAML, cloudcoil models).

  manifests.py crds RENDER...              KEDA and Prometheus Operator objects against their models
  manifests.py configs SLUICE OUT RENDER... each render's sluice.toml + env through `sluice validate`
  manifests.py schema-drift SCHEMA EXAMPLE  the chart's config keys == config/sluice.example.toml's
  manifests.py iam DIR                      JSON policies == CloudFormation policies, no wildcards
  manifests.py fleet TEMPLATE README        the EC2 fleet template's invariants, its target == README's

Each prints one summary line per thing checked and exits 1 on the first class of failure.
"""

import json
import math
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
        if "SLUICE__INGEST__API_KEYS_FILE" in env:
            # The API-key Secret: validate reads it as ingest would; a stand-in key here.
            keys = os.path.join(outdir, f"{name}.api_keys")
            with open(keys, "w") as f:
                f.write(f"check {'ab' * 32}\n")
            run_env["SLUICE__INGEST__API_KEYS_FILE"] = keys
        if "SLUICE__INGEST__TLS_CERT" in env:
            # The TLS Secret: validate loads the pair as ingest would; a self-signed one here.
            cert, key = (os.path.join(outdir, f"{name}.tls.{x}") for x in ("crt", "key"))
            t = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                                "-subj", "/CN=sluice-check", "-keyout", key, "-out", cert],
                               capture_output=True, text=True)
            if t.returncode != 0:
                fail(f"{render}: cannot make a stand-in TLS pair with openssl:\n{t.stderr}")
            run_env["SLUICE__INGEST__TLS_CERT"], run_env["SLUICE__INGEST__TLS_KEY"] = cert, key
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


def sub_text(value):
    """The text of an Fn::Sub (its own variables substituted, ${AWS::...} and parameters left as
    they are), or a plain string; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and list(value) == ["Fn::Sub"]:
        sub = value["Fn::Sub"]
        if isinstance(sub, str):
            return sub
        text, variables = sub
        for k, v in variables.items():
            inner = sub_text(v)
            if inner is None:
                return None
            text = text.replace("${%s}" % k, inner)
        return text
    return None


def readme_example(readme, name):
    """The README's worked example for NAME: the one line `NAME = <arithmetic> = <number>`. The
    arithmetic is evaluated too, so the example cannot say one thing and compute another."""
    with open(readme) as f:
        lines = [l for l in f.read().splitlines() if re.match(rf"^{name}\s*=", l)]
    if len(lines) != 1:
        fail(f"{readme}: want exactly one line `{name} = <arithmetic> = <number>` (the worked example), found {len(lines)}")
    m = re.fullmatch(rf"{name}\s*=\s*(.+?)\s*=\s*([0-9]+)\s*", lines[0])
    if not m:
        fail(f"{readme}: cannot read `{lines[0]}` as `{name} = <arithmetic> = <number>`")
    expr, stated = m.group(1).replace("×", "*"), int(m.group(2))
    if not re.fullmatch(r"(ceil|[0-9.\s()+*/-])+", expr):
        fail(f"{readme}: `{lines[0]}`: the arithmetic may use numbers, + - * × /, brackets and ceil only")
    computed = eval(expr, {"__builtins__": {}, "ceil": math.ceil})  # checked above: arithmetic only
    if abs(computed - stated) >= 0.5:
        fail(f"{readme}: `{lines[0]}`: {m.group(1)} is {computed:g}, not {stated}")
    return stated


def cmd_fleet(template, readme):
    with open(template) as f:
        cfn = yaml.safe_load(f)
    params, res = cfn["Parameters"], cfn["Resources"]
    where = os.path.basename(template)

    def one(kind):
        found = [(k, v) for k, v in res.items() if v["Type"] == kind]
        if len(found) != 1:
            fail(f"{where}: want exactly one {kind}, found {len(found)}")
        return found[0]

    def param_default(name):
        if name not in params or "Default" not in params[name]:
            fail(f"{where}: parameter {name} is missing or has no default")
        return params[name]["Default"]

    # The group, under the fixed name everything else is scoped to.
    group_id, group = one("AWS::AutoScaling::AutoScalingGroup")
    gp = group["Properties"]
    own_name = "${AWS::StackName}-sluice"
    if sub_text(gp.get("AutoScalingGroupName")) != own_name:
        fail(f"{where}: the group must be named {own_name!r} (the IAM scope and sluice's environment use that name)")

    # Spot above the base, from several instance types.
    mip = gp.get("MixedInstancesPolicy") or fail(f"{where}: the group needs a MixedInstancesPolicy")
    lt_id, lt = one("AWS::EC2::LaunchTemplate")
    if mip["LaunchTemplate"]["LaunchTemplateSpecification"].get("LaunchTemplateId") != {"Ref": lt_id}:
        fail(f"{where}: the group must launch from the template's {lt_id}")
    choices = [t.strip() for t in str(param_default("InstanceTypes")).split(",")] if "InstanceTypes" in params else []
    types = []
    for o in mip["LaunchTemplate"].get("Overrides", []):
        t = o.get("InstanceType")
        if isinstance(t, dict) and "Fn::Select" in t:
            i, ref = t["Fn::Select"]
            if ref != {"Ref": "InstanceTypes"} or not isinstance(i, int) or i >= len(choices):
                fail(f"{where}: override {t} must select within the InstanceTypes default ({len(choices)} types)")
            t = choices[i]
        if not isinstance(t, str):
            fail(f"{where}: cannot read the override's instance type {t}")
        types.append(t)
    if len(types) < 3 or len(set(types)) != len(types):
        fail(f"{where}: want at least 3 distinct instance type overrides (spot pools to draw from), have {types}")
    # The package and the AMI are x86_64: no Graviton (arm64) types.
    arm = [t for t in types if re.match(r"^(a1|[a-z]+[0-9]+g)", t)]
    if arm:
        fail(f"{where}: {arm} are arm64 (Graviton); the package and the AMI are x86_64")
    if "x86_64" not in str(params.get("ImageId", {}).get("Default", "")):
        fail(f"{where}: ImageId's default must be an x86_64 AMI, like the package")
    dist = mip.get("InstancesDistribution", {})
    if dist.get("OnDemandPercentageAboveBaseCapacity") != 0:
        fail(f"{where}: OnDemandPercentageAboveBaseCapacity must be 0 (spot above the on-demand base)")
    if dist.get("OnDemandBaseCapacity") != {"Ref": "OnDemandBaseCapacity"} or param_default("OnDemandBaseCapacity") != 0:
        fail(f"{where}: OnDemandBaseCapacity must be the parameter, default 0")
    if dist.get("SpotAllocationStrategy") != "price-capacity-optimized":
        fail(f"{where}: SpotAllocationStrategy must be price-capacity-optimized")
    if gp.get("CapacityRebalance") is not True:
        fail(f"{where}: CapacityRebalance must be true (a replacement launches on the rebalance recommendation)")
    if not any(m.get("Granularity") == "1Minute" and "GroupInServiceInstances" in m.get("Metrics", [])
               for m in gp.get("MetricsCollection", [])):
        fail(f"{where}: MetricsCollection must collect GroupInServiceInstances at 1Minute (the scaling metric's divisor)")

    # The drain hook: every termination waits for sluice to drain, CONTINUE if it cannot say so.
    hooks = [h for h in gp.get("LifecycleHookSpecificationList", [])
             if h.get("LifecycleTransition") == "autoscaling:EC2_INSTANCE_TERMINATING"]
    if len(hooks) != 1 or hooks[0].get("LifecycleHookName") != "sluice-drain":
        fail(f"{where}: want one EC2_INSTANCE_TERMINATING lifecycle hook named sluice-drain, have {hooks}")
    hook = hooks[0]
    if hook.get("DefaultResult") != "CONTINUE":
        fail(f"{where}: the sluice-drain hook's DefaultResult must be CONTINUE")
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "config", "sluice.example.toml"), "rb") as f:
        grace = duration_s(tomllib.load(f)["worker"]["shutdown_grace"])
    # From the group's pick to the completed action: one poll (spot.poll_interval, 5 s), the drain
    # (shutdown_grace + 10 s), the IMDS reads for the instance id and the group (about 4 s at
    # worst) and the CompleteLifecycleAction call (bounded at 10 s).
    drain = 5 + grace + 10 + 4 + 10
    if not isinstance(hook.get("HeartbeatTimeout"), int) or hook["HeartbeatTimeout"] <= drain:
        fail(f"{where}: HeartbeatTimeout {hook.get('HeartbeatTimeout')} must exceed the worst case from "
             f"the pick to the completed action (poll 5 s + worker.shutdown_grace {grace} s + 10 s + "
             f"IMDS 4 s + the call 10 s = {drain} s)")

    # Target tracking on the backlog per in-service instance, the user guide's metric math.
    policies = [(k, v) for k, v in res.items() if v["Type"] == "AWS::AutoScaling::ScalingPolicy"
                and v["Properties"].get("PolicyType") == "TargetTrackingScaling"]
    if len(policies) != 1:
        fail(f"{where}: want one TargetTrackingScaling policy, found {len(policies)}")
    pid, policy = policies[0]
    pp = policy["Properties"]
    if pp.get("AutoScalingGroupName") != {"Ref": group_id}:
        fail(f"{where}: {pid} must scale the group {group_id}")
    ttc = pp["TargetTrackingConfiguration"]
    queries = {q["Id"]: q for q in ttc.get("CustomizedMetricSpecification", {}).get("Metrics", [])}
    returned = [q for q in queries.values() if q.get("ReturnData") is True]
    if len(returned) != 1 or "Expression" not in returned[0]:
        fail(f"{where}: {pid} must return exactly one metric math expression (ReturnData: true)")
    m = re.fullmatch(r"\(?\s*(\w+)\s*\)?\s*/\s*\(?\s*(\w+)\s*\)?", returned[0]["Expression"])
    if not m or m.group(1) not in queries or m.group(2) not in queries:
        fail(f"{where}: {pid}'s expression {returned[0]['Expression']!r} must divide one metric by another")

    def metric(qid, namespace, name, stat, dimension, value):
        q = queries[qid]
        ms = q.get("MetricStat", {})
        met = ms.get("Metric", {})
        dims = {d["Name"]: d["Value"] for d in met.get("Dimensions", [])}
        if (met.get("Namespace"), met.get("MetricName"), ms.get("Stat")) != (namespace, name, stat) \
                or dims.get(dimension) not in value or len(dims) != 1 or q.get("ReturnData") is not False:
            fail(f"{where}: {pid}: {qid} must be {namespace} {name} ({stat}) for {dimension} = {value[0]}, "
                 f"not returned on its own; it is {q}")

    metric(m.group(1), "AWS/SQS", "ApproximateNumberOfMessagesVisible", "Sum", "QueueName",
           [{"Ref": "QueueName"}])
    metric(m.group(2), "AWS/AutoScaling", "GroupInServiceInstances", "Average", "AutoScalingGroupName",
           [{"Ref": group_id}, {"Fn::Sub": own_name}])
    if ttc.get("TargetValue") != {"Ref": "BacklogPerInstanceTarget"}:
        fail(f"{where}: {pid}'s TargetValue must be the BacklogPerInstanceTarget parameter")
    target = param_default("BacklogPerInstanceTarget")
    want = readme_example(readme, "BacklogPerInstanceTarget")
    if target != want:
        fail(f"{where}: BacklogPerInstanceTarget defaults to {target}, but {readme}'s worked example gives {want}")
    max_size = param_default("MaxSize")
    if gp.get("MaxSize") != {"Ref": "MaxSize"} or max_size != readme_example(readme, "MaxSize"):
        fail(f"{where}: MaxSize must be the parameter, defaulting to the worked example's {readme_example(readme, 'MaxSize')}")
    if params.get("MinSize", {}).get("MinValue", 0) < 1:
        fail(f"{where}: MinSize must be at least 1 (the metric divides by the instances in service)")

    # The launch template: IMDSv2 only, the group's tag readable there, encrypted disks.
    data = lt["Properties"]["LaunchTemplateData"]
    md = data.get("MetadataOptions", {})
    if (md.get("HttpEndpoint"), md.get("HttpTokens"), md.get("HttpPutResponseHopLimit"), md.get("InstanceMetadataTags")) \
            != ("enabled", "required", 1, "enabled"):
        fail(f"{where}: IMDS must be enabled, IMDSv2 only (HttpTokens required), hop limit 1, instance tags on; it is {md}")
    disks = data.get("BlockDeviceMappings", [])
    if not disks or not all(d.get("Ebs", {}).get("Encrypted") is True for d in disks):
        fail(f"{where}: every EBS volume of the launch template must be encrypted")

    # The user data: install, the environment file with exactly its four lines, start.
    ud = data.get("UserData", {})
    script = sub_text(ud.get("Fn::Base64")) if isinstance(ud, dict) else None
    if script is None:
        fail(f"{where}: UserData must be Fn::Base64 of an Fn::Sub script")
    if not script.startswith("#!/bin/bash\n") or "\nset -euo pipefail\n" not in script:
        fail(f"{where}: the user data must be a bash script that starts with set -euo pipefail")
    for want_cmd in ("dnf install -y", "apt-get install -y", "curl -fsSLo"):
        if want_cmd not in script:
            fail(f"{where}: the user data must install the package with `{want_cmd}`")
    env = re.search(r"^cat >/etc/sluice/sluice\.env <<'EOF'\n(.*?)\nEOF$", script, re.M | re.S)
    if not env:
        fail(f"{where}: the user data must write /etc/sluice/sluice.env with `cat >/etc/sluice/sluice.env <<'EOF'`")
    want_env = [
        "SLUICE__SQS__QUEUE_URL=${QueueUrl}",
        "SLUICE__DYNAMODB__TABLE=${TableName}",
        f"SLUICE__SPOT__AUTOSCALING_GROUP={own_name}",
    ]
    if env.group(1).split("\n") != want_env:
        fail(f"{where}: /etc/sluice/sluice.env must hold exactly {want_env}, not {env.group(1).splitlines()}")
    mode = script.find("install -m 0600 -o root -g root /dev/null /etc/sluice/sluice.env\n")
    if mode < 0 or mode > env.start():
        fail(f"{where}: the user data must create /etc/sluice/sluice.env 0600 root:root before writing it")
    if not re.search(r"^systemctl start sluice\.service$", script[env.end():], re.M):
        fail(f"{where}: the user data must `systemctl start sluice.service` after writing its environment")
    rendered = re.sub(r"\$\{([A-Za-z0-9:]+)\}", "placeholder", script)
    r = subprocess.run(["bash", "-n"], input=rendered, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{where}: the user data is not valid bash: {r.stderr.strip()}")

    # The instance role: the worker policy, and CompleteLifecycleAction on this group only.
    profile_ref = data.get("IamInstanceProfile", {}).get("Arn", {}).get("Fn::GetAtt", [None])[0]
    if res.get(profile_ref, {}).get("Type") != "AWS::IAM::InstanceProfile":
        fail(f"{where}: the launch template must use the template's instance profile")
    roles = res[profile_ref]["Properties"]["Roles"]
    if len(roles) != 1 or "Ref" not in roles[0] or res.get(roles[0]["Ref"], {}).get("Type") != "AWS::IAM::Role":
        fail(f"{where}: the instance profile must hold the template's one role")
    role = res[roles[0]["Ref"]]["Properties"]
    if {"Ref": "WorkerPolicyArn"} not in role.get("ManagedPolicyArns", []):
        fail(f"{where}: the instance role must carry WorkerPolicyArn")
    want_arn = ("arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:autoScalingGroup:*:"
                f"autoScalingGroupName/{own_name}")
    scoped = 0
    for p in role.get("Policies", []):
        statements(p["PolicyDocument"])  # named, Allow, no wildcard actions or bare "*" resources
        for st in p["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            if "autoscaling:CompleteLifecycleAction" in actions:
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                if [sub_text(r) for r in resources] != [want_arn] or "Condition" in st:
                    fail(f"{where}: autoscaling:CompleteLifecycleAction must be on {want_arn} alone, "
                         f"not {resources}")
                scoped += 1
    if scoped != 1:
        fail(f"{where}: the instance role must allow autoscaling:CompleteLifecycleAction in exactly one statement")

    print(f"fleet: {len(types)} x86_64 instance types, spot above {param_default('OnDemandBaseCapacity')} on demand "
          f"(price-capacity-optimized), capacity rebalancing; hook sluice-drain on terminate, CONTINUE after "
          f"{hook['HeartbeatTimeout']} s (drain ≤ {drain} s); target {target} visible messages per in-service "
          f"instance (SQS visible / GroupInServiceInstances) and MaxSize {max_size} == the README's example; "
          f"IMDSv2 only; user data writes the 4 env lines and starts sluice.service; CompleteLifecycleAction on "
          f"this group only")


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
    elif cmd == "fleet":
        cmd_fleet(args[0], args[1])
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
