//! metricship's telemetry, in one place: every name it exports on `/metrics` for its own
//! health and its signal (the crate README's metrics table lists exactly [`ALL`], checked
//! by the contract test below; the StatsD series it relays are named by their senders)
//! and one function per notable event, which logs it and counts it, as vector's
//! `internal_events` do. No other module calls `metrics::` (the contract test checks).
//! The signal's own gauges are written by `prometheus.rs` into the exposition directly.

use std::fmt::Display;
use std::time::Duration;

/// Counter: UDP datagrams received.
pub const PACKETS_RECEIVED_TOTAL: &str = "metricship_packets_received_total";
/// Counter: bytes received in datagrams.
pub const BYTES_RECEIVED_TOTAL: &str = "metricship_bytes_received_total";
/// Counter: datagrams longer than the receive buffer (their tail is lost).
pub const PACKETS_TRUNCATED_TOTAL: &str = "metricship_packets_truncated_total";
/// Counter: errors reading the socket.
pub const RECEIVE_ERRORS_TOTAL: &str = "metricship_receive_errors_total";
/// Counter: datagrams the kernel dropped for a full socket buffer (the `drops` column of `/proc/net/udp`, when readable).
pub const KERNEL_RECEIVE_DROPS_TOTAL: &str = "metricship_kernel_receive_drops_total";
/// Counter: StatsD lines parsed.
pub const LINES_PARSED_TOTAL: &str = "metricship_lines_parsed_total";
/// Counter: lines that are not StatsD (skipped).
pub const LINES_MALFORMED_TOTAL: &str = "metricship_lines_malformed_total";
/// Counter: parsed lines not aggregated, by why (labels: `reason` = `mapping`, `ambiguous`, `type_conflict`, `series_cap`, `memory_budget`).
pub const LINES_DROPPED_TOTAL: &str = "metricship_lines_dropped_total";
/// Gauge: StatsD series held.
pub const LIVE_SERIES: &str = "metricship_live_series";
/// Counter: new series refused, by reason (`series_cap`, `memory_budget`).
pub const SERIES_DROPPED_TOTAL: &str = "metricship_series_dropped_total";
/// Counter: series dropped after going quiet.
pub const SERIES_EXPIRED_TOTAL: &str = "metricship_series_expired_total";
/// Counter, deprecated name of [`SERIES_DROPPED_TOTAL`]`{reason="memory_budget"}`,
/// still exported until the release after 0.1.
pub const SERIES_REFUSED_BUDGET_TOTAL: &str = "metricship_series_refused_budget_total";
/// Counter: set members refused by the memory budget.
pub const SET_MEMBERS_REFUSED_TOTAL: &str = "metricship_set_members_refused_total";
/// Counter: times the parsed-name cache was emptied to stay within the budget.
pub const NAME_CACHE_CLEARS_TOTAL: &str = "metricship_name_cache_clears_total";
/// Gauge: estimated bytes of aggregation state (labels: `part` = `cache`, `series`, `sets`).
pub const STATE_BYTES: &str = "metricship_state_bytes";
/// Gauge: the memory budget for that state.
pub const STATE_BYTES_LIMIT: &str = "metricship_state_bytes_limit";
/// Counter: flush intervals completed.
pub const FLUSHES_TOTAL: &str = "metricship_flushes_total";
/// Counter: flushes that failed with a bug (a panic; the next interval starts afresh).
pub const FLUSH_FAILURES_TOTAL: &str = "metricship_flush_failures_total";
/// Gauge: the signal: tasks waiting for a worker (sum of `pool.queued_slots.<pool>`).
pub const QUEUE_DEPTH: &str = "metricship_queue_depth";
/// Gauge: the signal: `executor.queued_tasks + executor.running_tasks`.
pub const TASK_DEMAND: &str = "metricship_task_demand";
/// Gauge: the signal: workers wanted, clamped to `[--min-workers, --max-workers]`.
pub const DESIRED_WORKERS: &str = "metricship_desired_workers";
/// Gauge: seconds since any signal input arrived.
pub const SOURCE_AGE_SECONDS: &str = "metricship_source_age_seconds";
/// Gauge: 1 for each signal input not seen yet (labels: `input`).
pub const SIGNAL_INPUT_MISSING: &str = "metricship_signal_input_missing";
/// Counter: flushes that withheld a signal metric for a missing input (labels: `metric`).
pub const SIGNAL_WITHHELD_TOTAL: &str = "metricship_signal_withheld_total";
/// Counter: datums dropped before sending because CloudWatch would reject them (labels: `reason` = `metric_name`, `dimension`, `value`, ...).
pub const DATUMS_INVALID_TOTAL: &str = "metricship_datums_invalid_total";
/// Counter: datums CloudWatch accepted.
pub const CLOUDWATCH_DATUMS_SENT_TOTAL: &str = "metricship_cloudwatch_datums_sent_total";
/// Counter: PutMetricData calls that succeeded (labels: `result` = `ok`).
pub const CLOUDWATCH_REQUESTS_TOTAL: &str = "metricship_cloudwatch_requests_total";
/// Counter: PutMetricData calls that failed, by class (labels: `class` = `transient`, `throttled`, `access_denied`, `not_found`, `invalid`).
pub const CLOUDWATCH_ERRORS_TOTAL: &str = "metricship_cloudwatch_errors_total";
/// Counter: datums given up on (labels: `reason` = `backlog_full`, `rejected`, `shutdown`).
pub const CLOUDWATCH_DATUMS_DROPPED_TOTAL: &str = "metricship_cloudwatch_datums_dropped_total";
/// Counter: rejected requests split to find the bad datum.
pub const CLOUDWATCH_BATCHES_SPLIT_TOTAL: &str = "metricship_cloudwatch_batches_split_total";
/// Gauge: datums waiting to be sent.
pub const CLOUDWATCH_BACKLOG_DATUMS: &str = "metricship_cloudwatch_backlog_datums";
/// Histogram: PutMetricData latency.
pub const CLOUDWATCH_REQUEST_SECONDS: &str = "metricship_cloudwatch_request_seconds";
/// Gauge: Unix time of the last interval an output took (a PutMetricData call CloudWatch accepted, or EMF lines written).
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "metricship_last_success_timestamp_seconds";
/// Counter: EMF lines written to stdout.
pub const EMF_LINES_TOTAL: &str = "metricship_emf_lines_total";
/// Counter: EMF lines that could not be written.
pub const EMF_WRITE_ERRORS_TOTAL: &str = "metricship_emf_write_errors_total";

