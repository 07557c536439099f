//! What dagsync has published, persisted between runs.
//!
//! The state file (`DEST/.dagsync/state.json`) records, for every file dagsync
//! placed, the object's ETag and size and the size and mtime of the file it
//! wrote. With it, a cycle decides what changed from one listing plus local
//! `stat` calls — no request per object — and a restart downloads nothing
//! that is already in place. It is written atomically (temporary file in the
//! process's own staging folder, fsync, rename, fsync of the folder).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Current on-disk format version.
const VERSION: u32 = 1;

/// One published file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The object's ETag when it was published.
    pub etag: String,
    /// The object's size (and so the file's).
    pub size: u64,
    /// The file's mtime as nanoseconds since the epoch (set to the object's LastModified).
    pub mtime_ns: u128,
}

/// Every file dagsync placed, by relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    version: u32,
    /// Relative path → entry.
    pub files: BTreeMap<String, Entry>,
}

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the state file.
    #[error("state file {}: {source}", path.display())]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Nanoseconds since the epoch, as recorded in [`Entry::mtime_ns`].
pub fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self {
            version: VERSION,
            files: BTreeMap::new(),
        }
    }

    /// Loads the state; a missing file is an empty state. A corrupt or unknown-version
    /// file is logged and treated as empty: the cost is one full download, never a
    /// wrong deletion (an empty state deletes nothing).
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == VERSION => Ok(s),
            Ok(s) => {
                tracing::warn!(path = %path.display(), version = s.version, "state file has an unknown version; starting from an empty state");
                Ok(Self::new())
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "state file is not valid; starting from an empty state");
                Ok(Self::new())
            }
        }
    }

    /// Writes the state atomically and durably: `tmp` (on the same filesystem), fsync,
    /// rename onto `path`, fsync of the folder (the core's one atomic write). Without the
    /// folder's fsync a crash could keep the old state while the files it lists as new
    /// are already in place: they would count as foreign and never be deleted.
    pub fn save(&self, path: &Path, tmp: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(self).expect("state serialises");
        airside_core::atomic_file::write_atomically_via(path, tmp, &bytes).map_err(|e| {
            StateError::Io {
                path: e.path.clone(),
                source: e.source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).unwrap(), State::new());
        let mut s = State::new();
        s.files.insert(
            "a/b.py".into(),
            Entry {
                etag: "abc".into(),
                size: 3,
                mtime_ns: 42,
            },
        );
        s.save(&path, &dir.path().join("tmp")).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        assert!(!dir.path().join("tmp").exists());
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(State::load(&path).unwrap(), State::new());
    }
}
