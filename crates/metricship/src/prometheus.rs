//! The Prometheus text exposition of the StatsD series and of the signal.
//!
//! Rendered on each scrape of `/metrics` (appended after metricship's own
//! health metrics, which the core's registry renders). Counters are
//! cumulative, gauges the last value, sets the distinct count of the last
//! interval, and timers/histograms/distributions Prometheus histograms
//! (timers converted from milliseconds to seconds).

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aggregate::{Aggregator, PromValue, SeriesCursor};
use crate::pipeline::Shared;
use crate::signal::Signal;

fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn labels(pairs: &[(Box<str>, Box<str>)], extra: Option<(&str, &str)>, out: &mut String) {
    if pairs.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in pairs.iter().map(|(k, v)| (&**k, &**v)).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push('}');
}

/// HELP text as the exposition format wants it: "`\\` and newline are escaped as `\\\\`
/// and `\\n`" (a mapping file's help text is the user's, and may hold either).
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64, out: &mut String) {
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Renders every live series, grouped by metric name with one `# TYPE` line each.
pub fn render_series(agg: &Aggregator, out: &mut String) {
    let mut cursor = SeriesCursor::default();
    while render_series_chunk(agg, &mut cursor, usize::MAX, out) {}
}

/// Renders the live series after `cursor` (in order of name, then labels) until `out`
/// holds at least `budget` bytes, and moves the cursor past them. Returns whether series
/// may be left. A scrape renders chunk by chunk, taking the aggregation lock per chunk,
/// so the receiver is never stopped for a whole scrape and the text is never whole in
/// memory; a series is never split between chunks.
pub fn render_series_chunk(
    agg: &Aggregator,
    cursor: &mut SeriesCursor,
    budget: usize,
    out: &mut String,
) -> bool {
    // The name of the last series rendered, possibly in an earlier chunk: a name's
    // `# TYPE` line comes once, before its first series.
    let mut current: Option<&str> = cursor.0.as_deref().map(|id| id.name());
    let mut last = None;
    let mut le = String::with_capacity(16);
    for (id, (name, l, help, value)) in agg.series_after(cursor) {
        if current != Some(name) {
            current = Some(name);
            if let Some(h) = help {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push(' ');
                escape_help(h, out);
                out.push('\n');
            }
            let kind = match value {
                PromValue::Counter(_) => "counter",
                PromValue::Gauge(_) => "gauge",
                PromValue::Histogram { .. } => "histogram",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        render_one(name, l, value, &mut le, out);
        if out.len() >= budget {
            last = Some(id.clone());
            break;
        }
    }
    match last {
        Some(id) => {
            cursor.0 = Some(id);
            true
        }
        None => false,
    }
}

/// One series' lines; `le` is scratch space for bucket bounds, reused across series.
fn render_one(
    name: &str,
    l: &[(Box<str>, Box<str>)],
    value: PromValue<'_>,
    le: &mut String,
    out: &mut String,
) {
    match value {
        PromValue::Counter(v) | PromValue::Gauge(v) => {
            out.push_str(name);
            labels(l, None, out);
            out.push(' ');
            number(v, out);
            out.push('\n');
        }
        PromValue::Histogram {
            buckets,
            counts,
            sum,
            count,
        } => {
            let mut cumulative = 0.0;
            for (b, c) in buckets.iter().zip(counts.iter()) {
                cumulative += c;
                le.clear();
                number(*b, le);
                out.push_str(name);
                out.push_str("_bucket");
                labels(l, Some(("le", le)), out);
                out.push(' ');
                number(cumulative, out);
                out.push('\n');
            }
            out.push_str(name);
            out.push_str("_bucket");
            labels(l, Some(("le", "+Inf")), out);
            out.push(' ');
            number(count, out);
            out.push('\n');
            for (suffix, v) in [("_sum", sum), ("_count", count)] {
                out.push_str(name);
                out.push_str(suffix);
                labels(l, None, out);
                out.push(' ');
                number(v, out);
                out.push('\n');
            }
        }
    }
}

/// Renders the autoscaling signal (absent while withheld) and the source age.
pub fn render_signal(signal: Option<Signal>, source_age: Option<Duration>, out: &mut String) {
    if let Some(s) = signal {
        for (name, help, value) in [
            (
                crate::telemetry::QUEUE_DEPTH,
                "Tasks waiting for a worker: the sum over pools of Airflow's pool.queued_slots.",
                s.queue_depth,
            ),
            (
                crate::telemetry::TASK_DEMAND,
                "Executor queued plus running tasks.",
                s.task_demand,
            ),
            (
                crate::telemetry::DESIRED_WORKERS,
                "ceil(task demand / worker concurrency), clamped to [min, max] workers.",
                s.desired_workers,
            ),
        ] {
            // Each metric is absent while its own inputs are stale (withheld).
            if let Some(v) = value {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
    }
    if let Some(age) = source_age {
        let name = crate::telemetry::SOURCE_AGE_SECONDS;
        let help = "Seconds since the scheduler last sent a signal input.";
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            age.as_secs_f64()
        );
    }
}

/// Text of a chunk of the StatsD series on `/metrics`: enough to keep a write going,
/// small next to the series themselves (100,000 series are ~40 MB of text).
const EXPOSITION_CHUNK: usize = 64 * 1024;

/// One scrape's StatsD series and signal, rendered a chunk at a time as the client reads
/// (see [`render_series_chunk`]).
pub(crate) struct Exposition {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cursor: SeriesCursor,
    pub(crate) series_left: bool,
    pub(crate) done: bool,
}

impl Iterator for Exposition {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        // Room for the last series of the chunk too (a histogram is ~1 KiB of text).
        let mut out = String::with_capacity(EXPOSITION_CHUNK + 8 * 1024);
        if self.series_left {
            let agg = self
                .shared
                .aggregator
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.series_left =
                render_series_chunk(&agg, &mut self.cursor, EXPOSITION_CHUNK, &mut out);
            return Some(out);
        }
        self.done = true;
        let source_age = self
            .shared
            .aggregator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .signal
            .source_age(Instant::now());
        let signal = *self
            .shared
            .last_signal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The signal stays on /metrics only while the source is fresh.
        let signal = signal
            .filter(|_| source_age.is_some_and(|a| a <= self.shared.signal_settings.freshness));
        render_signal(signal, source_age, &mut out);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorSettings;
    use crate::datum::Allowlist;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn exposition_groups_and_escapes() {
        let mut a = Aggregator::new(
            Arc::new(crate::mapping::Mapper::default()),
            AggregatorSettings {
                max_series: 100,
                ttl: Duration::from_secs(60),
                prefix: "airflow".into(),
                allowlist: Allowlist::new(&[]).unwrap(),
                max_bytes: 64 << 20,
            },
        );
        let now = Instant::now();
        a.ingest_packet(
            b"airflow.scheduler_heartbeat:1|c\nairflow.scheduler_heartbeat:2|c\nq:3|g|#pool:a\"b\nq:4|g|#pool:c\nt:250|ms\nt:2000|ms",
            now,
        );
        let mut out = String::new();
        render_series(&a, &mut out);
        assert!(
            out.contains(
                "# TYPE airflow_scheduler_heartbeat counter\nairflow_scheduler_heartbeat 3\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches("# TYPE q gauge").count(), 1, "{out}");
        assert!(out.contains("q{pool=\"a\\\"b\"} 3\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.25\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"2.5\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("t_sum 2.25\n"), "{out}");
        assert!(out.contains("t_count 2\n"), "{out}");
    }

    #[test]
    fn help_text_escapes_backslashes_and_newlines() {
        let mut out = String::new();
        escape_help("C:\\dags\nsecond \"line\"", &mut out);
        // A backslash left alone would make `\n` in the text read as a newline.
        assert_eq!(out, "C:\\\\dags\\nsecond \"line\"");
    }

    #[test]
    fn signal_is_absent_when_withheld() {
        let mut out = String::new();
        render_signal(None, Some(Duration::from_secs(90)), &mut out);
        assert!(!out.contains(crate::telemetry::QUEUE_DEPTH), "{out}");
        let age = format!("{} 90\n", crate::telemetry::SOURCE_AGE_SECONDS);
        assert!(out.contains(&age), "{out}");
        out.clear();
        render_signal(
            Some(Signal {
                queue_depth: Some(4.0),
                task_demand: None,
                desired_workers: None,
            }),
            None,
            &mut out,
        );
        let depth = format!("{} 4\n", crate::telemetry::QUEUE_DEPTH);
        assert!(out.contains(&depth), "{out}");
        assert!(!out.contains(crate::telemetry::DESIRED_WORKERS), "{out}");
    }
}