/// Names renamed to the shared vocabulary, each with its replacement: both are
/// exported (with the same values) for one more release, so that dashboards can move.
pub const DEPRECATED: &[(&str, &str)] = &[(SERIES_REFUSED_BUDGET_TOTAL, SERIES_DROPPED_TOTAL)];

/// Every name above, for the contract test.
pub const ALL: &[&str] = &[
    PACKETS_RECEIVED_TOTAL,
    BYTES_RECEIVED_TOTAL,
    PACKETS_TRUNCATED_TOTAL,
    RECEIVE_ERRORS_TOTAL,
    KERNEL_RECEIVE_DROPS_TOTAL,
    LINES_PARSED_TOTAL,
    LINES_MALFORMED_TOTAL,
    LINES_DROPPED_TOTAL,
    LIVE_SERIES,
    SERIES_DROPPED_TOTAL,
    SERIES_EXPIRED_TOTAL,
    SERIES_REFUSED_BUDGET_TOTAL,
    SET_MEMBERS_REFUSED_TOTAL,
    NAME_CACHE_CLEARS_TOTAL,
    STATE_BYTES,
    STATE_BYTES_LIMIT,
    FLUSHES_TOTAL,
    FLUSH_FAILURES_TOTAL,
    QUEUE_DEPTH,
    TASK_DEMAND,
    DESIRED_WORKERS,
    SOURCE_AGE_SECONDS,
    SIGNAL_INPUT_MISSING,
    SIGNAL_WITHHELD_TOTAL,
    DATUMS_INVALID_TOTAL,
    CLOUDWATCH_DATUMS_SENT_TOTAL,
    CLOUDWATCH_REQUESTS_TOTAL,
    CLOUDWATCH_ERRORS_TOTAL,
    CLOUDWATCH_DATUMS_DROPPED_TOTAL,
    CLOUDWATCH_BATCHES_SPLIT_TOTAL,
    CLOUDWATCH_BACKLOG_DATUMS,
    CLOUDWATCH_REQUEST_SECONDS,
    LAST_SUCCESS_TIMESTAMP_SECONDS,
    EMF_LINES_TOTAL,
    EMF_WRITE_ERRORS_TOTAL,
];

// --- the flush loop ----------------------------------------------------------------------

/// An interval was flushed: its summary line and count.
pub fn interval_flushed(
    datums: usize,
    invalid: usize,
    live_series: usize,
    signal: [Option<f64>; 3],
) {
    let [queue_depth, task_demand, desired_workers] = signal;
    tracing::info!(
        datums,
        invalid,
        live_series,
        queue_depth,
        task_demand,
        desired_workers,
        "flushed interval"
    );
    metrics::counter!(FLUSHES_TOTAL).increment(1);
}

