//! Checkpoints: how far each file has been delivered, persisted atomically.
//!
//! The [`Ledger`] is shared by the tailer (which registers files) and the
//! outputs (which acknowledge delivered byte ranges). A file's committed offset
//! is the lowest offset every output has acknowledged, so a restart re-sends at
//! most what some output had not yet confirmed — the log file itself is the
//! buffer. [`Ledger::persist`] writes a temporary file, fsyncs it, renames it over
//! `checkpoints.json` and fsyncs the directory, so a crash leaves either the old
//! or the new checkpoint, never a torn one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The checkpoint file name inside `--state-dir`.
pub const STATE_FILE: &str = "checkpoints.json";

/// One followed file as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The file's identity: part of every record id.
    pub id: u64,
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Fingerprint (hash) of the first line or first 256 bytes.
    pub fp: u64,
    /// How many bytes the fingerprint covers.
    pub fp_len: u32,
    /// How often this inode was truncated (copytruncate) while followed.
    pub generation: u32,
    /// The path it was found at.
    pub path: String,
    /// Every byte before this offset was acknowledged by every output.
    pub offset: u64,
    /// The inode was truncated (copytruncate): the entry waits for the copy.
    #[serde(default)]
    pub retired: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    files: Vec<Entry>,
}

#[derive(Debug)]
struct Tracked {
    entry: Entry,
    /// Acknowledged offset per output.
    acked: Vec<u64>,
    /// Set when the file is done (rotated away and read to its end): the entry
    /// is dropped once everything up to here is committed.
    final_end: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<u64, Tracked>,
    dirty: bool,
}

/// Could not read or write checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on the state directory.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file is not valid JSON of the expected shape.
    #[error(
        "checkpoint file {path} is corrupt: {source} (move it away to start from the beginning of every file)"
    )]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Delivery progress of every followed file. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    outputs: usize,
    inner: Mutex<Inner>,
    committed: tokio::sync::Notify,
}

impl Ledger {
    /// Opens the ledger in `dir` (created if needed; must be writable), for `outputs` outputs.
    pub fn open(dir: &Path, outputs: usize) -> Result<(Self, Vec<Entry>), StateError> {
        let io = |source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Prove the directory is writable now, not at the first checkpoint.
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(io)?;
        let _ = std::fs::remove_file(&probe);
        let path = dir.join(STATE_FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                state.files
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let mut inner = Inner::default();
        for e in &entries {
            inner.files.insert(
                e.id,
                Tracked {
                    acked: vec![e.offset; outputs],
                    entry: e.clone(),
                    final_end: None,
                },
            );
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                outputs,
                inner: Mutex::new(inner),
                committed: tokio::sync::Notify::new(),
            },
            entries,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("ledger lock")
    }

    /// Adds or replaces a file's entry (a new file, a restored one, or a copy taking over
    /// a truncated file's identity). The committed offset is kept when the id is known.
    pub fn register(&self, mut entry: Entry) {
        let mut inner = self.lock();
        let outputs = self.outputs;
        match inner.files.get_mut(&entry.id) {
            Some(t) => {
                entry.offset = t.entry.offset;
                t.entry = entry;
                t.final_end = None;
            }
            None => {
                inner.files.insert(
                    entry.id,
                    Tracked {
                        acked: vec![entry.offset; outputs],
                        entry,
                        final_end: None,
                    },
                );
            }
        }
        inner.dirty = true;
    }

    /// Records that `output` delivered everything of file `id` before `end`.
    pub fn ack(&self, output: usize, id: u64, end: u64) {
        let mut inner = self.lock();
        let Some(t) = inner.files.get_mut(&id) else {
            return;
        };
        if t.acked[output] >= end {
            return;
        }
        t.acked[output] = end;
        let committed = *t.acked.iter().min().expect("at least one output");
        if committed > t.entry.offset {
            t.entry.offset = committed;
            let done = t.final_end.is_some_and(|f| committed >= f);
            if done {
                inner.files.remove(&id);
            }
            inner.dirty = true;
            drop(inner);
            self.committed.notify_one();
        }
    }

    /// Resolves when a committed offset advanced since the last call.
    pub async fn advanced(&self) {
        self.committed.notified().await;
    }

    /// Whether `id` has an entry.
    pub fn knows(&self, id: u64) -> bool {
        self.lock().files.contains_key(&id)
    }

    /// The committed offset of file `id`.
    pub fn committed(&self, id: u64) -> Option<u64> {
        self.lock().files.get(&id).map(|t| t.entry.offset)
    }

    /// Marks a file as truncated: its entry waits for a copy with the same fingerprint.
    pub fn retire(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(t) = inner.files.get_mut(&id) {
            t.entry.retired = true;
            inner.dirty = true;
        }
    }

    /// Marks a file as done at `end`; its entry is dropped once `end` is committed.
    pub fn finish(&self, id: u64, end: u64) {
        let mut inner = self.lock();
        if let Some(t) = inner.files.get_mut(&id) {
            if t.entry.offset >= end {
                inner.files.remove(&id);
            } else {
                t.final_end = Some(end);
            }
            inner.dirty = true;
        }
    }

    /// Forgets a file.
    pub fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if inner.files.remove(&id).is_some() {
            inner.dirty = true;
        }
    }

