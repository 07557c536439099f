//! Every name dagsync exports on `/metrics`, in one place: the crate README's metrics
//! table lists exactly [`ALL`] (checked by the contract test below).

/// Cycles by result: changed, noop, error.
pub const SYNCS: &str = "dagsync_syncs_total";
/// Cycle duration histogram.
pub const SYNC_DURATION: &str = "dagsync_sync_duration_seconds";
/// Objects downloaded, by how (`via`: direct, sdk, copy).
pub const OBJECTS_DOWNLOADED: &str = "dagsync_objects_downloaded_total";
/// Direct GetObject attempts handed to the SDK (an error answer, a dropped
/// connection, a stalled body).
pub const DIRECT_FALLBACKS: &str = "dagsync_direct_fallbacks_total";
/// Bytes downloaded.
pub const BYTES_DOWNLOADED: &str = "dagsync_bytes_downloaded_total";
/// Files deleted.
pub const FILES_DELETED: &str = "dagsync_files_deleted_total";
/// Deletions refused by a guard.
pub const DELETIONS_REFUSED: &str = "dagsync_deletions_refused_total";
/// Unsafe keys skipped (each distinct key counted once per process).
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
    OBJECTS_DOWNLOADED,
    DIRECT_FALLBACKS,
    BYTES_DOWNLOADED,
    FILES_DELETED,
    DELETIONS_REFUSED,
    INVALID_KEYS,
    LAST_SUCCESS,
    FILES_SYNCED,
    ERRORS,
    OBJECT_FAILURES,
    OBJECTS_FAILING,
    ROLE,
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(env!("CARGO_MANIFEST_DIR"), "dagsync", super::ALL);
    }
}
