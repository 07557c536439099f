//! Telemetry as a contract: a daemon's metric names live in its `src/telemetry.rs`, and
//! its `README.md` has a table row for each of them. [`check`] holds a crate to that:
//!
//! * the names in the README's table rows are exactly the telemetry module's `ALL`;
//! * `ALL` is every constant the module declares;
//! * every constant is used somewhere else in `src/` (a name nobody registers is a row
//!   that documents nothing);
//! * no other file of `src/` spells a `"<daemon>_` string literal or calls `metrics::`:
//!   every event is a function of the telemetry module that logs and counts it (as
//!   vector's `internal_events`), so the code cannot register a name the module (and so
//!   the README) does not know;
//! * the shared vocabulary: every daemon has `<daemon>_last_success_timestamp_seconds`,
//!   an `…errors_total` counter of its failed AWS requests labelled `class` (a `class`
//!   label anywhere takes the core's error classes, the README's retry table), a
//!   `…_sent_total` for what it delivered, and every `…_dropped_total` is labelled
//!   `reason`;
//! * renames keep the old name for a release: each `(old, new)` of the module's
//!   `DEPRECATED` is exported, its README row says **deprecated** and names `new`, and
//!   no other row says deprecated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Panics with every breach of the contract (see the module documentation) for the
/// crate at `manifest_dir` whose metrics start with `daemon` and whose telemetry module
/// lists `all`, of which the `(old, new)` pairs of `deprecated` are renames in progress.
pub fn check(manifest_dir: &str, daemon: &str, all: &[&str], deprecated: &[(&str, &str)]) {
    let dir = Path::new(manifest_dir);
    let mut breaches = Vec::new();
    let prefix = format!("{daemon}_");
    let all: BTreeSet<String> = all.iter().map(|s| s.to_string()).collect();

    let readme = std::fs::read_to_string(dir.join("README.md")).expect("crate README.md");
    let documented = table_names(&readme, &prefix);
    for name in all.difference(&documented) {
        breaches.push(format!(
            "{name} is in telemetry.rs but has no row in README.md"
        ));
    }
    for name in documented.difference(&all) {
        breaches.push(format!(
            "README.md has a row for {name}, which telemetry.rs lacks"
        ));
    }

    let last_success = format!("{prefix}last_success_timestamp_seconds");
    if !all.contains(&last_success) {
        breaches.push(format!("the shared vocabulary wants {last_success}"));
    }
    let classes = [
        "transient",
        "throttled",
        "access_denied",
        "not_found",
        "invalid",
    ];
    let mut by_class = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let names = table_names(line, &prefix);
        let Some(name) = names.iter().next() else {
            continue;
        };
        if line.contains("class") {
            by_class += usize::from(name.ends_with("errors_total"));
            if !classes.iter().all(|c| line.contains(c)) {
                breaches.push(format!(
                    "{name}: a `class` label takes the core's error classes ({})",
                    classes.join(", ")
                ));
            }
        }
    }
    if by_class == 0 {
        breaches.push(format!(
            "the shared vocabulary wants a {prefix}…errors_total counter labelled `class`"
        ));
    }

    breaches.extend(vocabulary(&readme, &prefix, &all, deprecated));

    let telemetry_path = dir.join("src/telemetry.rs");
    let telemetry = std::fs::read_to_string(&telemetry_path).expect("src/telemetry.rs");
    let declared = declared_constants(&telemetry);
    let values: BTreeSet<String> = declared.iter().map(|(_, v)| v.clone()).collect();
    if values != all {
        breaches.push(format!(
            "telemetry.rs declares {values:?} but ALL lists {all:?}"
        ));
    }

    let others: Vec<(PathBuf, String)> = rust_files(&dir.join("src"))
        .into_iter()
        .filter(|p| *p != telemetry_path)
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    // The telemetry module's own code: its event functions, without the declarations
    // and the ALL list.
    let events_code: String = {
        let without_all = match telemetry.split_once("pub const ALL") {
            Some((head, rest)) => format!("{head}{}", rest.split_once("];").map_or("", |x| x.1)),
            None => telemetry.clone(),
        };
        without_all
            .lines()
            .filter(|l| !l.trim_start().starts_with("pub const "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (ident, value) in &declared {
        let used = uses(&events_code, ident) || others.iter().any(|(_, text)| uses(text, ident));
        if !used {
            breaches.push(format!("{value} ({ident}) is declared but never used"));
        }
    }
    for event in event_functions(&telemetry) {
        if !others.iter().any(|(_, text)| uses(text, &event)) {
            breaches.push(format!("telemetry::{event} is an event nothing reports"));
        }
    }
    let literal = format!("\"{prefix}");
    for (path, text) in &others {
        for (n, line) in text.lines().enumerate() {
            if line.contains("metrics::") && !line.trim_start().starts_with("//") {
                breaches.push(format!(
                    "{}:{}: counting outside telemetry.rs (give the event a function there): {}",
                    path.display(),
                    n + 1,
                    line.trim()
                ));
            }
            if line.contains(&literal) {
                breaches.push(format!(
                    "{}:{}: a metric name spelled outside telemetry.rs: {}",
                    path.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        breaches.is_empty(),
        "the metric contract of {daemon} is broken:\n{}",
        breaches.join("\n")
    );
}

/// The breaches of the `sent` and `dropped` words of the vocabulary and of the
/// deprecation rule, in the README `readme` of a daemon whose names are `all`.
fn vocabulary(
    readme: &str,
    prefix: &str,
    all: &BTreeSet<String>,
    deprecated: &[(&str, &str)],
) -> Vec<String> {
    let mut breaches = Vec::new();
    let old: BTreeSet<&str> = deprecated.iter().map(|(o, _)| *o).collect();
    let rows: Vec<(String, &str)> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| Some((table_names(l, prefix).into_iter().next()?, l)))
        .collect();
    if !all
        .iter()
        .any(|n| n.ends_with("_sent_total") && !old.contains(n.as_str()))
    {
        breaches.push(format!(
            "the shared vocabulary wants a {prefix}…_sent_total for what the daemon delivered"
        ));
    }
    for (name, line) in &rows {
        if name.ends_with("_dropped_total") && !line.contains("reason") {
            breaches.push(format!("{name}: a …_dropped_total is labelled `reason`"));
        }
        let says = line.contains("**deprecated**");
        match deprecated.iter().find(|(o, _)| o == name) {
            Some((_, new)) if !says || !line.contains(&format!("`{new}")) => breaches.push(
                format!("{name}: its row says **deprecated** and names its replacement {new}"),
            ),
            None if says => breaches.push(format!(
                "{name}: the README says deprecated, but telemetry.rs's DEPRECATED lacks it"
            )),
            _ => {}
        }
    }
    for (o, new) in deprecated {
        if !all.contains(*o) || !all.contains(*new) || old.contains(new) {
            breaches.push(format!(
                "{o} → {new}: both names are exported (in ALL) and the new one is current"
            ));
        }
    }
    breaches
}

/// The metric names (`prefix…`, without labels) in the first cell of every table row.
pub fn table_names(markdown: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in markdown.lines() {
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        // A first cell may hold `a{label="x\|y"}`: the escaped pipe is not a cell border.
        let first = row.replace("\\|", "/");
        let first = first.split('|').next().unwrap_or_default();
        for code in first.split('`').skip(1).step_by(2) {
            if let Some(rest) = code.strip_prefix(prefix) {
                let tail: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                names.insert(format!("{prefix}{tail}"));
            }
        }
    }
    names
}

/// `(IDENT, "value")` for every `pub const IDENT: &str = "value";` of a telemetry module.
fn declared_constants(source: &str) -> Vec<(String, String)> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (ident, rest) = rest.split_once(": &str = \"")?;
            let (value, _) = rest.split_once('"')?;
            Some((ident.to_string(), value.to_string()))
        })
        .collect()
}

/// The names of the `pub fn`s of a telemetry module (its events).
fn event_functions(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("pub fn ")?;
            Some(rest.split(['(', '<']).next()?.to_string())
        })
        .collect()
}

