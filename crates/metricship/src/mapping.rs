//! Mapping rules: dotted StatsD names → a metric name plus labels, or drop.
//!
//! The file format follows prometheus statsd_exporter's mapping YAML, so its
//! users can bring their files:
//!
//! ```yaml
//! mappings:
//!   - match: "airflow.dagrun.duration.success.*"
//!     name: "airflow_dagrun_duration_seconds"
//!     labels: { dag_id: "$1", state: "success" }
//!   - match: 'airflow\.ti\.finish\.(.+)\.(.+)\.(.+)'
//!     match_type: regex
//!     name: "airflow_ti_finish"
//!     labels: { dag_id: "$1", task_id: "$2", state: "$3" }
//!   - match: "airflow.noisy.*"
//!     action: drop
//!     name: dropped
//! ```
//!
//! Supported keys: `match`, `match_type` (`glob`, default, or `regex`),
//! `match_metric_type` (`counter`, `gauge`, `observer`), `name`, `labels`,
//! `action` (`map`, `drop`), `help`, `buckets` / `histogram_options.buckets`.
//! statsd_exporter keys metricship does not use (`timer_type`, `observer_type`,
//! `summary_options`, `ttl`, `defaults`, ...) are accepted and ignored, so a file
//! loads unchanged. One metricship extension: `require_tags: [pool_name]` drops
//! a line that lacks those tags (see the Airflow 3 collision in [`crate::catalogue`]).
//!
//! In a glob, `*` matches one dot-separated component (`[^.]+`) and is captured
//! as `$1`, `$2`, ...; rules are tried in file order and the first match wins.
//! User rules come before the built-in Airflow catalogue. Names nothing matches
//! are sanitised (`airflow.scheduler_heartbeat` → `airflow_scheduler_heartbeat`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

use crate::statsd::{Line, MetricType};

/// A mapping file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("cannot read mapping file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is invalid.
    #[error("invalid mapping file {path}: {message}")]
    Yaml {
        /// The path (or `built-in`).
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A rule is invalid.
    #[error("invalid mapping rule {index} ({pattern:?}) in {path}: {message}")]
    Rule {
        /// The path (or `built-in`).
        path: String,
        /// 0-based position of the rule.
        index: usize,
        /// Its `match`.
        pattern: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
struct FileDoc {
    #[serde(default)]
    mappings: Vec<RuleDoc>,
}

#[derive(Debug, Deserialize)]
struct RuleDoc {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(default)]
    match_type: Option<String>,
    #[serde(default)]
    match_metric_type: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    help: Option<String>,
    #[serde(default)]
    buckets: Option<Vec<f64>>,
    #[serde(default)]
    histogram_options: Option<HistogramOptions>,
    #[serde(default)]
    require_tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct HistogramOptions {
    #[serde(default)]
    buckets: Option<Vec<f64>>,
}

/// Which metric types a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeFilter {
    Any,
    Counter,
    Gauge,
    Observer,
}

#[derive(Debug)]
struct Rule {
    regex: Regex,
    filter: TypeFilter,
    name: Option<String>,
    labels: Vec<(String, String)>,
    drop: bool,
    help: Option<Arc<str>>,
    buckets: Option<Arc<[f64]>>,
    require_tags: Vec<String>,
}

/// The outcome of mapping one line's name and tags.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Keep: the metric name and its labels (sorted by name, unique).
    Keep(Target),
    /// A rule said drop.
    Drop,
    /// A rule requires tags the line does not have (an ambiguous name).
    Ambiguous,
}

/// Where a line's samples go.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Prometheus-safe metric name.
    pub name: String,
    /// Labels, sorted by name, names Prometheus-safe.
    pub labels: Vec<(String, String)>,
    /// Help text, if a rule gave one.
    pub help: Option<Arc<str>>,
    /// Histogram buckets, if a rule gave them.
    pub buckets: Option<Arc<[f64]>>,
}

/// An ordered list of rules: the user's file first, then the built-in catalogue.
#[derive(Debug, Default)]
pub struct Mapper {
    rules: Vec<Rule>,
}

