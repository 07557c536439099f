use std::net::SocketAddr;
use std::ops::{ControlFlow, Deref, DerefMut};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A loopback address whose port was free a moment ago: bound to port 0, then released.
/// Only for an address where nothing must listen (a healthcheck that must fail): a daemon
/// is started on port 0 and its bound address read back with [`logged_admin_addr`], so
/// two tests can never race for one port.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address of a bound listener")
}

/// A daemon child process that is killed (SIGKILL) and reaped when dropped, so a test that
/// fails half-way leaves no daemon running. Derefs to the [`Child`] for everything else
/// (`id`, `try_wait`, `kill`, its pipes).
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Takes ownership of a spawned child.
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// Sends SIGTERM (through kill(1), the crates forbid unsafe code); panics if kill fails.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill(1)")
            .success();
        assert!(ok, "kill -TERM {} failed", self.0.id());
    }

    /// Polls every 50 ms, blocking the thread, until the child exits; `None` if it is still
    /// running once `within` has passed.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let ControlFlow::Break(exit) = self.poll_exit(deadline) {
                return exit;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`KillOnDrop::wait_exit`] for async tests: polls every 20 ms with a tokio sleep,
    /// so the runtime's other tasks keep running meanwhile.
    pub async fn wait_exit_async(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let ControlFlow::Break(exit) = self.poll_exit(deadline) {
                return exit;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One look at the child: its exit status once it has exited, `None` once `deadline` has
    /// passed while it still runs, `Continue` to look again later.
    fn poll_exit(&mut self, deadline: Instant) -> ControlFlow<Option<ExitStatus>> {
        if let Some(status) = self.0.try_wait().expect("try_wait on the child") {
            return ControlFlow::Break(Some(status));
        }
        if Instant::now() >= deadline {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most `within`) for a JSON log line with this `message` in the file a daemon
/// child writes its stderr to, and returns that line's `field`.
pub fn logged_field(
    log: &std::path::Path,
    message: &str,
    field: &str,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v.get("message")?.as_str()? == message)
                .then(|| v.get(field)?.as_str().map(str::to_string))?
        });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address the admin server of a daemon child started with `--admin-addr
/// 127.0.0.1:0` bound, from its "admin server listening" log line (JSON logs, stderr
/// written to `log`). Panics with the log when it does not come within 30 s.
pub fn logged_admin_addr(log: &std::path::Path) -> SocketAddr {
    match logged_field(
        log,
        "admin server listening",
        "addr",
        Duration::from_secs(30),
    ) {
        Some(addr) => addr.parse().expect("a socket address in the log"),
        None => panic!(
            "the daemon did not log its admin address within 30 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}
