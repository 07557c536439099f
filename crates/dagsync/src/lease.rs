//! One writer per DAG folder.
//!
//! Every Airflow task (web, scheduler, up to ten workers) runs a dagsync on the same EFS
//! folder. Without coordination each one downloads every object, and a slow writer that
//! listed earlier can rename an older version over a newer one. So the processes sharing a
//! destination elect one writer: whoever holds an exclusive `flock` on
//! `DEST/.dagsync/lease` lists, downloads and publishes; the others stand by, making no S3
//! requests, and try to take the lock at every cycle. A lock held by a process that dies
//! is released by the kernel (locally) or by the NFS server when the client's lease ends
//! (EFS, through NFSv4 locks), so a standby takes over without any clean-up.
//!
//! On NFS the Linux client implements `flock` with a whole-file byte-range lock (flock(2):
//! "flock() locks are emulated using fcntl(2) byte-range locks" on NFS since Linux
//! 2.6.12), held for the client by the server under NFSv4's lease model: "If the client
//! does not renew its lease within the defined period, all state associated with the
//! client's lease may be released by the server" (EFS's lease is 90 s). Two consequences
//! shape this module: byte-range locks belong to a process, so the process never opens
//! and closes the lock file a second time while it holds the lease (closing any
//! descriptor of the file would drop the lock); and a task that loses contact with EFS
//! can lose the lease while it runs, which is why the writer re-checks it before every
//! publish.
//!
//! The writer checks that it still holds the lease right before publishing
//! ([`Lease::still_held`]): the lock file must still be the one it locked, naming it.
//! After every successful cycle the writer records its status in
//! `DEST/.dagsync/status.json` ([`SharedStatus`]), which every instance reads for
//! `/readyz`, so that `dependsOn: HEALTHY` works in every task whichever one writes.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The lock file's name under `DEST/.dagsync/`.
pub const LEASE_FILE: &str = "lease";
/// The writer's status file's name under `DEST/.dagsync/`.
pub const STATUS_FILE: &str = "status.json";

/// This process's role for its destination (the `role` label of `dagsync_role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease: lists, downloads, publishes.
    Writer,
    /// Another process writes; this one watches the shared status.
    Standby,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Standby => "standby",
        }
    }
}

/// The writer lease, held while this value lives.
#[derive(Debug)]
pub struct Lease {
    file: File,
    path: PathBuf,
    holder: String,
    dev_ino: (u64, u64),
}

impl Lease {
    /// Takes the lease of `own_dir` (`DEST/.dagsync`) if no other process holds it.
    /// `Ok(None)`: another process holds it.
    pub fn try_take(own_dir: &Path) -> std::io::Result<Option<Lease>> {
        let path = own_dir.join(LEASE_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let holder = format!(
            "{}:{}:{:x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(holder.as_bytes())?;
        file.sync_all()?;
        let meta = file.metadata()?;
        Ok(Some(Lease {
            file,
            path,
            holder,
            dev_ino: (meta.dev(), meta.ino()),
        }))
    }

    /// Whether this process still holds the lease: the lock file at the path is still the
    /// file it locked, and names this process. Checked right before every publish.
    pub fn still_held(&self) -> bool {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return false;
        };
        if (meta.dev(), meta.ino()) != self.dev_ino {
            return false;
        }
        let mut text = String::new();
        let mut f = &self.file;
        f.rewind().is_ok() && f.read_to_string(&mut text).is_ok() && text == self.holder
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who holds it (`HOST:PID:RANDOM`), as recorded in the status file.
    pub fn holder(&self) -> &str {
        &self.holder
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What the writer records after each successful cycle, for every instance to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedStatus {
    /// The writer (`HOST:PID:RANDOM`).
    pub writer: String,
    /// Unix time in milliseconds of the writer's last successful cycle.
    pub last_success_ms: u64,
    /// Objects that failed in that cycle: `(key, reason)`.
    pub failing: Vec<(String, String)>,
}

impl SharedStatus {
    /// Reads the status file; `None` if there is none yet or it cannot be read.
    pub fn read(own_dir: &Path) -> Option<SharedStatus> {
        let bytes = std::fs::read(own_dir.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the status file atomically (the core's atomic write), through a temporary
    /// file in `scratch`, this process's staging folder: a SIGKILL mid-write then leaves
    /// it where the next start's sweep of abandoned staging folders removes it (beside
    /// the status file, as `status.json.tmp-PID`, nothing ever did).
    pub fn write(
        &self,
        own_dir: &Path,
        scratch: &Path,
    ) -> Result<(), airside_core::atomic_file::AtomicWriteError> {
        let bytes = serde_json::to_vec(self).expect("status serialises");
        airside_core::atomic_file::write_atomically_via(
            &own_dir.join(STATUS_FILE),
            &scratch.join(format!("{STATUS_FILE}.tmp")),
            &bytes,
        )
    }

    /// When the last successful cycle ended.
    pub fn last_success(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_success_ms)
    }

    /// The current time as recorded in [`SharedStatus::last_success_ms`].
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::try_take(dir.path()).unwrap().expect("free");
        assert!(a.still_held());
        // On a local filesystem flock locks belong to the open file description, so a
        // second open in the same process contends like another process would. (On NFS
        // they are per process; dagsync never takes the lease twice in one process.)
        assert!(Lease::try_take(dir.path()).unwrap().is_none());
        assert!(a.still_held(), "a failed attempt must not take it away");
        drop(a);
        let b = Lease::try_take(dir.path()).unwrap().expect("released");
        assert!(b.still_held());
    }

    #[test]
    fn a_replaced_lock_file_means_the_lease_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::try_take(dir.path()).unwrap().unwrap();
        std::fs::remove_file(dir.path().join(LEASE_FILE)).unwrap();
        let b = Lease::try_take(dir.path())
            .unwrap()
            .expect("a new file is free");
        assert!(!a.still_held());
        assert!(b.still_held());
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SharedStatus::read(dir.path()), None);
        let s = SharedStatus {
            writer: "h:1:2".into(),
            last_success_ms: 1_700_000_000_123,
            failing: vec![("dags/bad.py".into(), "integrity".into())],
        };
        let scratch = dir.path().join("staging");
        std::fs::create_dir(&scratch).unwrap();
        s.write(dir.path(), &scratch).unwrap();
        assert_eq!(SharedStatus::read(dir.path()), Some(s));
        // Nothing is left beside the status file, nor in the scratch folder.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["staging", STATUS_FILE]);
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }
}
