//! The metric catalog against everything that names a metric: the code emits only catalog
//! names, and every name a dashboard, an alert rule, the chart or the README uses is in the
//! catalog, so a renamed metric cannot leave a panel or an alert silently empty.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use sluice_common::catalog::{CATALOG, find};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo().join(dir)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every `sluice_…` metric name in `text`, a histogram's `_bucket`/`_sum`/`_count` series
/// counted as the histogram; recording-rule names (`job:sluice_x:rate5m`) are not metrics.
fn names_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("sluice_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let after = bytes.get(end).copied();
        let word = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b':');
        if !word(before) && !word(after) && !bytes[start..end].ends_with(b"_") {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| find(b).is_some()))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

fn unknown(names: &BTreeSet<String>) -> Vec<&String> {
    names.iter().filter(|n| find(n).is_none()).collect()
}

#[test]
fn dashboards_alert_rules_and_the_chart_query_only_catalogued_metrics() {
    let mut sources = files("dashboards", "json");
    sources.extend(files("deploy/prometheus", "yaml"));
    sources.extend(files("deploy/helm/sluice", "yaml"));
    sources.extend(files("deploy/helm/sluice", "json"));
    let mut seen = 0;
    for path in sources {
        let text = fs::read_to_string(&path).unwrap();
        // The chart names metrics in its queries (KEDA, the HPA, helm tests); elsewhere a
        // `sluice_` word is a log target or a file name.
        let text = if path.starts_with(repo().join("deploy/helm")) {
            text.lines()
                .filter(|l| ["query", "expr", "metric"].iter().any(|k| l.contains(k)))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        };
        let names = names_in(&text);
        seen += names.len();
        let bad = unknown(&names);
        assert!(
            bad.is_empty(),
            "{} names metrics sluice does not export (renamed? add them to sluice_common::catalog): {bad:?}",
            path.display()
        );
    }
    assert!(
        seen > 50,
        "found only {seen} metric names: is the scan broken?"
    );
}

#[test]
fn every_metric_has_a_readme_row_and_is_charted_or_says_why_not() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let mut charted = String::new();
    for path in files("dashboards", "json") {
        charted.push_str(&fs::read_to_string(path).unwrap());
    }
    let charted = names_in(&charted);
    let mut problems = Vec::new();
    for m in CATALOG {
        let row = readme.lines().find(|l| {
            l.starts_with("| ")
                && (l.contains(&format!("`{}`", m.name)) || l.contains(&format!("`{}{{", m.name)))
        });
        match row {
            None => problems.push(format!("{}: no row in the README's metric tables", m.name)),
            Some(row) if !charted.contains(m.name) && !row.contains("Not charted") => problems
                .push(format!(
                    "{}: on no dashboard, and its README row does not say \"Not charted\" and why",
                    m.name
                )),
            Some(_) => {}
        }
    }
    // The names in the first cell of each metric-table row.
    let first_cells: String = readme
        .lines()
        .filter(|l| l.starts_with("| `sluice_"))
        .filter_map(|l| l.split('|').nth(1))
        .collect();
    let documented = names_in(&first_cells);
    for n in unknown(&documented) {
        problems.push(format!("the README names {n}, which is not in the catalog"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn code_emits_metrics_only_through_the_catalog() {
    let mut problems = Vec::new();
    for path in files("crates", "rs") {
        let text = fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for mac in [
                "counter!(\"sluice_",
                "gauge!(\"sluice_",
                "histogram!(\"sluice_",
            ] {
                if l.contains(mac) {
                    problems.push(format!("{}:{}: {}", path.display(), n + 1, l));
                }
            }
        }
        // A macro call split over lines: `counter!(` at a line end, the name on the next.
        let lines: Vec<&str> = text.lines().collect();
        for w in lines.windows(2) {
            let head = w[0].trim_end();
            if ["counter!(", "gauge!(", "histogram!("]
                .iter()
                .any(|m| head.ends_with(m))
                && w[1].trim_start().starts_with("\"sluice_")
            {
                problems.push(format!("{}: {} {}", path.display(), head, w[1].trim()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metric names written as strings (use sluice_common::catalog's constants):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_finds_names_and_skips_recording_rules() {
    let names = names_in(
        "rate(sluice_logs_written_total[5m]) job:sluice_wcu_consumed:rate5m \
         sluice_message_age_seconds_bucket{le=\"1\"} sluice_aimd_*",
    );
    let want: BTreeSet<String> = ["sluice_logs_written_total", "sluice_message_age_seconds"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}