/// Flushing an interval panicked (a bug): its datums are lost, the next starts afresh.
pub fn flush_failed(error: &dyn Display) {
    metrics::counter!(FLUSH_FAILURES_TOTAL).increment(1);
    tracing::error!(error = %error, "flushing an interval failed; its datums are lost");
}

/// A signal metric was withheld this interval: an input it needs is stale.
pub fn signal_withheld(metric: &'static str) {
    metrics::counter!(SIGNAL_WITHHELD_TOTAL, "metric" => metric).increment(1);
}

/// Whether each signal input is missing now (1) or fresh (0).
pub fn signal_input_missing(input: &'static str, missing: bool) {
    metrics::gauge!(SIGNAL_INPUT_MISSING, "input" => input).set(if missing { 1.0 } else { 0.0 });
}

/// Datums that break a documented CloudWatch rule were dropped before sending:
/// `by_reason` maps each reason to (count, an example metric); logged once per interval.
pub fn datums_invalid(
    total: usize,
    by_reason: &std::collections::BTreeMap<&'static str, (u64, &str)>,
) {
    for (reason, (n, _)) in by_reason {
        metrics::counter!(DATUMS_INVALID_TOTAL, "reason" => *reason).increment(*n);
    }
    tracing::warn!(
        dropped = total,
        reasons = ?by_reason,
        "datums that CloudWatch would reject were not sent (reason: (count, an example metric))"
    );
}

/// Zeroes for each reason, so that a rate() over them exists before the first drop.
pub fn datums_invalid_reasons(reasons: impl IntoIterator<Item = &'static str>) {
    for reason in reasons {
        metrics::counter!(DATUMS_INVALID_TOTAL, "reason" => reason).increment(0);
    }
}

/// The CloudWatch backlog was full: the oldest datums were dropped.
pub fn backlog_overflowed(dropped: u64, backlog: usize) {
    metrics::counter!(CLOUDWATCH_DATUMS_DROPPED_TOTAL, "reason" => "backlog_full")
        .increment(dropped);
    tracing::warn!(
        dropped,
        backlog,
        "CloudWatch backlog full: dropped the oldest datums"
    );
}

/// An interval's EMF lines were written to stdout.
pub fn emf_written(lines: u64) {
    metrics::counter!(EMF_LINES_TOTAL).increment(lines);
    output_succeeded();
}

/// Writing an interval's EMF lines failed: its datums are lost.
pub fn emf_write_failed(error: &dyn Display, datums: usize) {
    metrics::counter!(EMF_WRITE_ERRORS_TOTAL).increment(1);
    tracing::error!(error = %error, datums, "cannot write EMF lines to stdout; this interval's datums are lost");
}

/// An output took an interval: the last-success gauge every daemon has.
fn output_succeeded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(LAST_SUCCESS_TIMESTAMP_SECONDS).set(now.as_secs_f64());
}

// --- the CloudWatch publisher ------------------------------------------------------------

/// A PutMetricData call returned (either way) after `took`.
pub fn request_took(took: Duration) {
    metrics::histogram!(CLOUDWATCH_REQUEST_SECONDS).record(took.as_secs_f64());
}

/// CloudWatch accepted a request of `datums` datums.
pub fn request_accepted(datums: usize) {
    metrics::counter!(CLOUDWATCH_DATUMS_SENT_TOTAL).increment(datums as u64);
    metrics::counter!(CLOUDWATCH_REQUESTS_TOTAL, "result" => "ok").increment(1);
    output_succeeded();
    tracing::debug!(datums, "PutMetricData sent");
}

/// A PutMetricData call failed with an error of `class`.
pub fn request_failed(class: &'static str) {
    metrics::counter!(CLOUDWATCH_ERRORS_TOTAL, "class" => class).increment(1);
}

/// CloudWatch rejected a request for a rule metricship does not know: it is halved to
/// find the datum.
pub fn request_split(datums: usize, error: &str) {
    metrics::counter!(CLOUDWATCH_BATCHES_SPLIT_TOTAL).increment(1);
    tracing::warn!(datums, error = %error, "CloudWatch rejected a request; splitting it to find the datum it rejects");
}

/// CloudWatch rejected a request of one datum (or of datums that cannot be split): dropped.
pub fn datums_rejected(
    datums: usize,
    metric: Option<&str>,
    dimensions: &dyn std::fmt::Debug,
    error: &str,
) {
    metrics::counter!(CLOUDWATCH_DATUMS_DROPPED_TOTAL, "reason" => "rejected")
        .increment(datums as u64);
    tracing::error!(
        datums,
        metric,
        dimensions = ?dimensions,
        error = %error,
        "CloudWatch rejected a datum; dropped it"
    );
}

