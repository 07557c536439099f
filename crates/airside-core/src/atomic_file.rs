//! One way to replace a small file so that a crash leaves either the old or the new
//! content, never a torn or missing file: write a temporary file beside it, fsync it,
//! rename it over the target, then fsync the folder. Without the last step the rename
//! itself may not survive a crash (ext4 and NFS commit directory entries separately from
//! file data), and a daemon would come back to the old state file after having acted on
//! the new one. Both dagsync's state and logship's checkpoints go through here.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writing a file atomically failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {} atomically: {step} {}: {source}", target.display(), path.display())]
pub struct AtomicWriteError {
    /// The file being replaced.
    pub target: PathBuf,
    /// What was being done.
    pub step: &'static str,
    /// The path the failing call touched (the temporary file, the target or the folder).
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Replaces `target` with `bytes` atomically and durably. `tmp` must be on the same
/// filesystem as `target` (a rename cannot cross filesystems); by default use
/// [`write_atomically`], which puts it beside the target.
pub fn write_atomically_via(
    target: &Path,
    tmp: &Path,
    bytes: &[u8],
) -> Result<(), AtomicWriteError> {
    let err = |step: &'static str, path: &Path| {
        let (target, path) = (target.to_path_buf(), path.to_path_buf());
        move |source| AtomicWriteError {
            target,
            step,
            path,
            source,
        }
    };
    {
        let mut f = std::fs::File::create(tmp).map_err(err("creating", tmp))?;
        f.write_all(bytes).map_err(err("writing", tmp))?;
        f.sync_all().map_err(err("fsyncing", tmp))?;
    }
    if let Err(e) = std::fs::rename(tmp, target) {
        let _ = std::fs::remove_file(tmp);
        return Err(err("renaming onto", target)(e));
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsyncing the folder", dir))
}

/// Replaces `target` with `bytes` atomically and durably, through `TARGET.tmp-PID`
/// beside it (the process id keeps two processes sharing a folder off each other's
/// temporary file).
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = target.with_file_name(name);
    write_atomically_via(target, &tmp, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        write_atomically(&target, b"one").unwrap();
        write_atomically(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_content_and_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        write_atomically(&target, b"old").unwrap();
        // A temporary path in a folder that does not exist cannot be created.
        let e = write_atomically_via(&target, &dir.path().join("missing/tmp"), b"new").unwrap_err();
        assert_eq!(e.step, "creating");
        assert!(e.to_string().contains("state.json"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        // A target that is a folder cannot be replaced by a file: the rename fails and the
        // temporary file is removed.
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("x"), b"").unwrap();
        let e = write_atomically(&folder, b"new").unwrap_err();
        assert_eq!(e.step, "renaming onto");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
