//! workerguard's integration tests: the test build of the binary against the ECS agent
//! stand-in of the test kit (with the fault proxy in front of it where faults are
//! injected), with Airflow task processes stood for by a process table of its own
//! (`--proc-dir`), so that tests side by side cannot see each other's tasks. Real
//! processes with real titles are read from the real `/proc` by the unit tests of
//! `procs.rs`, and from real Airflow by `tests/airflow/test_workerguard.py`.
//!
//! The stand-in's minute is shortened (one `ExpiresInMinutes` minute is a second or
//! less), so that expiry and renewal happen within a test; a protection that was not
//! renewed in time shows in its timeline as a lapse.

mod faults;
mod lifecycle;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airside_testkit::{EcsAgent, KillOnDrop, logged_admin_addr};

/// How often the test daemons read their process table.
pub const CHECK: Duration = Duration::from_millis(100);
/// Their idle grace.
pub const GRACE: Duration = Duration::from_secs(3);
/// Their longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(1);
/// Room for scheduling and a loopback round trip on a busy 2-core machine.
pub const MARGIN: Duration = Duration::from_millis(600);

/// A process table of the test's own: `<pid>/cmdline` files.
#[derive(Default)]
pub struct FakeProc {
    dir: TempDir,
}

/// A temporary folder (the default is a new one).
pub struct TempDir(tempfile::TempDir);

impl Default for TempDir {
    fn default() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

impl TempDir {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl FakeProc {
    /// An empty table (but for a process that is not a task).
    pub fn new() -> Self {
        let p = Self::default();
        p.start(1, "/usr/bin/dumb-init\0--\0/entrypoint\0celery\0worker\0");
        p
    }

    /// Where the daemon reads it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A process `pid` with this cmdline appears.
    pub fn start(&self, pid: u32, cmdline: &str) {
        let dir = self.dir.path().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("cmdline.tmp");
        std::fs::write(&tmp, cmdline).unwrap();
        std::fs::rename(tmp, dir.join("cmdline")).unwrap();
    }

    /// An Airflow 3 task runner for task instance number `n`.
    pub fn start_task(&self, pid: u32, n: u32) {
        self.start(pid, &format!("airflow worker -- {}\0", task_id(n)));
    }

    /// Process `pid` ends.
    pub fn end(&self, pid: u32) {
        std::fs::remove_dir_all(self.dir.path().join(pid.to_string())).unwrap();
    }
}

/// A task instance id (a uuid) for number `n`.
pub fn task_id(n: u32) -> String {
    format!("0199a3f2-7c4e-7d1a-9b2e-{n:012x}")
}

/// workerguard running as a child process.
pub struct Guard {
    /// The process.
    pub child: KillOnDrop,
    /// Its admin server.
    pub admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guard {
    /// Starts the test build against `agent_uri`, reading `proc`, with the test timings
    /// and `extra` flags.
    pub fn start(agent_uri: &str, proc: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_workerguard"))
            .env_clear()
            .env("ECS_AGENT_URI", agent_uri)
            .args(["--proc-dir", proc.to_str().unwrap()])
            .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--check-interval", "100ms", "--idle-grace", "3s"])
            .args(["--retry-max", "1s", "--request-timeout", "2s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start workerguard");
        let child = KillOnDrop::new(child);
        let admin = logged_admin_addr(&log);
        Self {
            child,
            admin,
            log,
            _dir: dir,
        }
    }

    /// Everything it logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(status, body)` of a GET on its admin server.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    /// The value of one series (name with labels, as exposed) on /metrics.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    /// Waits until /readyz answers 200.
    pub fn wait_ready(&self) {
        wait_for(Duration::from_secs(10), "workerguard ready", || {
            self.get("/readyz").0 == 200
        });
    }
}

/// Polls `ok` every 20 ms until it holds, or panics after `within`.
pub fn wait_for(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The protection a test wants over time: on from each `(on, off)` pair's first time to
/// its second (stand-in clock).
pub fn wanted_at(wanted: &[(Duration, Duration)], t: Duration) -> bool {
    wanted.iter().any(|(on, off)| *on <= t && t < *off)
}

/// Asserts that the stand-in's protection was never different from `wanted` for longer
/// than `slack` after a change of `wanted`, sampling every 10 ms from 0 to `until`; within
/// `excused` (a fault window and the bound after it) anything goes.
pub fn assert_follows(
    agent: &EcsAgent,
    wanted: &[(Duration, Duration)],
    slack: Duration,
    excused: Option<(Duration, Duration)>,
    until: Duration,
) {
    let timeline = agent.timeline();
    let changes: Vec<Duration> = wanted.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let mut t = Duration::ZERO;
    while t < until {
        let actual = airside_testkit::protected_at(&timeline, t);
        let want = wanted_at(wanted, t);
        let excused_now = excused.is_some_and(|(a, b)| a <= t && t < b);
        let settling = changes.iter().any(|c| *c <= t && t < *c + slack);
        assert!(
            actual == want || excused_now || settling,
            "at {t:?} the task was {} but should be {}; timeline {timeline:?}, wanted {wanted:?}, requests {:#?}",
            if actual { "protected" } else { "unprotected" },
            if want { "protected" } else { "unprotected" },
            agent.requests()
        );
        t += Duration::from_millis(10);
    }
}
