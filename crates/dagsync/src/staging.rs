//! The per-process staging folder, on the same filesystem as the destination.
//!
//! Downloads land in `DEST/.dagsync/staging-PID-RANDOM/N.part` and are renamed
//! into place only when complete and verified, so Airflow never reads a partial
//! file. Several tasks share one EFS folder, so every process has its own
//! staging folder, guarded by an exclusive lock on `staging-PID-RANDOM.lock`
//! (flock, which EFS supports across clients). A folder whose lock can be taken
//! belongs to a dead process (SIGKILL, OOM) and is swept.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::keys::OWN_DIR;
use crate::source::Writes;

const PREFIX: &str = "staging-";
const LOCK_SUFFIX: &str = ".lock";
const TMP_LOCK_PREFIX: &str = "newlock-";

/// This process's staging folder; removed on drop.
#[derive(Debug)]
pub struct Staging {
    own_dir: PathBuf,
    name: String,
    dir: PathBuf,
    _lock: File,
    counter: AtomicU64,
    writes: Writes,
}

impl Staging {
    /// Creates `DEST/.dagsync/` if needed and a new locked staging folder in it.
    pub fn create(dest: &Path) -> std::io::Result<Self> {
        let own_dir = dest.join(OWN_DIR);
        std::fs::create_dir_all(&own_dir)?;
        let name = format!(
            "{PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        // Lock a file under a temporary name, then rename it into place: anyone who sees
        // `staging-X.lock` sees a file that is already locked.
        let tmp_lock = own_dir.join(format!("{TMP_LOCK_PREFIX}{name}"));
        let lock = File::create(&tmp_lock)?;
        lock.lock()?;
        std::fs::rename(&tmp_lock, own_dir.join(format!("{name}{LOCK_SUFFIX}")))?;
        let dir = own_dir.join(&name);
        std::fs::create_dir(&dir)?;
        let writes = match rustix::fs::statfs(&dir) {
            Ok(fs) => writes_for(fs.f_type as u64),
            Err(_) => Writes::Offload,
        };
        tracing::debug!(dir = %dir.display(), writes = ?writes, "staging folder ready");
        Ok(Self {
            own_dir,
            name,
            dir,
            _lock: lock,
            counter: AtomicU64::new(0),
            writes,
        })
    }

    /// Where small staged files are written, from the staging folder's filesystem.
    pub fn writes(&self) -> Writes {
        self.writes
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh, unused path in the staging folder. The `.part` suffix keeps Airflow
    /// (which only parses `.py` and `.zip`) away from it.
    pub fn new_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{n}.part"))
    }

    /// Removes one staged file (ignoring a file already gone).
    pub fn discard(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove staged file");
        }
    }

    /// Removes staging folders left by dead processes. Returns how many were removed.
    pub fn sweep_abandoned(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.own_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().to_string();
            let (name, is_tmp) = if let Some(n) = file_name.strip_prefix(TMP_LOCK_PREFIX) {
                (n.to_string(), true)
            } else if let Some(n) = file_name.strip_suffix(LOCK_SUFFIX) {
                (n.to_string(), false)
            } else if file_name.starts_with(PREFIX) {
                // A folder: the lock file is created (and locked) before the folder and
                // removed after it, so a folder without its lock file is abandoned.
                if file_name != self.name
                    && !self
                        .own_dir
                        .join(format!("{file_name}{LOCK_SUFFIX}"))
                        .exists()
                    && std::fs::remove_dir_all(entry.path()).is_ok()
                {
                    removed += 1;
                }
                continue;
            } else {
                continue;
            };
            if name == self.name || !name.starts_with(PREFIX) {
                continue;
            }
            let Ok(lock) = File::open(entry.path()) else {
                continue;
            };
            match lock.try_lock() {
                Ok(()) => {
                    let dir = self.own_dir.join(&name);
                    if !is_tmp && dir.exists() {
                        match std::fs::remove_dir_all(&dir) {
                            Ok(()) => removed += 1,
                            Err(e) => {
                                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove abandoned staging folder");
                                continue;
                            }
                        }
                    }
                    let _ = std::fs::remove_file(entry.path());
                }
                Err(TryLockError::WouldBlock) => {} // alive
                Err(TryLockError::Error(e)) => {
                    tracing::debug!(lock = %entry.path().display(), error = %e, "cannot test staging lock");
                }
            }
        }
        removed
    }
}

