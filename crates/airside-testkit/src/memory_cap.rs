//! Runs a daemon under the memory limit its task definition gives its container.
//!
//! ECS enforces a container's `memory` (hard limit, MiB) with a memory cgroup; a process
//! that goes over it is OOM-killed. [`MemoryCap`] does the same here: it reads the limit
//! from `infra/modules/airflow-tasks/taskdefs/<task>.json` (so a change there changes the test), creates its own child
//! group under the cgroup v1 memory controller (`/sys/fs/cgroup/memory`, which is what
//! machines of this kind mount), starts the command inside it, and reports the group's
//! peak usage and any OOM kill. It touches nothing but its own group, which it removes on
//! drop.
//!
//! Like ECS, the group counts page cache of the files the process writes; the kernel
//! reclaims that before it kills anything, so only memory the process cannot give back
//! leads to an OOM kill. [`MemoryCap::peak_rss`] reads the process's own peak resident set
//! for the figure a benchmark reports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// The hard memory limit (`memory`, MiB) of `container` in `infra/modules/airflow-tasks/taskdefs/<task>.json`.
pub fn taskdef_memory_mib(task: &str, container: &str) -> u64 {
    let path =
        crate::workspace_root().join(format!("infra/modules/airflow-tasks/taskdefs/{task}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let def: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    def["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .and_then(|c| c["memory"].as_u64())
        .unwrap_or_else(|| {
            panic!(
                "{} has no container {container:?} with a numeric hard \"memory\" limit",
                path.display()
            )
        })
}

/// A memory cgroup of its own with a hard limit, removed on drop.
pub struct MemoryCap {
    dir: PathBuf,
    limit: u64,
}

/// What the group saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReport {
    /// The limit, in bytes.
    pub limit: u64,
    /// Peak usage of the group (process memory plus page cache), in bytes.
    pub peak: u64,
    /// OOM kills in the group.
    pub oom_kills: u64,
}

impl MemoryCap {
    /// Whether this machine can run memory-capped tests (cgroup v1 memory controller,
    /// writable: root).
    pub fn available() -> bool {
        let probe = Path::new(MEMORY_ROOT).join(crate::unique_name("airside-probe"));
        Path::new(MEMORY_ROOT)
            .join("memory.limit_in_bytes")
            .exists()
            && std::fs::create_dir(&probe).is_ok()
            && std::fs::remove_dir(&probe).is_ok()
    }

    /// A new group limited to what `infra/modules/airflow-tasks/taskdefs/<task>.json` gives `container`.
    pub fn for_container(task: &str, container: &str) -> Self {
        Self::new(taskdef_memory_mib(task, container) * 1024 * 1024)
    }

    /// A new group limited to `limit` bytes (memory and memory+swap alike, so nothing can
    /// escape into swap).
    pub fn new(limit: u64) -> Self {
        let dir = Path::new(MEMORY_ROOT).join(crate::unique_name("airside-test"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the memory cgroup {} ({e}): memory-capped tests need root and \
                 the cgroup v1 memory controller",
                dir.display()
            )
        });
        let cap = Self { dir, limit };
        cap.write("memory.limit_in_bytes", limit);
        if cap.dir.join("memory.memsw.limit_in_bytes").exists() {
            cap.write("memory.memsw.limit_in_bytes", limit);
        }
        cap
    }

    fn write(&self, file: &str, value: u64) {
        std::fs::write(self.dir.join(file), value.to_string())
            .unwrap_or_else(|e| panic!("cannot set {file} of {}: {e}", self.dir.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Starts `command` inside the group: a shell joins the group, then `exec`s the
    /// command, so the process (and its pid) is the command itself from its first
    /// instruction.
    /// Standard streams set on `command` before this call are not kept (a `Command`'s
    /// cannot be read back): set them on the command after [`MemoryCap::wrap`], or use
    /// [`MemoryCap::spawn_daemon`].
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<Child> {
        self.wrap(command);
        command.spawn()
    }

    /// Rewrites `command` so that it starts inside the group (see [`MemoryCap::spawn`]).
    pub fn wrap(&self, command: &mut Command) {
        let program = command.get_program().to_os_string();
        let args: Vec<_> = command.get_args().map(|a| a.to_os_string()).collect();
        let procs = self.dir.join("cgroup.procs");
        let mut wrapped = Command::new("/bin/sh");
        wrapped
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&procs)
            .arg(program)
            .args(args);
        for (k, v) in command.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        *command = wrapped;
    }

    /// Starts a daemon inside the group with stdout discarded and stderr (its logs) in a
    /// temporary file named after `name`, removed when the returned process is dropped.
    pub fn spawn_daemon(&self, name: &str, command: &mut Command) -> CappedDaemon {
        let log = std::env::temp_dir().join(format!(
            "{name}-capped-{}-{}.log",
            std::process::id(),
            crate::unique_name("run")
        ));
        self.wrap(command);
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        CappedDaemon {
            pid: child.id(),
            child: crate::KillOnDrop::new(child),
            log,
        }
    }

    /// The limit, peak usage and OOM kills so far.
    pub fn report(&self) -> CapReport {
        let oom_kills = self
            .read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        CapReport {
            limit: self.limit,
            peak: self
                .read("memory.max_usage_in_bytes")
                .trim()
                .parse()
                .unwrap_or(0),
            oom_kills,
        }
    }

    /// Panics, with the peak, if anything in the group was OOM-killed.
    pub fn assert_no_oom(&self, what: &str) -> CapReport {
        let r = self.report();
        assert_eq!(
            r.oom_kills,
            0,
            "{what} was OOM-killed under its task definition's limit of {} MiB (group peak {:.1} MiB)",
            r.limit >> 20,
            r.peak as f64 / 1048576.0
        );
        r
    }

    /// The peak resident set (VmHWM) of a running process, in bytes.
    pub fn peak_rss(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        // Kill whatever is left in the group, then remove it (rmdir fails while it has
        // members; give the kernel a moment to reap them).
        for pid in self.read("cgroup.procs").lines() {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A daemon started by [`MemoryCap::spawn_daemon`].
pub struct CappedDaemon {
    /// Its pid (for [`MemoryCap::peak_rss`]).
    pub pid: u32,
    /// The process, killed when dropped.
    pub child: crate::KillOnDrop,
    log: std::path::PathBuf,
}

impl CappedDaemon {
    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file its stderr goes to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The address its admin server bound (started with `--admin-addr 127.0.0.1:0`).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        crate::logged_admin_addr(&self.log)
    }
}

impl Drop for CappedDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limits_from_the_task_definitions() {
        assert_eq!(taskdef_memory_mib("worker", "dagsync"), 64);
        assert_eq!(taskdef_memory_mib("scheduler", "metricship"), 128);
    }

    #[test]
    fn an_allocation_over_the_limit_is_reported_as_an_oom_kill() {
        if !MemoryCap::available() {
            eprintln!("skipped: no writable cgroup v1 memory controller");
            return;
        }
        let cap = MemoryCap::new(16 * 1024 * 1024);
        // 64 MiB of resident data in a 16 MiB group.
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1",
        ]);
        let status = cap.spawn(&mut cmd).unwrap().wait().unwrap();
        assert!(!status.success());
        let r = cap.report();
        assert!(r.oom_kills >= 1, "{r:?}");
        assert!(r.peak <= r.limit, "{r:?}");
    }
}