    /// Number of entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().files.len()
    }

    /// Whether the ledger is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the checkpoint file if anything changed since the last write.
    /// Returns whether a write happened.
    pub fn persist(&self) -> Result<bool, StateError> {
        let state = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(false);
            }
            inner.dirty = false;
            let mut files: Vec<Entry> = inner.files.values().map(|t| t.entry.clone()).collect();
            files.sort_by(|a, b| a.path.cmp(&b.path).then(a.id.cmp(&b.id)));
            StateFile { version: 1, files }
        };
        let result = write_atomically(&self.dir, &state);
        if result.is_err() {
            // Try again at the next tick.
            self.lock().dirty = true;
        }
        result.map(|()| true)
    }
}

fn write_atomically(dir: &Path, state: &StateFile) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(state).expect("state serializes");
    airside_core::atomic_file::write_atomically_via(
        &dir.join(STATE_FILE),
        &dir.join(format!("{STATE_FILE}.tmp")),
        &bytes,
    )
    .map_err(|e| StateError::Io {
        path: e.path.clone(),
        source: e.source,
    })
}

/// How often checkpoints are written when nothing was acknowledged (new files).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest pause between two checkpoint writes (bounds fsyncs under load).
pub const CHECKPOINT_MIN_GAP: Duration = Duration::from_millis(10);

/// Writes the checkpoint file as soon as an output acknowledges (at most every
/// [`CHECKPOINT_MIN_GAP`]) and every [`CHECKPOINT_INTERVAL`], until `stop`.
pub async fn write_loop(ledger: Arc<Ledger>, stop: airside_core::shutdown::Shutdown) {
    let mut last_write = std::time::Instant::now();
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    loop {
        // Written as soon as an output acknowledges, so a crash re-sends as little as
        // possible; the periodic tick covers newly found files.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = ledger.advanced() => {}
        }
        let l = ledger.clone();
        match tokio::task::spawn_blocking(move || l.persist()).await {
            Ok(Ok(true)) => {
                last_write = std::time::Instant::now();
                crate::telemetry::checkpoint_written();
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => crate::telemetry::checkpoint_write_failed(&e),
            Err(e) => tracing::error!(error = %e, "checkpoint writer panicked"),
        }
        tokio::time::sleep(CHECKPOINT_MIN_GAP).await;
        crate::telemetry::checkpoint_age(last_write.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, offset: u64) -> Entry {
        Entry {
            id,
            dev: 1,
            ino: id,
            fp: 7,
            fp_len: 10,
            generation: 0,
            path: format!("/l/{id}.log"),
            offset,
            retired: false,
        }
    }

    #[test]
    fn committed_is_the_minimum_over_outputs_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, restored) = Ledger::open(dir.path(), 2).unwrap();
        assert!(restored.is_empty());
        ledger.register(entry(1, 0));
        ledger.ack(0, 1, 100);
        assert_eq!(ledger.committed(1), Some(0));
        ledger.ack(1, 1, 60);
        assert_eq!(ledger.committed(1), Some(60));
        ledger.ack(1, 1, 40); // stale ack: ignored
        assert_eq!(ledger.committed(1), Some(60));
        assert!(ledger.persist().unwrap());
        assert!(!ledger.persist().unwrap(), "nothing changed");
        let (_, restored) = Ledger::open(dir.path(), 2).unwrap();
        assert_eq!(restored, vec![entry(1, 60)]);
    }

    #[test]
    fn finished_files_are_dropped_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path(), 1).unwrap();
        ledger.register(entry(1, 0));
        ledger.finish(1, 50);
        assert_eq!(ledger.len(), 1);
        ledger.ack(0, 1, 50);
        assert!(ledger.is_empty());
    }

    #[test]
    fn corrupt_state_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{nope").unwrap();
        assert!(matches!(
            Ledger::open(dir.path(), 1),
            Err(StateError::Corrupt { .. })
        ));
    }
}
