//! A folder that behaves like the shared EFS mount: a FUSE filesystem (bindfs, from
//! Debian) over a temporary folder. Writes go through a userspace filesystem layer as
//! they go through the NFS client on EFS: renames and `flock`s are the filesystem's, a
//! write made through the backing path raises no event on the mount, and `statfs` reports
//! a filesystem dagsync does not take for a local disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bindfs mount over a temporary folder, unmounted on drop.
pub struct FuseMount {
    backing: tempfile::TempDir,
    mount: tempfile::TempDir,
}

impl FuseMount {
    /// Whether bindfs and /dev/fuse are there (scripts/test installs bindfs).
    pub fn available() -> bool {
        Path::new("/dev/fuse").exists()
            && Command::new("bindfs")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// Mounts a new empty folder with bindfs.
    pub fn new() -> Self {
        let backing = tempfile::tempdir().expect("backing folder");
        let mount = tempfile::tempdir().expect("mount point");
        let status = Command::new("bindfs")
            .arg(backing.path())
            .arg(mount.path())
            .status()
            .expect("bindfs not found: scripts/test installs it (apt-get install bindfs)");
        assert!(status.success(), "bindfs failed: {status}");
        Self { backing, mount }
    }

    /// The FUSE mount (where the daemons write).
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// The folder underneath (where a test can look without going through FUSE).
    pub fn backing(&self) -> PathBuf {
        self.backing.path().to_path_buf()
    }
}

impl Default for FuseMount {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // Lazy: a daemon killed a moment ago may still hold a file open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}
