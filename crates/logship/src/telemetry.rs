//! logship's telemetry, in one place: every name it exports on `/metrics` (the crate
//! README's metrics table lists exactly [`ALL`], checked by the contract test below) and
//! one function per notable event, which logs it and counts it, as vector's
//! `internal_events` do. No other module calls `metrics::` (the contract test checks).

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use airside_core::aws::ErrorClass;

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

/// Counter: quiet Airflow-layout attempts settled, by `result` (`compacted` into one
/// object, `airflow_uploaded`: Airflow's own uploader took the file, ours deleted).
pub const AIRFLOW_COMPACTIONS_TOTAL: &str = "logship_airflow_compactions_total";
/// Counter: objects of the Airflow layout deleted (folded into a later upload, compacted,
/// or superseded by Airflow's own upload).
pub const AIRFLOW_OBJECTS_DELETED_TOTAL: &str = "logship_airflow_objects_deleted_total";
/// Gauge: log files the Airflow-layout output follows.
pub const AIRFLOW_FILES: &str = "logship_airflow_files";
/// Gauge: S3 objects holding those files.
pub const AIRFLOW_OBJECTS: &str = "logship_airflow_objects";
/// Gauge: bytes waiting for their upload to the Airflow layout.
pub const AIRFLOW_BUFFERED_BYTES: &str = "logship_airflow_buffered_bytes";

/// Gauge: forward-protocol connections open.
pub const FORWARD_CONNECTIONS: &str = "logship_forward_connections";
/// Counter: forward-protocol events received.
pub const FORWARD_EVENTS_TOTAL: &str = "logship_forward_events_total";
/// Counter: forward-protocol frames refused (the connection is closed) (labels: `reason` = `too_large`, `invalid`).
pub const FORWARD_FRAMES_REFUSED_TOTAL: &str = "logship_forward_frames_refused_total";
/// Counter: acks sent, each after its records were written to the buffer.
pub const FORWARD_ACKS_TOTAL: &str = "logship_forward_acks_total";
/// Counter: seconds connections waited for room in the queue to the buffer (not read meanwhile).
pub const FORWARD_BACKPRESSURE_SECONDS_TOTAL: &str = "logship_forward_backpressure_seconds_total";
/// Gauge: bytes in the disk buffer's segments.
pub const FORWARD_BUFFER_BYTES: &str = "logship_forward_buffer_bytes";
/// Counter: seconds the buffer writer waited because the buffer was full (`--buffer-max-bytes`).
pub const FORWARD_BUFFER_FULL_SECONDS_TOTAL: &str = "logship_forward_buffer_full_seconds_total";
/// Counter: bytes of torn or corrupt buffer blocks skipped (a kill during a write).
pub const FORWARD_BUFFER_TORN_BYTES_TOTAL: &str = "logship_forward_buffer_torn_bytes_total";
/// Counter: failed writes to the buffer (retried).
pub const FORWARD_BUFFER_WRITE_ERRORS_TOTAL: &str = "logship_forward_buffer_write_errors_total";

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
    AIRFLOW_COMPACTIONS_TOTAL,
    AIRFLOW_OBJECTS_DELETED_TOTAL,
    AIRFLOW_FILES,
    AIRFLOW_OBJECTS,
    AIRFLOW_BUFFERED_BYTES,
    FORWARD_CONNECTIONS,
    FORWARD_EVENTS_TOTAL,
    FORWARD_FRAMES_REFUSED_TOTAL,
    FORWARD_ACKS_TOTAL,
    FORWARD_BACKPRESSURE_SECONDS_TOTAL,
    FORWARD_BUFFER_BYTES,
    FORWARD_BUFFER_FULL_SECONDS_TOTAL,
    FORWARD_BUFFER_TORN_BYTES_TOTAL,
    FORWARD_BUFFER_WRITE_ERRORS_TOTAL,
];

// --- the files input ---------------------------------------------------------------------

/// Bytes read from followed files.
pub fn bytes_read(n: usize) {
    metrics::counter!(BYTES_READ_TOTAL).increment(n as u64);
}

/// An input handed a chunk of `records` records to the outputs.
pub fn records_read(records: usize) {
    metrics::counter!(RECORDS_READ_TOTAL).increment(records as u64);
}