/// The drain timeout ended with datums still in the backlog: they are lost.
pub fn backlog_lost_at_shutdown(datums: usize, timeout: &dyn Display) {
    metrics::counter!(CLOUDWATCH_DATUMS_DROPPED_TOTAL, "reason" => "shutdown")
        .increment(datums as u64);
    tracing::error!(datums_lost = datums, %timeout, "backlog not drained before the drain timeout");
}

// --- health, once a second ---------------------------------------------------------------

/// metricship's own state, copied into the registry once a second (`health.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    /// Datagrams received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Datagrams cut by the receive buffer.
    pub truncated: u64,
    /// Socket read errors.
    pub receive_errors: u64,
    /// Datagrams the kernel dropped, when `/proc/net/udp` is readable.
    pub kernel_drops: Option<u64>,
    /// Lines parsed.
    pub lines: u64,
    /// Lines that are not StatsD.
    pub malformed: u64,
    /// Lines dropped by a mapping rule.
    pub dropped_mapping: u64,
    /// Lines dropped as ambiguous.
    pub dropped_ambiguous: u64,
    /// Lines dropped for a type conflict.
    pub dropped_type_conflict: u64,
    /// Lines dropped by the series cap.
    pub dropped_series_cap: u64,
    /// Lines dropped by the memory budget.
    pub dropped_memory_budget: u64,
    /// New series refused by the series cap.
    pub series_dropped: u64,
    /// Series expired after going quiet.
    pub series_expired: u64,
    /// New series refused by the memory budget.
    pub series_refused_budget: u64,
    /// Set members refused by the memory budget.
    pub set_members_refused: u64,
    /// Times the name cache was emptied.
    pub cache_clears: u64,
    /// Live series.
    pub live_series: usize,
    /// Estimated bytes of the name cache, the series and the sets.
    pub state_bytes: [usize; 3],
    /// The memory budget.
    pub state_bytes_limit: usize,
    /// Datums in the CloudWatch backlog.
    pub backlog_datums: usize,
}

/// Copies a [`Health`] snapshot into the registry.
pub fn health(h: &Health) {
    metrics::counter!(PACKETS_RECEIVED_TOTAL).absolute(h.packets);
    metrics::counter!(BYTES_RECEIVED_TOTAL).absolute(h.bytes);
    metrics::counter!(PACKETS_TRUNCATED_TOTAL).absolute(h.truncated);
    metrics::counter!(RECEIVE_ERRORS_TOTAL).absolute(h.receive_errors);
    if let Some(d) = h.kernel_drops {
        metrics::counter!(KERNEL_RECEIVE_DROPS_TOTAL).absolute(d);
    }
    metrics::counter!(LINES_PARSED_TOTAL).absolute(h.lines);
    metrics::counter!(LINES_MALFORMED_TOTAL).absolute(h.malformed);
    for (reason, n) in [
        ("mapping", h.dropped_mapping),
        ("ambiguous", h.dropped_ambiguous),
        ("type_conflict", h.dropped_type_conflict),
        ("series_cap", h.dropped_series_cap),
        ("memory_budget", h.dropped_memory_budget),
    ] {
        metrics::counter!(LINES_DROPPED_TOTAL, "reason" => reason).absolute(n);
    }
    metrics::counter!(SERIES_DROPPED_TOTAL, "reason" => "series_cap").absolute(h.series_dropped);
    metrics::counter!(SERIES_DROPPED_TOTAL, "reason" => "memory_budget")
        .absolute(h.series_refused_budget);
    metrics::counter!(SERIES_EXPIRED_TOTAL).absolute(h.series_expired);
    metrics::counter!(SERIES_REFUSED_BUDGET_TOTAL).absolute(h.series_refused_budget);
    metrics::counter!(SET_MEMBERS_REFUSED_TOTAL).absolute(h.set_members_refused);
    metrics::counter!(NAME_CACHE_CLEARS_TOTAL).absolute(h.cache_clears);
    for (part, n) in ["cache", "series", "sets"].into_iter().zip(h.state_bytes) {
        metrics::gauge!(STATE_BYTES, "part" => part).set(n as f64);
    }
    metrics::gauge!(STATE_BYTES_LIMIT).set(h.state_bytes_limit as f64);
    metrics::gauge!(LIVE_SERIES).set(h.live_series as f64);
    metrics::gauge!(CLOUDWATCH_BACKLOG_DATUMS).set(h.backlog_datums as f64);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(
            env!("CARGO_MANIFEST_DIR"),
            "metricship",
            super::ALL,
            super::DEPRECATED,
        );
    }
}