impl Mapper {
    /// Rules from YAML text (`origin` names it in errors).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, MappingError> {
        let doc: FileDoc = serde_norway::from_str(text).map_err(|e| MappingError::Yaml {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut rules = Vec::with_capacity(doc.mappings.len());
        for (index, r) in doc.mappings.into_iter().enumerate() {
            let fail = |message: String| MappingError::Rule {
                path: origin.to_string(),
                index,
                pattern: r.pattern.clone(),
                message,
            };
            let regex_text = match r.match_type.as_deref().unwrap_or("glob") {
                "glob" => glob_to_regex(&r.pattern),
                "regex" => format!("^(?:{})$", r.pattern),
                other => return Err(fail(format!("match_type {other:?} is not glob or regex"))),
            };
            let regex = Regex::new(&regex_text).map_err(|e| fail(e.to_string()))?;
            let filter = match r.match_metric_type.as_deref() {
                None | Some("") => TypeFilter::Any,
                Some("counter") => TypeFilter::Counter,
                Some("gauge") => TypeFilter::Gauge,
                Some("observer") | Some("timer") | Some("histogram") | Some("distribution") => {
                    TypeFilter::Observer
                }
                Some(other) => return Err(fail(format!("unknown match_metric_type {other:?}"))),
            };
            let drop = match r.action.as_deref().unwrap_or("map") {
                "map" => false,
                "drop" => true,
                other => return Err(fail(format!("action {other:?} is not map or drop"))),
            };
            if !drop && r.name.as_deref().unwrap_or("").is_empty() {
                return Err(fail("a mapping rule needs a name".into()));
            }
            let buckets = r
                .histogram_options
                .and_then(|h| h.buckets)
                .or(r.buckets)
                .map(|mut b| {
                    b.retain(|x| x.is_finite());
                    b.sort_by(f64::total_cmp);
                    b.dedup();
                    Arc::from(b)
                });
            rules.push(Rule {
                regex,
                filter,
                name: r.name,
                labels: r.labels.into_iter().collect(),
                drop,
                help: r.help.map(Arc::from),
                buckets,
                require_tags: r.require_tags,
            });
        }
        Ok(Self { rules })
    }

    /// Rules from a file.
    pub fn from_file(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Appends another mapper's rules after this one's (lower priority).
    pub fn then(mut self, other: Mapper) -> Self {
        self.rules.extend(other.rules);
        self
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Maps a parsed line's name and tags. Tags become labels; rule labels win over tags.
    pub fn map(&self, line: &Line<'_>) -> Mapped {
        for rule in &self.rules {
            if !rule.filter.accepts(line.kind) {
                continue;
            }
            let Some(caps) = rule.regex.captures(line.name) else {
                continue;
            };
            if rule.drop {
                return Mapped::Drop;
            }
            if rule
                .require_tags
                .iter()
                .any(|t| line.tag(t).is_none_or(str::is_empty))
            {
                return Mapped::Ambiguous;
            }
            let name = sanitize_name(&expand(rule.name.as_deref().unwrap_or(""), &caps));
            let mut labels = tag_labels(line);
            for (k, v) in &rule.labels {
                let k = sanitize_label(k);
                let v = expand(v, &caps);
                labels.retain(|(lk, _)| *lk != k);
                if !v.is_empty() {
                    labels.push((k, v));
                }
            }
            labels.sort();
            return Mapped::Keep(Target {
                name,
                labels,
                help: rule.help.clone(),
                buckets: rule.buckets.clone(),
            });
        }
        let mut labels = tag_labels(line);
        labels.sort();
        Mapped::Keep(Target {
            name: sanitize_name(line.name),
            labels,
            help: None,
            buckets: None,
        })
    }
}

impl TypeFilter {
    fn accepts(self, kind: MetricType) -> bool {
        match self {
            TypeFilter::Any => true,
            TypeFilter::Counter => kind == MetricType::Counter,
            TypeFilter::Gauge => kind == MetricType::Gauge,
            TypeFilter::Observer => kind.is_observer(),
        }
    }
}

fn tag_labels(line: &Line<'_>) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for (k, v) in line.tags() {
        let k = sanitize_label(k);
        // Last one wins for a repeated tag, as in statsd_exporter.
        labels.retain(|(lk, _)| *lk != k);
        labels.push((k, v.to_string()));
    }
    labels
}

/// Converts a statsd_exporter glob to an anchored regex: `*` is one dot-separated component.
fn glob_to_regex(glob: &str) -> String {
    let mut out = String::from("^");
    for (i, part) in glob.split('*').enumerate() {
        if i > 0 {
            out.push_str("([^.]+)");
        }
        out.push_str(&regex::escape(part));
    }
    out.push('$');
    out
}

/// Expands `$1`, `${1}` (and `$0`) from the captures.
fn expand(template: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let (digits, skip) = if bytes.get(i + 1) == Some(&b'{') {
                let end = template[i + 2..].find('}').map(|e| i + 2 + e);
                match end {
                    Some(end) => (&template[i + 2..end], end + 1 - i),
                    None => ("", 0),
                }
            } else {
                let n = template[i + 1..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .count();
                (&template[i + 1..i + 1 + n], n + 1)
            };
            if let (false, Ok(idx)) = (digits.is_empty(), digits.parse::<usize>()) {
                if let Some(m) = caps.get(idx) {
                    out.push_str(m.as_str());
                }
                i += skip;
                continue;
            }
        }
        // Copy one UTF-8 character.
        let ch = template[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Makes a Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

/// Makes a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn sanitize_label(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statsd::parse_line;

    fn map(m: &Mapper, line: &str) -> Mapped {
        m.map(&parse_line(line.as_bytes()).unwrap())
    }

    fn keep(name: &str, labels: &[(&str, &str)]) -> Mapped {
        Mapped::Keep(Target {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            help: None,
            buckets: None,
        })
    }

    #[test]
    fn statsd_exporter_style_file() {
        let m = Mapper::from_yaml(
            r#"
defaults:
  observer_type: histogram
  ttl: 10m
mappings:
  - match: "airflow.dagrun.duration.*.*"
    name: "airflow_dagrun_duration"
    timer_type: summary
    labels:
      state: "$1"
      dag_id: "${2}"
  - match: 'airflow\.ti\.finish\.([^.]+)\.([^.]+)\.(.+)'
    match_type: regex
    name: "airflow_ti_finish"
    labels: { dag_id: "$1", task_id: "$2", state: "$3" }
  - match: "airflow.noisy.*"
    action: drop
    name: "dropped"
  - match: "airflow.only_gauge"
    match_metric_type: gauge
    name: "the_gauge"
"#,
            "test",
        )
        .unwrap();
        assert_eq!(
            map(&m, "airflow.dagrun.duration.success.etl:12|ms"),
            keep(
                "airflow_dagrun_duration",
                &[("dag_id", "etl"), ("state", "success")]
            )
        );
        assert_eq!(
            map(&m, "airflow.ti.finish.etl.load.failed:1|c"),
            keep(
                "airflow_ti_finish",
                &[("dag_id", "etl"), ("state", "failed"), ("task_id", "load")]
            )
        );
        assert_eq!(map(&m, "airflow.noisy.x:1|c"), Mapped::Drop);
        assert_eq!(map(&m, "airflow.only_gauge:1|g"), keep("the_gauge", &[]));
        // The type filter does not match a counter: falls through to sanitising.
        assert_eq!(
            map(&m, "airflow.only_gauge:1|c"),
            keep("airflow_only_gauge", &[])
        );
        // A glob star is one component, so one more component does not match.
        assert_eq!(
            map(&m, "airflow.dagrun.duration.success.etl.extra:1|ms"),
            keep("airflow_dagrun_duration_success_etl_extra", &[])
        );
    }

    #[test]
    fn tags_become_labels_and_rule_labels_win() {
        let m = Mapper::from_yaml(
            "mappings:\n  - match: a.*\n    name: a_$1\n    labels: { env: fixed }\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            map(&m, "a.b:1|c|#env:prod,host:h-1"),
            keep("a_b", &[("env", "fixed"), ("host", "h-1")])
        );
        assert_eq!(
            map(&m, "x.y-z:1|c|#my.tag:v"),
            keep("x_y_z", &[("my_tag", "v")])
        );
    }

    #[test]
    fn require_tags_marks_ambiguous_lines() {
        let m = Mapper::from_yaml(
            "mappings:\n  - match: pool.queued_slots\n    name: q\n    require_tags: [pool_name]\n",
            "t",
        )
        .unwrap();
        assert_eq!(map(&m, "pool.queued_slots:3|g"), Mapped::Ambiguous);
        assert_eq!(
            map(&m, "pool.queued_slots:3|g|#pool_name:p"),
            keep("q", &[("pool_name", "p")])
        );
    }

    #[test]
    fn bad_rules_are_reported() {
        for (text, needle) in [
            ("mappings:\n  - match: a\n", "needs a name"),
            (
                "mappings:\n  - match: '('\n    match_type: regex\n    name: x\n",
                "regex",
            ),
            (
                "mappings:\n  - match: a\n    name: x\n    action: keep\n",
                "action",
            ),
            ("mappings: [", "invalid mapping file"),
        ] {
            let err = Mapper::from_yaml(text, "t").unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(
            sanitize_name("airflow.scheduler_heartbeat"),
            "airflow_scheduler_heartbeat"
        );
        assert_eq!(sanitize_name("9lives"), "_9lives");
        assert_eq!(sanitize_name("a-b/c"), "a_b_c");
        assert_eq!(sanitize_label("pool-name"), "pool_name");
    }
}