/// A watch event that may concern a followed file or folder.
pub fn watch_event() {
    metrics::counter!(WATCH_EVENTS_TOTAL).increment(1);
}

/// How many files are followed now.
pub fn files_followed(n: usize) {
    metrics::gauge!(FILES_FOLLOWED).set(n as f64);
}

/// After housekeeping: files followed, and bytes in them no output has acknowledged.
pub fn files_state(followed: usize, bytes_behind: u64) {
    metrics::gauge!(BYTES_BEHIND).set(bytes_behind as f64);
    files_followed(followed);
}

/// A file known from the checkpoints is followed again from its checkpoint.
pub fn file_resumed(path: &str, offset: u64, via: &'static str) {
    tracing::info!(path = %path, offset, "resuming from checkpoint");
    metrics::counter!(FILES_DISCOVERED_TOTAL, "via" => via).increment(1);
}

/// A copy of a truncated file continues where the file had been read to.
pub fn file_copy_continued(path: &str, offset: u64, via: &'static str) {
    tracing::info!(path = %path, offset, "continuing a truncated file in its copy");
    metrics::counter!(FILES_DISCOVERED_TOTAL, "via" => via).increment(1);
}

/// A new file is followed from its start.
pub fn file_followed(path: &str, id_hex: &str, via: &'static str) {
    tracing::info!(path = %path, id = %id_hex, "following new file");
    metrics::counter!(FILES_DISCOVERED_TOTAL, "via" => via).increment(1);
}

/// A followed file was renamed away or deleted, and was read to its end.
pub fn file_rotated(path: &Path) {
    tracing::info!(path = %path.display(), "file rotated away or deleted and read to its end");
    metrics::counter!(ROTATIONS_TOTAL, "kind" => "rename").increment(1);
}

/// A followed file got shorter (copytruncate): it is read again from the start.
pub fn file_truncated(path: &Path, at: u64) {
    tracing::info!(path = %path.display(), at, "file truncated (copytruncate); reading it again from the start");
    metrics::counter!(ROTATIONS_TOTAL, "kind" => "truncate").increment(1);
}

/// A path under the globs was found unreadable (logged and counted once per path).
pub fn path_unreadable(path: &str, why: &str, uid: u32) {
    metrics::counter!(FILES_UNREADABLE_TOTAL).increment(1);
    tracing::warn!(
        path = %path,
        error = %why,
        uid,
        "cannot read a log file or folder: nothing in it is shipped until it can be read (logship's user needs read permission on files and read+execute on folders; Airflow's default umask and uid 50000 leave them unreadable to other users)"
    );
}

/// A path that was unreadable can be read again, or is gone.
pub fn path_readable_again(path: &str) {
    tracing::info!(path = %path, "readable again (or gone)");
}

/// How many paths are unreadable now.
pub fn paths_unreadable(n: usize) {
    metrics::gauge!(FILES_UNREADABLE).set(n as f64);
}

// --- the outputs -------------------------------------------------------------------------

/// An output delivered records (stdout: written; the others: accepted by the service).
pub fn records_delivered(output: &str, records: u64, bytes: u64) {
    metrics::counter!(RECORDS_SENT_TOTAL, "output" => output.to_string()).increment(records);
    metrics::counter!(BYTES_SENT_TOTAL, "output" => output.to_string()).increment(bytes);
}

/// A Firehose batch was accepted whole.
pub fn batch_delivered(output: &str, records: u64, bytes: u64) {
    records_delivered(output, records, bytes);
    metrics::counter!(BATCHES_TOTAL, "output" => output.to_string()).increment(1);
    metrics::gauge!(LAST_BATCH_RECORDS, "output" => output.to_string()).set(records as f64);
    metrics::gauge!(LAST_BATCH_BYTES, "output" => output.to_string()).set(bytes as f64);
}

/// An S3 object was written: its summary line, and it counts as a batch.
pub fn object_written(output: &str, key: &str, records: u64, bytes: u64, compressed: u64) {
    tracing::info!(output = %output, key = %key, records, bytes, compressed, "object written");
    batch_delivered(output, records, bytes);
}

