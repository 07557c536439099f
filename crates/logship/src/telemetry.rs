//! Every name logship exports on `/metrics`, in one place: the crate README's metrics
//! table lists exactly [`ALL`] (checked by the contract test below).

/// Counter: bytes read from followed files.
pub const BYTES_READ_TOTAL: &str = "logship_bytes_read_total";
/// Counter: records (lines, joined tracebacks) read.
pub const RECORDS_READ_TOTAL: &str = "logship_records_read_total";
/// Counter: records an output has delivered (labels: `output`).
pub const RECORDS_SENT_TOTAL: &str = "logship_records_sent_total";
/// Counter: bytes an output has delivered (labels: `output`).
pub const BYTES_SENT_TOTAL: &str = "logship_bytes_sent_total";
/// Counter: Firehose records failed in a partial failure (each is sent again) (labels: `output`).
pub const RECORDS_FAILED_TOTAL: &str = "logship_records_failed_total";
/// Counter: failed requests by error class (labels: `output`, `class` = `transient`, `throttled`, `access_denied`, `not_found`, `invalid`).
pub const ERRORS_TOTAL: &str = "logship_errors_total";
/// Gauge: Unix time of the last request an output's destination accepted (labels: `output`).
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "logship_last_success_timestamp_seconds";
/// Counter: requests retried (labels: `output`).
pub const RETRIES_TOTAL: &str = "logship_retries_total";
/// Counter: requests the service throttled (labels: `output`).
pub const THROTTLES_TOTAL: &str = "logship_throttles_total";
/// Counter: PutRecordBatch calls, S3 objects written (labels: `output`).
pub const BATCHES_TOTAL: &str = "logship_batches_total";
/// Gauge: records in the last batch or object (labels: `output`).
pub const LAST_BATCH_RECORDS: &str = "logship_last_batch_records";
/// Gauge: bytes in the last batch or object (labels: `output`).
pub const LAST_BATCH_BYTES: &str = "logship_last_batch_bytes";
/// Gauge: files being followed.
pub const FILES_FOLLOWED: &str = "logship_files_followed";
/// Counter: files found, by how (labels: `via` = `start`, `event`, `poll`).
pub const FILES_DISCOVERED_TOTAL: &str = "logship_files_discovered_total";
/// Counter: rotations seen (labels: `kind` = `rename`, `truncate`).
pub const ROTATIONS_TOTAL: &str = "logship_rotations_total";
/// Counter: inotify events handled.
pub const WATCH_EVENTS_TOTAL: &str = "logship_watch_events_total";
/// Gauge: bytes in followed files not yet acknowledged by every output.
pub const BYTES_BEHIND: &str = "logship_bytes_behind";
/// Gauge: seconds since the last checkpoint write.
pub const CHECKPOINT_AGE_SECONDS: &str = "logship_checkpoint_age_seconds";
/// Counter: checkpoint files written.
pub const CHECKPOINT_WRITES_TOTAL: &str = "logship_checkpoint_writes_total";
/// Counter: paths found unreadable (each once).
pub const FILES_UNREADABLE_TOTAL: &str = "logship_files_unreadable_total";
/// Gauge: paths unreadable now.
pub const FILES_UNREADABLE: &str = "logship_files_unreadable";
/// Counter: S3 objects rolled early to stay within `--s3-max-buffered` (labels: `output`).
pub const S3_EARLY_ROLLS_TOTAL: &str = "logship_s3_early_rolls_total";
/// Gauge: bytes the open S3 objects hold (labels: `output`).
pub const S3_BUFFERED_BYTES: &str = "logship_s3_buffered_bytes";

/// Every name above, for the contract test.
pub const ALL: &[&str] = &[
    BYTES_READ_TOTAL,
    RECORDS_READ_TOTAL,
    RECORDS_SENT_TOTAL,
    BYTES_SENT_TOTAL,
    RECORDS_FAILED_TOTAL,
    ERRORS_TOTAL,
    LAST_SUCCESS_TIMESTAMP_SECONDS,
    RETRIES_TOTAL,
    THROTTLES_TOTAL,
    BATCHES_TOTAL,
    LAST_BATCH_RECORDS,
    LAST_BATCH_BYTES,
    FILES_FOLLOWED,
    FILES_DISCOVERED_TOTAL,
    ROTATIONS_TOTAL,
    WATCH_EVENTS_TOTAL,
    BYTES_BEHIND,
    CHECKPOINT_AGE_SECONDS,
    CHECKPOINT_WRITES_TOTAL,
    FILES_UNREADABLE_TOTAL,
    FILES_UNREADABLE,
    S3_EARLY_ROLLS_TOTAL,
    S3_BUFFERED_BYTES,
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(env!("CARGO_MANIFEST_DIR"), "logship", super::ALL);
    }
}
