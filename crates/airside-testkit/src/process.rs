use std::net::SocketAddr;
use std::ops::{ControlFlow, Deref, DerefMut};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A loopback address whose port was free a moment ago: bound to port 0, then released, so
/// a daemon child process can be told to listen there (`--admin-addr`, a StatsD port).
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
