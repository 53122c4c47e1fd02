"""Checks of the Grafana dashboards for scripts/deploy-check.sh, and the PNG of the overview.
Run with the deploy-py venv's python (grafana-foundation-sdk, promql-parser, matplotlib).

  dashboards.py static OUT.json DASHBOARD...
      JSON round-trips through grafana-foundation-sdk with no unknown key; ids, grid and
      variables are sound; every panel query parses as PromQL. Writes the queries to OUT.json.
  dashboards.py live QUERIES.json PROM_URL SCRAPE.txt START END JOB [VARIABLE_METRIC]
      every query names only metrics that the scraped sluice exports, and returns data (at least
      one finite sample) from the real Prometheus over [START, END].
  dashboards.py coverage README.md SCRAPE.txt... -- DASHBOARD...
      every metric the live scrapes export has a row in the README's metric tables, and each
      README metric is queried by a dashboard panel or its row says "Not charted".
  dashboards.py plot DASHBOARD PROM_URL START END JOB OUT.png TITLE [FROM:TO:LABEL ...]
      draws the dashboard's panels from Prometheus query_range into one PNG, time in seconds
      from START, with the given windows (seconds from START) shaded and labelled.
"""

import json
import math
import re
import sys
import urllib.parse
import urllib.request

# What Grafana would substitute. $__rate_interval is at least 4 scrape intervals; the check
# scrapes every second.
RATE_INTERVAL = "15s"


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def substitute(expr, job, rate_interval=RATE_INTERVAL):
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("${job}", job).replace("$job", job)
            .replace("${instance}", ".*").replace("$instance", ".*"))


def panels_of(dash):
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def diff_paths(given, dumped, path=""):
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
    return out


def metric_names(expr):
    import promql_parser

    names = []

    def visit(node, *_):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.append(node.name)
        return True

    ast = promql_parser.parse(expr)  # raises on a parse error
    promql_parser.walk(ast, visit)
    return sorted(set(names))


def cmd_static(out, paths):
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    queries = []
    uids = set()
    for path in paths:
        with open(path) as f:
            dash = json.load(f)
        model = Dashboard.from_json(dash)
        dumped = json.loads(json.dumps(model, cls=JSONEncoder))
        unknown = diff_paths(dash, dumped)
        if unknown:
            fail(f"{path}: keys grafana-foundation-sdk does not know (or changed): {unknown[:10]}")
        if dash["uid"] in uids:
            fail(f"{path}: duplicate uid {dash['uid']}")
        uids.add(dash["uid"])
        variables = {v["name"] for v in dash["templating"]["list"]}
        ids = set()
        n_panels = 0
        for p in dash["panels"]:
            if p["id"] in ids:
                fail(f"{path}: duplicate panel id {p['id']}")
            ids.add(p["id"])
            g = p["gridPos"]
            if g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24:
                fail(f"{path}: panel {p['title']!r} is outside the 24-column grid")
        for p in panels_of(dash):
            n_panels += 1
            if p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{path}: panel {p['title']!r} must use the ${{datasource}} variable")
            if not p.get("targets"):
                fail(f"{path}: panel {p['title']!r} has no query")
            refs = [t["refId"] for t in p["targets"]]
            if len(refs) != len(set(refs)):
                fail(f"{path}: panel {p['title']!r} repeats a refId")
            for t in p["targets"]:
                for var in re.findall(r"\$\{?(\w+)", t["expr"]):
                    if var not in variables and var != "__rate_interval":
                        fail(f"{path}: panel {p['title']!r} uses ${var}, which the dashboard does not define")
                expr = substitute(t["expr"], "sluice")
                try:
                    names = metric_names(expr)
                except Exception as e:
                    fail(f"{path}: panel {p['title']!r} {t['refId']}: PromQL does not parse: {e}\n  {expr}")
                if not names:
                    fail(f"{path}: panel {p['title']!r} {t['refId']} names no metric")
                queries.append({"dashboard": dash["uid"], "panel": p["title"], "refId": t["refId"],
                                "expr": t["expr"], "metrics": names})
        print(f"dashboards: {path}: {n_panels} panels, round-trips through grafana-foundation-sdk, "
              f"variables {sorted(variables)}")
    with open(out, "w") as f:
        json.dump(queries, f, indent=1)
    metrics = sorted({m for q in queries for m in q["metrics"]})
    print(f"dashboards: {len(queries)} panel queries parse as PromQL; they name {len(metrics)} metrics")


def prom(url, path, params):
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        fail(f"Prometheus {path} {params}: {body}")
    return body["data"]


