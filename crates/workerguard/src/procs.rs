//! The process table in, the set of running Airflow task instances out.
//!
//! With `pidMode: "task"` every container of the worker task shares one PID namespace, so
//! `/proc` lists the Airflow worker's processes. Of each process only
//! `/proc/<pid>/cmdline` is read: the kernel serves it to every user (it is the process
//! title `ps` shows), so this needs no capability and reads no other file of the process
//! (no `environ`, no file descriptors, no memory through `ptrace`). `/proc` must not be
//! mounted with `hidepid` (Fargate does not).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use crate::titles::{TaskKey, task_of};

/// Longest part of a `cmdline` read: titles are short, and an argument vector's first
/// words are the ones that matter.
const CMDLINE_LIMIT: u64 = 4096;

/// The running task instances: each with the pid of one process that runs it.
pub type Running = BTreeMap<TaskKey, u32>;

/// Reads the process table of one `/proc`.
#[derive(Debug)]
pub struct ProcTable {
    root: PathBuf,
    own_pid: u32,
    buf: Vec<u8>,
}

/// The process table could not be listed at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot list processes in {root}: {source} (workerguard needs the worker's /proc: pidMode \"task\" in the task definition)"
)]
pub struct ScanError {
    /// The folder listed.
    pub root: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl ProcTable {
    /// Reads processes under `root` (normally `/proc`).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            own_pid: std::process::id(),
            buf: Vec::with_capacity(CMDLINE_LIMIT as usize),
        }
    }

    /// The task instances running now. A process that ends while it is read is skipped.
    pub fn scan(&mut self) -> Result<Running, ScanError> {
        let fail = |source| ScanError {
            root: self.root.display().to_string(),
            source,
        };
        let mut running = Running::new();
        for entry in std::fs::read_dir(&self.root).map_err(fail)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == self.own_pid {
                continue;
            }
            self.buf.clear();
            let read = std::fs::File::open(entry.path().join("cmdline"))
                .and_then(|f| f.take(CMDLINE_LIMIT).read_to_end(&mut self.buf));
            // Gone, a zombie or a kernel thread (empty): not a task.
            if read.is_err() || self.buf.is_empty() {
                continue;
            }
            if let Some(key) = task_of(&self.buf) {
                running.entry(key).or_insert(pid);
            }
        }
        Ok(running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_proc_gives_the_tasks_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let write = |pid: &str, cmdline: &[u8]| {
            std::fs::create_dir_all(dir.path().join(pid)).unwrap();
            std::fs::write(dir.path().join(pid).join("cmdline"), cmdline).unwrap();
        };
        let id = "0199a3f2-7c4e-7d1a-9b2e-5f3c8e1d2a40";
        write("10", b"airflow worker -- LocalExecutor: <idle>\0");
        write("11", format!("airflow worker -- {id}\0").as_bytes());
        write(
            "12",
            format!("airflow worker -- LocalExecutor: {id}\0").as_bytes(),
        );
        write("13", b"");
        write("14", b"airflow\0tasks\0run\0d\0t\0r\0--local\0");
        write("15", b"airflow task runner: d t r 9");
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        std::fs::create_dir_all(dir.path().join("16")).unwrap(); // ended while listed
        let running = ProcTable::new(dir.path().to_path_buf()).scan().unwrap();
        let keys: Vec<String> = running.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, vec![id.to_string(), "d/t/r".to_string()]);
        assert_eq!(running.values().copied().collect::<Vec<_>>(), vec![11, 14]);
    }

    /// Real processes in the real `/proc`, titled as Airflow titles them (`exec -a` sets
    /// argv[0], as `setproctitle` rewrites it): the task runner is seen, its look-alike is
    /// not, and once it exits it is gone.
    #[test]
    fn real_processes_are_read_from_proc() {
        let id = format!("0199a3f2-7c4e-7d1a-9b2e-{:012x}", std::process::id());
        let spawn = |title: &str| {
            airside_testkit::KillOnDrop::new(
                std::process::Command::new("bash")
                    .args(["-c", &format!("exec -a '{title}' sleep 30")])
                    .spawn()
                    .unwrap(),
            )
        };
        let runner = spawn(&format!("airflow worker -- {id}"));
        let pool = spawn(&format!("airflow worker -- LocalExecutor: {id}"));
        let mut table = ProcTable::new("/proc".into());
        let key = TaskKey::Instance(id.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let running = table.scan().unwrap();
            if let Some(pid) = running.get(&key) {
                assert_eq!(*pid, runner.id());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} not seen: {running:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(runner);
        let running = table.scan().unwrap();
        assert!(!running.contains_key(&key), "{running:?}");
        drop(pool);
    }

    #[test]
    fn a_missing_proc_is_an_error_that_names_pid_mode() {
        let err = ProcTable::new("/nonexistent/proc".into())
            .scan()
            .unwrap_err();
        assert!(err.to_string().contains("pidMode"), "{err}");
    }
}
