//! dagsync's telemetry, in one place: every name it exports on `/metrics` (the crate
//! README's metrics table lists exactly [`ALL`], checked by the contract test below) and
//! one function per notable event, which logs it and counts it, as vector's
//! `internal_events` do. No other module calls `metrics::` (the contract test checks).

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::lease::Role;
use crate::syncer::CycleReport;

/// Cycles by result: changed, noop, error.
pub const SYNCS: &str = "dagsync_syncs_total";
/// Cycle duration histogram.
pub const SYNC_DURATION: &str = "dagsync_sync_duration_seconds";
/// Objects fetched, verified and staged for the DAG folder (what dagsync delivers), by
/// how (`via`: direct, sdk, copy).
pub const OBJECTS_SENT: &str = "dagsync_objects_sent_total";
/// Deprecated name of [`OBJECTS_SENT`], still exported until the release after 0.1.
pub const OBJECTS_DOWNLOADED: &str = "dagsync_objects_downloaded_total";
/// Direct GetObject attempts handed to the SDK (an error answer, a dropped
/// connection, a stalled body).
pub const DIRECT_FALLBACKS: &str = "dagsync_direct_fallbacks_total";
/// Bytes of the objects in [`OBJECTS_SENT`].
pub const BYTES_SENT: &str = "dagsync_bytes_sent_total";
/// Deprecated name of [`BYTES_SENT`], still exported until the release after 0.1.
pub const BYTES_DOWNLOADED: &str = "dagsync_bytes_downloaded_total";
/// Files deleted.
pub const FILES_DELETED: &str = "dagsync_files_deleted_total";
/// Deletions refused by a guard.
pub const DELETIONS_REFUSED: &str = "dagsync_deletions_refused_total";
/// Objects given up on, by reason (`invalid_key`: a key that cannot be written safely
/// under the DAG folder, each distinct key counted once per process).
pub const OBJECTS_DROPPED: &str = "dagsync_objects_dropped_total";
/// Deprecated name of [`OBJECTS_DROPPED`]`{reason="invalid_key"}`, still exported until
/// the release after 0.1.
pub const INVALID_KEYS: &str = "dagsync_invalid_keys_total";
/// Unix time of the last successful cycle.
pub const LAST_SUCCESS: &str = "dagsync_last_success_timestamp_seconds";
/// Files dagsync currently tracks.
pub const FILES_SYNCED: &str = "dagsync_files_synced";
/// Failed cycles by error class.
pub const ERRORS: &str = "dagsync_errors_total";
/// Objects that failed to fetch or verify, by reason (integrity, access_denied,
/// not_found, changed): each failure of each cycle counts once.
pub const OBJECT_FAILURES: &str = "dagsync_object_failures_total";
/// Objects failing right now (their files keep their previous version).
pub const OBJECTS_FAILING: &str = "dagsync_objects_failing";
/// 1 for this instance's role for its destination (`role`: writer, standby), 0 for
/// the other.
pub const ROLE: &str = "dagsync_role";

/// Every name above, for the contract test.
pub const ALL: &[&str] = &[
    SYNCS,
    SYNC_DURATION,
    OBJECTS_SENT,
    OBJECTS_DOWNLOADED,
    DIRECT_FALLBACKS,
    BYTES_SENT,
    BYTES_DOWNLOADED,
    FILES_DELETED,
    DELETIONS_REFUSED,
    OBJECTS_DROPPED,
    INVALID_KEYS,
    LAST_SUCCESS,
    FILES_SYNCED,
    ERRORS,
    OBJECT_FAILURES,
    OBJECTS_FAILING,
    ROLE,
];

/// Names renamed to the shared vocabulary, each with its replacement: both are
/// exported (with the same values) for one more release, so that dashboards can move.
pub const DEPRECATED: &[(&str, &str)] = &[
    (OBJECTS_DOWNLOADED, OBJECTS_SENT),
    (BYTES_DOWNLOADED, BYTES_SENT),
    (INVALID_KEYS, OBJECTS_DROPPED),
];