def scraped_names(scrape_path):
    names = set()
    with open(scrape_path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def cmd_live(queries_path, url, scrape_path, start, end, job, variable_metric="sluice_messages_received_total"):
    with open(queries_path) as f:
        queries = json.load(f)
    exported = scraped_names(scrape_path)
    missing = []
    for q in queries:
        for m in q["metrics"]:
            if m not in exported:
                missing.append(f"{q['dashboard']} / {q['panel']} ({q['refId']}): {m}")
    if missing:
        fail("panel queries name metrics the running sluice does not export:\n  " + "\n  ".join(missing))
    empty = []
    for q in queries:
        expr = substitute(q["expr"], job)
        data = prom(url, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": "1"})
        finite = sum(1 for s in data["result"] for _, v in s["values"] if math.isfinite(float(v)))
        q["series"], q["finite_samples"] = len(data["result"]), finite
        if finite == 0:
            empty.append(f"{q['dashboard']} / {q['panel']} ({q['refId']}): {expr}")
    if empty:
        fail("panel queries returned no data from the live run:\n  " + "\n  ".join(empty))
    # The variables' own queries.
    for label, match in [("job", variable_metric),
                         ("instance", f'{variable_metric}{{job="{job}"}}')]:
        values = prom(url, f"/api/v1/label/{label}/values", {"match[]": match, "start": start, "end": end})
        if not values:
            fail(f"the ${label} variable query finds no value")
    by_dash = {}
    for q in queries:
        by_dash.setdefault(q["dashboard"], []).append(q)
    for d, qs in by_dash.items():
        print(f"dashboards: {d}: all {len(qs)} queries returned data "
              f"({sum(q['finite_samples'] for q in qs)} samples); metrics all exported by the live sluice")


def cmd_coverage(readme, *args):
    sep = args.index("--")
    scrapes, dashboards = args[:sep], args[sep + 1:]
    exported = set()
    for s in scrapes:
        exported |= {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n
                     for n in scraped_names(s)}
    exprs = ""
    for d in dashboards:
        with open(d) as f:
            for p in panels_of(json.load(f)):
                exprs += " ".join(t.get("expr", "") for t in p.get("targets", [])) + " "
    rows = [l for l in open(readme).read().splitlines() if l.startswith("| `sluice_")]
    documented = {}
    for r in rows:
        first = r.split("|")[1]
        for n in re.findall(r"`(sluice_[a-z0-9_]+)", first):
            documented[n] = r
    problems = []
    for n in sorted(exported):
        if n.startswith("sluice_") and n not in documented:
            problems.append(f"{n}: exported, but no row in the README's metric tables")
    for n, r in sorted(documented.items()):
        if not re.search(rf"\b{n}(_bucket)?\b", exprs) and "Not charted" not in r:
            problems.append(f"{n}: on no dashboard, and its README row does not say \"Not charted\" (and why)")
    if problems:
        fail("metric coverage:\n  " + "\n  ".join(problems))
    charted = sum(1 for n in documented if re.search(rf"\b{n}(_bucket)?\b", exprs))
    print(f"dashboards: coverage: {len(documented)} documented metrics ({len(exported)} exported in the live runs): "
          f"{charted} on a dashboard, {len(documented) - charted} named in the README as not charted")


def legend(fmt, labels):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in labels.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def cmd_plot(dash_path, url, start, end, job, out, title, *spans):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(dash_path) as f:
        dash = json.load(f)
    t0 = float(start)
    windows = []
    for s in spans:
        a, b, label = s.split(":", 2)
        windows.append((float(a), float(b), label))
    shades = ["#f2b8b5", "#b5c8f2", "#c8f2b5"]
    panels = list(panels_of(dash))
    stats = [p for p in panels if p["type"] == "stat"]
    series_panels = [p for p in panels if p["type"] != "stat"]
    cols = 3
    rows = math.ceil(len(series_panels) / cols)
    fig = plt.figure(figsize=(18, 1.2 + 3.4 * rows), dpi=90)
    fig.suptitle(title, fontsize=13, x=0.01, y=0.995, ha="left", va="top")
    grid = fig.add_gridspec(rows + 1, cols * max(1, len(stats)), height_ratios=[0.3] + [1] * rows,
                            hspace=0.6, wspace=0.9, top=0.93)
    if windows:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=shades[j % len(shades)], alpha=0.5, label=label)
                            for j, (_, _, label) in enumerate(windows)],
                   loc="upper right", bbox_to_anchor=(0.99, 0.999), fontsize=10, frameon=False)
    step = "1"

    def query(expr):
        return prom(url, "/api/v1/query_range", {"query": substitute(expr, job), "start": start, "end": end, "step": step})

    for i, p in enumerate(stats):
        ax = fig.add_subplot(grid[0, i * cols:(i + 1) * cols])
        ax.axis("off")
        data = query(p["targets"][0]["expr"])
        values = [float(v) for s in data["result"] for _, v in s["values"] if math.isfinite(float(v))]
        peak = max(values) if values else float("nan")
        unit = p["fieldConfig"]["defaults"].get("unit")
        text = f"{peak:.0%}" if unit == "percentunit" else f"{peak:,.0f}"
        ax.text(0.5, 0.65, text, ha="center", va="center", fontsize=24, weight="bold", color="#1f60c4")
        ax.text(0.5, 0.0, f"{p['title']} (peak of the run)", ha="center", va="center", fontsize=11)
    span = max(1, len(stats))
    for i, p in enumerate(series_panels):
        r, c = 1 + i // cols, i % cols
        ax = fig.add_subplot(grid[r, c * span:(c + 1) * span])
        ax.set_title(p["title"], fontsize=11, loc="left")
        for j, (a, b, label) in enumerate(windows):
            ax.axvspan(a, b, color=shades[j % len(shades)], alpha=0.35, linewidth=0)
        unit = p["fieldConfig"]["defaults"].get("unit", "")
        for t in p["targets"]:
            for s in query(t["expr"])["result"]:
                xs = [float(ts) - t0 for ts, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                style = "--" if "budget" in (t.get("legendFormat") or "") else "-"
                ax.plot(xs, ys, style, linewidth=1.3, label=legend(t.get("legendFormat"), s["metric"]))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.set_ylabel({"s": "seconds", "short": "", "percentunit": ""}.get(unit, unit), fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, float(end) - t0)
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    fig.savefig(out, bbox_inches="tight")
    print(f"dashboards: drew {len(panels)} panels of {dash['uid']} from the live run into {out}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "static":
        cmd_static(args[0], args[1:])
    elif cmd == "live":
        cmd_live(*args)
    elif cmd == "coverage":
        cmd_coverage(*args)
    elif cmd == "plot":
        cmd_plot(*args)
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
