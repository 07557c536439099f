//! What the Airflow-layout output remembers across restarts: per attempt key, the
//! objects it stored and those that may exist besides (an upload in flight, a deletion
//! not confirmed). logship may not list the bucket (its role only puts and deletes under
//! the log prefix), so this file is how a restarted logship knows which names to replace
//! and which to delete. Written atomically before every round of uploads (so a crash
//! mid-upload leaves the name known) and after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One attempt, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAttempt {
    /// The file identity the offsets belong to.
    pub file: u64,
    /// Virtual offset of that identity's byte 0.
    pub base: u64,
    /// Stored objects: virtual start and size.
    pub objects: Vec<(u64, u64)>,
    /// Objects that may exist besides: virtual start and end.
    pub maybe: Vec<(u64, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedFile {
    version: u32,
    attempts: BTreeMap<String, SavedAttempt>,
}

/// The saved state of one output, in `<state dir>/airflow-s3-<output index>.json`.
#[derive(Debug)]
pub struct Saved {
    path: PathBuf,
    /// By attempt key.
    pub attempts: BTreeMap<String, SavedAttempt>,
}

/// The saved state cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// Reading or writing failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Saved {
    /// Loads the state of output `index` from `dir` (empty when there is none).
    pub fn load(dir: &Path, index: usize) -> Result<Self, SavedError> {
        let path = dir.join(format!("airflow-s3-{index}.json"));
        let io = |message: String| SavedError::Io {
            path: path.clone(),
            message,
        };
        let attempts = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: SavedFile = serde_json::from_slice(&bytes).map_err(|e| {
                    io(format!(
                        "not a state file logship can read ({e}); move it away to start afresh (objects it names may then stay in S3 beside newer ones)"
                    ))
                })?;
                file.attempts
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e.to_string())),
        };
        Ok(Self { path, attempts })
    }

    /// Writes the state atomically.
    pub fn store(&self) -> Result<(), SavedError> {
        let file = SavedFile {
            version: 1,
            attempts: self.attempts.clone(),
        };
        let bytes = serde_json::to_vec(&file).expect("plain data serializes");
        airside_core::atomic_file::write_atomically(&self.path, &bytes).map_err(|e| {
            SavedError::Io {
                path: self.path.clone(),
                message: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut saved = Saved::load(dir.path(), 0).unwrap();
        assert!(saved.attempts.is_empty());
        saved.attempts.insert(
            "logs/dag_id=a/attempt=1.log".into(),
            SavedAttempt {
                file: 9,
                base: 0,
                objects: vec![(0, 10), (10, 5)],
                maybe: vec![(15, 20)],
            },
        );
        saved.store().unwrap();
        let again = Saved::load(dir.path(), 0).unwrap();
        assert_eq!(again.attempts, saved.attempts);
        std::fs::write(dir.path().join("airflow-s3-0.json"), b"{").unwrap();
        let e = Saved::load(dir.path(), 0).unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}
