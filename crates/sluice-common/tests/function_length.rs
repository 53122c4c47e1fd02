//! No function outside tests runs over 100 lines: past that a function does several things,
//! and its parts deserve names. Test code (`tests/`, `#[cfg(test)] mod`) is exempt.

use std::fs;
use std::path::{Path, PathBuf};

const LIMIT: usize = 100;

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    let mut stack = vec![root.join("crates")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                // Only library and binary sources: tests, benches and examples are exempt.
                if !["tests", "benches", "examples", "target"].contains(&name.as_str()) {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") && p.components().any(|c| c.as_os_str() == "src") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The text with every comment, string and char literal blanked (newlines kept), so braces
/// can be counted.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&c, i) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() && !(c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')))
            {
                j += 1;
            }
            let end = (j + 1 + hashes).min(c.len());
            for &ch in &c[i..end] {
                out.push(blank(ch));
            }
            i = end;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                let step = if c[i] == '\\' { 2 } else { 1 };
                for k in 0..step {
                    if let Some(&ch) = c.get(i + k) {
                        out.push(blank(ch));
                    }
                }
                i += step;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) is left alone.
            let mut j = i + 1;
            if c[j] == '\\' {
                j += 2;
            }
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            for _ in i..=j.min(c.len() - 1) {
                out.push(' ');
            }
            i = j + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

/// The line where the item starting at line `start` ends (its braces close), if it has a body.
fn end_of_item(lines: &[&str], start: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut opened = false;
    for (n, line) in lines.iter().enumerate().skip(start) {
        for ch in line.chars() {
            match ch {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                ';' if !opened && depth == 0 => return None,
                _ => {}
            }
        }
        if opened && depth <= 0 {
            return Some(n);
        }
    }
    None
}

fn is_fn(line: &str) -> bool {
    let mut t = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        if let Some(rest) = t.strip_prefix(prefix) {
            t = rest;
        }
        if let Some(rest) = t.strip_prefix(prefix) {
            t = rest;
        }
    }
    t.starts_with("fn ")
}

/// Every function over the limit in `text`: (line, name, length).
fn long_functions(text: &str) -> Vec<(usize, String, usize)> {
    let code = code_only(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut n = 0;
    while n < lines.len() {
        let t = lines[n].trim();
        // A test module: skip it whole.
        if t == "#[cfg(test)]"
            && lines
                .get(n + 1)
                .is_some_and(|l| l.trim_start().starts_with("mod ") || l.contains(" mod "))
        {
            n = end_of_item(&lines, n + 1).map_or(n + 1, |e| e + 1);
            continue;
        }
        if is_fn(lines[n])
            && let Some(end) = end_of_item(&lines, n)
        {
            let len = end - n + 1;
            if len > LIMIT {
                let name = t.split("fn ").nth(1).unwrap_or("");
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((n + 1, name, len));
            }
            // Nested functions are part of this one's length.
            n = end + 1;
            continue;
        }
        n += 1;
    }
    out
}

#[test]
fn no_function_outside_tests_is_over_100_lines() {
    let mut problems = Vec::new();
    let files = sources();
    assert!(files.len() > 50, "found only {} sources", files.len());
    for path in files {
        for (line, name, len) in long_functions(&fs::read_to_string(&path).unwrap()) {
            let shown = path.to_string_lossy();
            let shown = shown.rsplit("/../../").next().unwrap_or_default();
            problems.push(format!("{shown}:{line}: fn {name} is {len} lines"));
        }
    }
    assert!(
        problems.is_empty(),
        "functions over {LIMIT} lines (split them into named steps):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_sees_through_strings_comments_and_test_modules() {
    let body = "    let x = 1;\n".repeat(LIMIT);
    let long = format!("pub async fn long() {{\n{body}}}\n");
    let text = format!(
        "fn short() {{ let s = \"}}}}\"; let c = '}}'; /* }} */ // }}\n}}\n{long}\
         #[cfg(test)]\nmod tests {{\n{}}}\n",
        long.replace("long", "in_tests")
    );
    let found = long_functions(&text);
    assert_eq!(found, vec![(3, "long".to_owned(), LIMIT + 2)]);
}