/// Filesystems (`statfs` `f_type`) on which a small file is created and written in tens
/// of microseconds, so that doing it on the runtime thread beats a thread hand-off. Any
/// other filesystem (NFS, which EFS is; SMB; FUSE; an unknown one) gets the blocking pool.
const LOCAL_FILESYSTEMS: &[u64] = &[
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x794C_7630, // overlayfs (a container's own layer)
    0x2FC1_2FC1, // zfs
    0xF2F5_2010, // f2fs
];

/// [`Writes`] for a filesystem type.
fn writes_for(f_type: u64) -> Writes {
    if LOCAL_FILESYSTEMS.contains(&f_type) {
        Writes::Inline
    } else {
        Writes::Offload
    }
}

/// Flushes every staged file to stable storage with one `syncfs(2)` on the filesystem of
/// `dir`, before a batch is renamed into place: a power loss after the renames then cannot
/// leave empty or partial files at final paths. Blocking; call it off the async threads.
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let dir = File::open(dir)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

/// Sets the mtime of staged files again once their data has left this machine (after they
/// were closed and the batch was flushed): on FUSE, and on network filesystems that cache
/// writes until close, the delayed write stamps the file with the time of the flush,
/// overwriting the mtime set before it. Measured on a bindfs mount: every file of a
/// 2,000-file sync then differed from the state at the next cycle, and each cycle
/// downloaded everything again. One `utimensat` per file, no open. Blocking; call it off
/// the async threads. `files` are (path, mtime in nanoseconds since the epoch).
pub fn restamp(files: &[(PathBuf, u128)]) -> std::io::Result<()> {
    for (path, mtime_ns) in files {
        let t = rustix::fs::Timespec {
            tv_sec: (mtime_ns / 1_000_000_000) as i64,
            tv_nsec: (mtime_ns % 1_000_000_000) as _,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty())
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.own_dir.join(format!("{}{LOCK_SUFFIX}", self.name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_unknown_filesystems_write_off_the_runtime_thread() {
        assert_eq!(writes_for(0xEF53), Writes::Inline);
        assert_eq!(writes_for(0x0102_1994), Writes::Inline);
        assert_eq!(writes_for(0x6969), Writes::Offload, "NFS (EFS)");
        assert_eq!(writes_for(0xFF53_4D42), Writes::Offload, "CIFS");
        assert_eq!(writes_for(0x6573_5546), Writes::Offload, "FUSE");
        assert_eq!(writes_for(0), Writes::Offload, "unknown");
    }

    #[test]
    fn live_staging_is_kept_dead_staging_is_swept() {
        let dest = tempfile::tempdir().unwrap();
        let a = Staging::create(dest.path()).unwrap();
        let b = Staging::create(dest.path()).unwrap();
        std::fs::write(b.new_path(), b"partial").unwrap();
        // b is alive (its lock is held): a must not sweep it.
        assert_eq!(a.sweep_abandoned(), 0);
        assert!(b.dir().exists());
        // Simulate b dying without cleanup: release the lock but leave the files behind.
        let b_dir = b.dir().to_path_buf();
        let b_name = b.name.clone();
        std::mem::forget(b); // no Drop: like SIGKILL, files stay ...
        // ... and the kernel drops the lock when the process dies; emulate by reopening
        // the lock file is not possible (we leaked it), so build a dead one by hand:
        let dead = dest.path().join(OWN_DIR).join("staging-1-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("0.part"), b"x").unwrap();
        File::create(dest.path().join(OWN_DIR).join("staging-1-dead.lock")).unwrap();
        let orphan = dest.path().join(OWN_DIR).join("staging-2-nolock");
        std::fs::create_dir(&orphan).unwrap();
        assert_eq!(a.sweep_abandoned(), 2);
        assert!(!dead.exists() && !orphan.exists());
        assert!(b_dir.exists(), "leaked-but-locked {b_name} must survive");
        drop(a);
        let left: Vec<_> = std::fs::read_dir(dest.path().join(OWN_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(left.iter().all(|n| n.starts_with(&b_name)), "{left:?}");
    }
}
