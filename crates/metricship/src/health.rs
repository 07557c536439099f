//! metricship's own health on `/metrics`: the receive counters and the aggregator's
//! statistics, copied into the metrics registry once a second.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use airside_core::shutdown::Shutdown;

use crate::pipeline::Shared;
use crate::{ingest, rules};

/// Publishes the receive counters and ingest statistics to the metrics registry once a second.
pub(crate) async fn export_health(
    shared: Arc<Shared>,
    kernel_drops: Option<ingest::KernelDrops>,
    shutdown: Shutdown,
) {
    let packets = metrics::counter!(crate::telemetry::PACKETS_RECEIVED_TOTAL);
    let bytes = metrics::counter!(crate::telemetry::BYTES_RECEIVED_TOTAL);
    let truncated = metrics::counter!(crate::telemetry::PACKETS_TRUNCATED_TOTAL);
    let recv_errors = metrics::counter!(crate::telemetry::RECEIVE_ERRORS_TOTAL);
    let lines = metrics::counter!(crate::telemetry::LINES_PARSED_TOTAL);
    let malformed = metrics::counter!(crate::telemetry::LINES_MALFORMED_TOTAL);
    let dropped_mapping =
        metrics::counter!(crate::telemetry::LINES_DROPPED_TOTAL, "reason" => "mapping");
    let dropped_ambiguous =
        metrics::counter!(crate::telemetry::LINES_DROPPED_TOTAL, "reason" => "ambiguous");
    let dropped_conflict =
        metrics::counter!(crate::telemetry::LINES_DROPPED_TOTAL, "reason" => "type_conflict");
    let dropped_cap =
        metrics::counter!(crate::telemetry::LINES_DROPPED_TOTAL, "reason" => "series_cap");
    let dropped_budget =
        metrics::counter!(crate::telemetry::LINES_DROPPED_TOTAL, "reason" => "memory_budget");
    let series_refused_budget = metrics::counter!(crate::telemetry::SERIES_REFUSED_BUDGET_TOTAL);
    let set_members_refused = metrics::counter!(crate::telemetry::SET_MEMBERS_REFUSED_TOTAL);
    let cache_clears = metrics::counter!(crate::telemetry::NAME_CACHE_CLEARS_TOTAL);
    let state_cache = metrics::gauge!(crate::telemetry::STATE_BYTES, "part" => "cache");
    let state_series = metrics::gauge!(crate::telemetry::STATE_BYTES, "part" => "series");
    let state_sets = metrics::gauge!(crate::telemetry::STATE_BYTES, "part" => "sets");
    let state_limit = metrics::gauge!(crate::telemetry::STATE_BYTES_LIMIT);
    for reason in rules::DropReason::ALL {
        // Zeroes from the start, so that a rate() over them exists before the first drop.
        metrics::counter!(crate::telemetry::DATUMS_INVALID_TOTAL, "reason" => reason.as_str())
            .increment(0);
    }
    let series_dropped = metrics::counter!(crate::telemetry::SERIES_DROPPED_TOTAL);
    let series_expired = metrics::counter!(crate::telemetry::SERIES_EXPIRED_TOTAL);
    let live = metrics::gauge!(crate::telemetry::LIVE_SERIES);
    let backlog = metrics::gauge!(crate::telemetry::CLOUDWATCH_BACKLOG_DATUMS);
    let kernel = metrics::counter!(crate::telemetry::KERNEL_RECEIVE_DROPS_TOTAL);
    loop {
        let c = &shared.counters;
        packets.absolute(c.packets.load(Ordering::Relaxed));
        bytes.absolute(c.bytes.load(Ordering::Relaxed));
        truncated.absolute(c.truncated.load(Ordering::Relaxed));
        recv_errors.absolute(c.errors.load(Ordering::Relaxed));
        let (stats, n, bytes, limit) = {
            let agg = shared.aggregator.lock().unwrap_or_else(|p| p.into_inner());
            (
                agg.stats,
                agg.live_series(),
                agg.state_bytes(),
                agg.max_bytes(),
            )
        };
        dropped_budget.absolute(stats.over_budget);
        series_refused_budget.absolute(stats.series_refused_budget);
        set_members_refused.absolute(stats.set_members_refused);
        cache_clears.absolute(stats.cache_clears);
        state_cache.set(bytes.cache as f64);
        state_series.set(bytes.series as f64);
        state_sets.set(bytes.sets as f64);
        state_limit.set(limit as f64);
        lines.absolute(stats.lines);
        malformed.absolute(stats.malformed);
        dropped_mapping.absolute(stats.mapped_drop);
        dropped_ambiguous.absolute(stats.ambiguous);
        dropped_conflict.absolute(stats.type_conflict);
        dropped_cap.absolute(stats.over_cap);
        series_dropped.absolute(stats.series_refused);
        series_expired.absolute(stats.series_expired);
        live.set(n as f64);
        backlog.set(shared.backlog.lock().expect("backlog lock").datums() as f64);
        if let Some(d) = kernel_drops.as_ref().and_then(|k| k.read()) {
            kernel.absolute(d);
        }
        if airside_core::shutdown::sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
            return;
        }
    }
}

/// Records that an output took an interval: the last-success gauge every daemon has.
pub(crate) fn mark_success() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(crate::telemetry::LAST_SUCCESS_TIMESTAMP_SECONDS).set(now.as_secs_f64());
}