/// A direct GetObject attempt failed and is repeated through the SDK.
pub fn direct_get_fell_back(key: &str, why: &str) {
    metrics::counter!(DIRECT_FALLBACKS).increment(1);
    tracing::debug!(
        key,
        reason = why,
        "direct GetObject failed; repeating it through the SDK"
    );
}

/// A listed key cannot be written safely under the destination and is skipped (the
/// caller reports each distinct key once per process).
pub fn key_skipped(key: &str, why: &dyn Display) {
    tracing::warn!(key = %key, reason = %why, "skipping key: it cannot be written safely under --dest");
    metrics::counter!(OBJECTS_DROPPED, "reason" => "invalid_key").increment(1);
    metrics::counter!(INVALID_KEYS).increment(1);
}

/// A delete guard refused the cycle's deletions.
pub fn deletions_refused(count: usize, reason: &dyn Display) {
    tracing::error!(refused = count, reason = %reason, "deletions refused");
    metrics::counter!(DELETIONS_REFUSED).increment(count as u64);
}

/// One object was fetched and verified (`via`: direct, sdk, copy).
pub fn object_downloaded(via: &'static str, bytes: u64) {
    metrics::counter!(OBJECTS_SENT, "via" => via).increment(1);
    metrics::counter!(BYTES_SENT).increment(bytes);
    metrics::counter!(OBJECTS_DOWNLOADED, "via" => via).increment(1);
    metrics::counter!(BYTES_DOWNLOADED).increment(bytes);
}

/// A cycle deleted files from the destination.
pub fn files_deleted(count: usize) {
    metrics::counter!(FILES_DELETED).increment(count as u64);
}

/// This process took `role` for its destination.
pub fn role_taken(role: Role) {
    for r in [Role::Writer, Role::Standby] {
        metrics::gauge!(ROLE, "role" => r.as_str()).set(f64::from(u8::from(r == role)));
    }
}

/// Any cycle ended, successful or not: its duration and the files dagsync tracks.
pub fn cycle_ended(elapsed: Duration, files: usize) {
    metrics::histogram!(SYNC_DURATION).record(elapsed.as_secs_f64());
    metrics::gauge!(FILES_SYNCED).set(files as f64);
}

/// A cycle succeeded: its one summary line, a warning per object that could not be
/// published, and the counters.
pub fn cycle_succeeded(report: &CycleReport, elapsed: Duration, files: usize) {
    let failed_keys: Vec<&str> = report
        .failed
        .iter()
        .take(10)
        .map(|f| f.key.as_str())
        .collect();
    let result = if report.changed() { "changed" } else { "noop" };
    tracing::info!(
        role = Role::Writer.as_str(),
        result,
        listed = report.listed,
        downloaded = report.downloaded,
        bytes = report.bytes,
        via_sdk = report.via_sdk,
        deleted = report.deleted,
        pruned = report.pruned,
        unchanged = report.unchanged,
        invalid = report.invalid,
        refused = report.refused_count,
        failed = report.failed.len(),
        failed_keys = %failed_keys.join(","),
        files,
        duration_ms = elapsed.as_millis() as u64,
        "sync cycle"
    );
    for f in &report.failed {
        tracing::warn!(key = %f.key, reason = f.reason, error = %f.error, "object not published; its previous version stays and it is retried next cycle");
        metrics::counter!(OBJECT_FAILURES, "reason" => f.reason).increment(1);
    }
    metrics::gauge!(OBJECTS_FAILING).set(report.failed.len() as f64);
    metrics::counter!(SYNCS, "result" => result).increment(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(LAST_SUCCESS).set(now.as_secs_f64());
}

/// A cycle failed as a whole (nothing of it was published).
pub fn cycle_failed(error: &dyn Display, class: &'static str, elapsed: Duration) {
    metrics::counter!(SYNCS, "result" => "error").increment(1);
    metrics::counter!(ERRORS, "class" => class).increment(1);
    tracing::error!(error = %error, class, duration_ms = elapsed.as_millis() as u64, "sync cycle failed");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(
            env!("CARGO_MANIFEST_DIR"),
            "dagsync",
            super::ALL,
            super::DEPRECATED,
        );
    }
}