/// Firehose refused some records of a batch; only those are sent again.
pub fn records_failed(output: &str, failed: usize, first_error: &str) {
    metrics::counter!(RECORDS_FAILED_TOTAL, "output" => output.to_string())
        .increment(failed as u64);
    tracing::warn!(output = %output, failed, error = %first_error, "partial batch failure; re-sending only the failed records");
}

/// The oldest open S3 object is closed early to keep within `--s3-max-buffered`.
pub fn object_rolled_early(output: &str, key: &str, buffered: u64) {
    metrics::counter!(S3_EARLY_ROLLS_TOTAL, "output" => output.to_string()).increment(1);
    tracing::debug!(key = %key, buffered, "rolling the oldest object early to bound memory");
}

/// What the open S3 objects of an output hold.
pub fn s3_buffered(output: &str, bytes: u64) {
    metrics::gauge!(S3_BUFFERED_BYTES, "output" => output.to_string()).set(bytes as f64);
}

/// An upload of the Airflow layout was stored (its `records` and `new_bytes` are
/// delivered; `size` is the object's, folded bytes included).
pub fn airflow_uploaded(
    output: &str,
    key: &str,
    start: u64,
    records: u64,
    new_bytes: u64,
    size: u64,
) {
    tracing::debug!(output = %output, key = %key, start, records, new_bytes, size, "log uploaded");
    batch_delivered(output, records, new_bytes);
}

/// A quiet attempt was settled: compacted, or left to Airflow's own upload.
pub fn airflow_compacted(output: &str, key: &str, result: &'static str, deleted: usize) {
    metrics::counter!(AIRFLOW_COMPACTIONS_TOTAL, "output" => output.to_string(), "result" => result)
        .increment(1);
    tracing::info!(output = %output, key = %key, result, superseded = deleted, "attempt log settled");
}

/// A compaction could not be done (it is tried again; the objects stay as they are).
pub fn airflow_compaction_failed(output: &str, key: &str, class: ErrorClass, error: &str) {
    metrics::counter!(ERRORS_TOTAL, "output" => output.to_string(), "class" => class.as_str())
        .increment(1);
    tracing::warn!(output = %output, key = %key, class = class.as_str(), error = %error, "compaction failed; the objects stay as they are");
}

/// Superseded objects were deleted.
pub fn airflow_objects_deleted(output: &str, n: usize) {
    metrics::counter!(AIRFLOW_OBJECTS_DELETED_TOTAL, "output" => output.to_string())
        .increment(n as u64);
}

/// Superseded objects could not be deleted (tried again at the next tick): `object`
/// and, when a whole request failed, the others of its `objects`.
pub fn airflow_delete_failed(output: &str, object: &str, objects: usize, error: &str) {
    tracing::warn!(output = %output, object = %object, objects, error = %error, "cannot delete superseded objects; their lines show twice until they are");
}

/// A followed file is not below `--airflow-log-folder`: it has no place in the layout.
pub fn airflow_file_outside_folder(output: &str, path: &str, folder: &Path) {
    tracing::warn!(output = %output, path = %path, folder = %folder.display(), "file is not below --airflow-log-folder; the Airflow layout skips it");
}

/// An upload could not fold earlier objects (the file no longer has their bytes).
pub fn airflow_fold_skipped(key: &str, why: &str) {
    tracing::warn!(key = %key, reason = %why, "uploading new bytes on their own");
}

/// The Airflow-layout output's saved state could not be written.
pub fn airflow_state_write_failed(path: &Path, error: &str) {
    tracing::warn!(path = %path.display(), error = %error, "cannot save the Airflow layout's objects; retrying at the next upload");
}

/// How many files and objects the Airflow-layout output follows.
pub fn airflow_files(output: &str, files: usize, objects: usize) {
    metrics::gauge!(AIRFLOW_FILES, "output" => output.to_string()).set(files as f64);
    metrics::gauge!(AIRFLOW_OBJECTS, "output" => output.to_string()).set(objects as f64);
}

/// Bytes waiting for the Airflow layout.
pub fn airflow_buffered(output: &str, bytes: u64) {
    metrics::gauge!(AIRFLOW_BUFFERED_BYTES, "output" => output.to_string()).set(bytes as f64);
}

