//! Every name metricship exports on `/metrics` for its own health and its signal, in
//! one place: the crate README's metrics table lists exactly [`ALL`] (checked by the
//! contract test below). The StatsD series it relays are named by their senders.

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
/// Counter: new series refused by the series cap.
pub const SERIES_DROPPED_TOTAL: &str = "metricship_series_dropped_total";
/// Counter: series dropped after going quiet.
pub const SERIES_EXPIRED_TOTAL: &str = "metricship_series_expired_total";
/// Counter: new series refused by the memory budget.
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(
            env!("CARGO_MANIFEST_DIR"),
            "metricship",
            super::ALL,
        );
    }
}
