//! Process titles are written by any process of the worker task: whatever a cmdline holds,
//! reading it never panics, and a task is only ever found where a documented form is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workerguard::titles::{TaskKey, task_of};

fuzz_target!(|data: &[u8]| {
    match task_of(data) {
        Some(TaskKey::Instance(id)) => {
            assert_eq!(id.len(), 36);
            assert!(data.starts_with(b"airflow worker -- "));
        }
        Some(TaskKey::Legacy { dag, task, run }) => {
            assert!(!dag.is_empty() && !task.is_empty() && !run.is_empty());
            let text = String::from_utf8_lossy(data);
            assert!(
                text.starts_with("airflow task runner: ")
                    || text.starts_with("airflow task supervisor: ")
                    || text.contains("airflow\0tasks\0run\0"),
                "{text:?}"
            );
        }
        None => {}
    }
});