/// A request of an output was accepted.
pub fn delivery_succeeded(output: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(LAST_SUCCESS_TIMESTAMP_SECONDS, "output" => output.to_string())
        .set(now.as_secs_f64());
}

/// A request of an output failed; `retry_in` is `None` when the output gives up.
pub fn delivery_failed(output: &str, class: ErrorClass, error: &str, retry_in: Option<Duration>) {
    metrics::counter!(ERRORS_TOTAL, "output" => output.to_string(), "class" => class.as_str())
        .increment(1);
    let Some(delay) = retry_in else {
        return;
    };
    metrics::counter!(RETRIES_TOTAL, "output" => output.to_string()).increment(1);
    if class == ErrorClass::Throttled {
        metrics::counter!(THROTTLES_TOTAL, "output" => output.to_string()).increment(1);
    }
    tracing::warn!(output = %output, class = class.as_str(), error = %error, retry_in = ?delay, "delivery failed; retrying");
}

// --- checkpoints -------------------------------------------------------------------------

/// The checkpoint file was written.
pub fn checkpoint_written() {
    metrics::counter!(CHECKPOINT_WRITES_TOTAL).increment(1);
}

/// Writing the checkpoint file failed; the writer tries again.
pub fn checkpoint_write_failed(error: &dyn Display) {
    tracing::error!(error = %error, "cannot write checkpoints; will retry");
}

/// Seconds since the checkpoint file was last written.
pub fn checkpoint_age(age: Duration) {
    metrics::gauge!(CHECKPOINT_AGE_SECONDS).set(age.as_secs_f64());
}

// --- the forward input ---------------------------------------------------------------------

/// A forward-protocol connection opened.
pub fn forward_connection_opened() {
    metrics::gauge!(FORWARD_CONNECTIONS).increment(1.0);
}

/// A forward-protocol connection closed.
pub fn forward_connection_closed() {
    metrics::gauge!(FORWARD_CONNECTIONS).decrement(1.0);
}

/// A frame of `n` events was decoded.
pub fn forward_events_received(n: u64) {
    metrics::counter!(FORWARD_EVENTS_TOTAL).increment(n);
}

/// A frame was refused (its connection is closed; the caller logs why).
pub fn forward_frame_refused(e: &crate::input::forward::frame::FrameError) {
    use crate::input::forward::frame::FrameError;
    let reason = match e {
        FrameError::TooLarge(_) => "too_large",
        FrameError::Invalid(_) => "invalid",
    };
    metrics::counter!(FORWARD_FRAMES_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// An ack was sent.
pub fn forward_acks_sent() {
    metrics::counter!(FORWARD_ACKS_TOTAL).increment(1);
}

/// A connection waited `waited` for room in the queue to the buffer.
pub fn forward_backpressure(waited: Duration) {
    metrics::counter!(FORWARD_BACKPRESSURE_SECONDS_TOTAL).increment(waited.as_secs());
    tracing::debug!(
        ?waited,
        "a forward connection waited for the buffer (backpressure)"
    );
}

/// Records cut from the buffer into chunks for the outputs.
pub fn forward_records_buffered(records: u64) {
    metrics::counter!(RECORDS_READ_TOTAL).increment(records);
}

/// The disk buffer holds `bytes`.
pub fn forward_buffer_bytes(bytes: u64) {
    metrics::gauge!(FORWARD_BUFFER_BYTES).set(bytes as f64);
}

/// The buffer writer waited `waited` for room.
pub fn forward_buffer_full(waited: Duration) {
    metrics::counter!(FORWARD_BUFFER_FULL_SECONDS_TOTAL).increment(waited.as_secs());
    tracing::info!(?waited, "the buffer has room again");
}

/// `bytes` of a torn or corrupt buffer tail were skipped (the caller logs where).
pub fn forward_buffer_torn(bytes: u64) {
    metrics::counter!(FORWARD_BUFFER_TORN_BYTES_TOTAL).increment(bytes);
}

/// A write to the buffer failed (the caller logs it and retries).
pub fn forward_buffer_write_failed() {
    metrics::counter!(FORWARD_BUFFER_WRITE_ERRORS_TOTAL).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(
            env!("CARGO_MANIFEST_DIR"),
            "logship",
            super::ALL,
            &[],
        );
    }
}