/// Whether `text` names `ident` as a whole word.
fn uses(text: &str, ident: &str) -> bool {
    text.match_indices(ident).any(|(at, _)| {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let before = text[..at].chars().next_back().is_none_or(|c| !word(c));
        let after = text[at + ident.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word(c));
        before && after
    })
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_wants_sent_reasons_and_announced_renames() {
        let all: BTreeSet<String> = ["d_sent_total", "d_old_total", "d_x_dropped_total"]
            .map(String::from)
            .into();
        let good = "| `d_sent_total` | counter |\n\
                    | `d_old_total` | counter | **deprecated**: `d_sent_total` |\n\
                    | `d_x_dropped_total` | counter | `reason` = `a` |\n";
        let rename = [("d_old_total", "d_sent_total")];
        assert_eq!(vocabulary(good, "d_", &all, &rename), Vec::<String>::new());
        // A drop without reason, a rename the table does not announce, and one the
        // module does not know.
        let bad = "| `d_sent_total` | counter | **deprecated** |\n\
                   | `d_old_total` | counter | |\n\
                   | `d_x_dropped_total` | counter | |\n";
        let found = vocabulary(bad, "d_", &all, &rename);
        assert_eq!(found.len(), 3, "{found:?}");
        // With its only sent counter deprecated, a daemon has no sent counter.
        let found = vocabulary(good, "d_", &all, &[("d_sent_total", "d_old_total")]);
        assert!(
            found.iter().any(|b| b.contains("_sent_total for")),
            "{found:?}"
        );
    }

    #[test]
    fn table_names_reads_first_cells_only_and_drops_labels() {
        let md = "| metric | type |\n|---|---|\n\
                  | `d_a_total{x=\"1\\|2\"}` | counter |\n\
                  | `d_b`, `d_c_seconds` | gauge, `d_not_this` |\n\
                  Text mentioning `d_prose`.\n";
        let names: Vec<String> = table_names(md, "d_").into_iter().collect();
        assert_eq!(names, ["d_a_total", "d_b", "d_c_seconds"]);
    }

    #[test]
    fn event_functions_are_the_public_fns() {
        let src = "pub const A: &str = \"d_a\";\npub fn sent(n: u64) {}\nfn private() {}\npub fn generic<T>(t: T) {}\n";
        assert_eq!(event_functions(src), ["sent", "generic"]);
        assert_eq!(
            declared_constants(src),
            [("A".to_string(), "d_a".to_string())]
        );
    }

    #[test]
    fn uses_matches_whole_identifiers() {
        assert!(uses("telemetry::SENT)", "SENT"));
        assert!(!uses("telemetry::SENT_TOTAL", "SENT"));
        assert!(!uses("BYTES_SENT", "SENT"));
    }
}
