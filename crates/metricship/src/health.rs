//! metricship's own health on `/metrics`: the receive counters and the aggregator's
//! statistics, copied into the metrics registry once a second
//! ([`crate::telemetry::health`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use airside_core::shutdown::Shutdown;

use crate::pipeline::Shared;
use crate::telemetry::{self, Health};
use crate::{ingest, rules};

/// Publishes the receive counters and ingest statistics to the metrics registry once a second.
pub(crate) async fn export_health(
    shared: Arc<Shared>,
    kernel_drops: Option<ingest::KernelDrops>,
    shutdown: Shutdown,
) {
    telemetry::datums_invalid_reasons(rules::DropReason::ALL.iter().map(|r| r.as_str()));
    loop {
        let c = &shared.counters;
        let (stats, live_series, state, limit) = {
            let agg = shared.aggregator.lock().unwrap_or_else(|p| p.into_inner());
            (
                agg.stats,
                agg.live_series(),
                agg.state_bytes(),
                agg.max_bytes(),
            )
        };
        telemetry::health(&Health {
            packets: c.packets.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
            receive_errors: c.errors.load(Ordering::Relaxed),
            kernel_drops: kernel_drops.as_ref().and_then(|k| k.read()),
            lines: stats.lines,
            malformed: stats.malformed,
            dropped_mapping: stats.mapped_drop,
            dropped_ambiguous: stats.ambiguous,
            dropped_type_conflict: stats.type_conflict,
            dropped_series_cap: stats.over_cap,
            dropped_memory_budget: stats.over_budget,
            series_dropped: stats.series_refused,
            series_expired: stats.series_expired,
            series_refused_budget: stats.series_refused_budget,
            set_members_refused: stats.set_members_refused,
            cache_clears: stats.cache_clears,
            live_series,
            state_bytes: [state.cache, state.series, state.sets],
            state_bytes_limit: limit,
            backlog_datums: shared.backlog.lock().expect("backlog lock").datums(),
        });
        if airside_core::shutdown::sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
            return;
        }
    }
}
