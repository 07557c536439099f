use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the static binaries: `$AIRSIDE_DIST` or `<workspace>/dist`.
pub fn dist_dir() -> PathBuf {
    std::env::var_os("AIRSIDE_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("dist"))
}

/// The path of a static binary in [`dist_dir`]; panics with instructions if it is missing.
pub fn dist_binary(name: &str) -> PathBuf {
    let p = dist_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run scripts/build-static first (scripts/test does)",
        p.display()
    );
    p
}

/// An empty root filesystem holding only one binary, `/etc/hosts` and `/etc/resolv.conf`
/// (plus any extra empty directories asked for): proof that a binary runs in a
/// FROM-scratch image, without a container engine. Removed when dropped.
pub struct EmptyRoot {
    dir: tempfile::TempDir,
    binary: String,
}

impl EmptyRoot {
    /// Copies `binary` to `/<name>` inside a new empty root.
    pub fn new(binary: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for empty root");
        let name = binary
            .file_name()
            .expect("binary has a file name")
            .to_string_lossy()
            .to_string();
        std::fs::copy(binary, dir.path().join(&name)).expect("copy binary into empty root");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/hosts"),
            "127.0.0.1 localhost\n::1 localhost\n",
        )
        .expect("hosts");
        std::fs::write(dir.path().join("etc/resolv.conf"), "nameserver 127.0.0.1\n")
            .expect("resolv.conf");
        Self { dir, binary: name }
    }

    /// The root directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a directory inside the root (for example a destination folder).
    pub fn mkdir(&self, inside: &str) -> PathBuf {
        let p = self.dir.path().join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(&p).expect("mkdir in empty root");
        p
    }

    /// Lists every file in the root, relative to it (to prove nothing else is there).
    pub fn files(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out
    }

    /// A command that runs the binary chrooted into this root, with an empty environment
    /// (add what the test needs with `.env(..)`). Needs root, as CI and the dev machines have.
    pub fn command(&self) -> Command {
        // The child's environment is cleared, so find chroot(8) with the parent's PATH.
        let chroot = [
            "/usr/sbin/chroot",
            "/usr/bin/chroot",
            "/sbin/chroot",
            "/bin/chroot",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chroot(8) not found (coreutils)");
        let mut cmd = Command::new(chroot);
        cmd.arg(self.dir.path())
            .arg(format!("/{}", self.binary))
            .env_clear();
        cmd
    }
}
