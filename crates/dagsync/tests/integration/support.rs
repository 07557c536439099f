//! Helpers for dagsync's integration tests: buckets in moto, the real binary as a child
//! process, and tree snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use airside_testkit::s3::{
    create_bucket, delete_object, put_object, put_objects, s3_client, s3_client_at,
};
use airside_testkit::{KillOnDrop, Moto};

pub const BIN: &str = env!("CARGO_BIN_EXE_dagsync");

/// Every regular file under `root` except dagsync's own folder: relative path → content.
pub fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    try_snapshot(root).unwrap()
}

/// [`snapshot`], with the first I/O error instead of a panic.
pub fn try_snapshot(root: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)?.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
            if rel == ".dagsync" {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                out.insert(rel, std::fs::read(&p)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Strips the prefix from keys: what the destination tree should look like.
pub fn expected_tree(
    objects: &BTreeMap<String, Vec<u8>>,
    prefix: &str,
) -> BTreeMap<String, Vec<u8>> {
    objects
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|r| (r.to_string(), v.clone())))
        .collect()
}

/// Runs `dagsync` with `args` against `endpoint`; returns (status, stdout, stderr).
pub fn run_once<S: AsRef<std::ffi::OsStr>>(
    endpoint: &str,
    args: &[S],
) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .envs(Moto::env_for(endpoint))
        .env("DAGSYNC_LOG_FORMAT", "json")
        .env("DAGSYNC_CONCURRENCY", "8");
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A dagsync daemon child, killed (SIGKILL) on drop.
pub struct Daemon {
    pub child: KillOnDrop,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Daemon {
    /// A daemon that syncs `source` into `dest` every second (no jitter) with
    /// `--max-staleness` `staleness`.
    pub fn fast(endpoint: &str, source: &str, dest: &str, staleness: &str) -> Self {
        Self::start(
            endpoint,
            &[
                "--source",
                source,
                "--dest",
                dest,
                "--interval",
                "1s",
                "--jitter",
                "0s",
                "--max-staleness",
                staleness,
            ],
        )
    }

    /// Starts dagsync with `args`, its admin server on port 0 (read back with
    /// [`Daemon::admin`]).
    pub fn start(endpoint: &str, args: &[&str]) -> Self {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("stderr.log");
        let child = Command::new(BIN)
            .args(args)
            .args(["--admin-addr", "127.0.0.1:0"])
            .envs(Moto::env_for(endpoint))
            .env("DAGSYNC_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: KillOnDrop::new(child),
            log,
            _logdir: logdir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address its admin server bound.
    pub fn admin(&self) -> SocketAddr {
        airside_testkit::logged_admin_addr(&self.log)
    }

    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "dagsync exited early; logs:\n{}",
            self.logs()
        );
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.child.sigterm();
        self.child
            .wait_exit(within)
            .expect("dagsync did not stop after SIGTERM")
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// A blocking `GET path` against the admin server at `addr`: (status, body); (0, "") when
/// nothing listens there.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Files in DEST/.dagsync other than dagsync's own durable files (the state, the writer
/// lease and the writer's status).
pub fn leftovers(dest: &Path) -> Vec<String> {
    std::fs::read_dir(dest.join(".dagsync"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !["state.json", "lease", "status.json"].contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default()
}
