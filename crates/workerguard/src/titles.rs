//! Process titles in, Airflow task instances out: which process of the worker task is an
//! Airflow task running, and which task it is.
//!
//! The input is a process's `/proc/<pid>/cmdline`: its argument vector separated by NUL
//! bytes, or the one string a process wrote over it with `setproctitle`. Exactly these
//! forms count, each named by the task it runs:
//!
//! | form | written by | key |
//! |---|---|---|
//! | `airflow worker -- <uuid>` | Airflow 3's task runner (task-sdk `execution_time/task_runner.py`, `startup()`), for the whole run of one task instance | the task instance id |
//! | `airflow task runner: <dag> <task> <run> [<job>]` | Airflow 2's forked task runner (`StandardTaskRunner`) | dag, task, run |
//! | `airflow task supervisor: ['airflow', 'tasks', 'run', <dag>, <task>, <run>, …]` | Airflow 2's Celery worker, forking a task (`execute_tasks_new_python_interpreter = False`) | dag, task, run |
//! | `… airflow tasks run <dag> <task> <run> …` as an argument vector | Airflow 2 running a task in a new interpreter (the `--local` supervisor and the `--raw` runner) | dag, task, run |
//!
//! Not counted, although they look alike: `airflow worker -- LocalExecutor: <idle>` and
//! `airflow worker -- LocalExecutor: <uuid>` (Airflow 3's LocalExecutor pool processes,
//! idle or supervising; the task they supervise has a runner of its own, counted by the
//! first form), the Celery worker and its pool processes, the scheduler, and anything
//! else. The uuid must be in its canonical form (8-4-4-4-12 hexadecimal digits), the
//! whole rest of the title.
//!
//! Airflow 2's forms carry no map index, so mapped instances of one task running in one
//! worker count once: the count can be low for them, but it is never 0 while one runs,
//! which is what protection needs.

use std::fmt;

/// One running Airflow task instance, as its process title names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskKey {
    /// Airflow 3: the task instance id (a uuid).
    Instance(String),
    /// Airflow 2: `dag/task/run` (no map index in its titles).
    Legacy {
        /// The DAG id.
        dag: String,
        /// The task id.
        task: String,
        /// The run id (or an execution date, on old versions).
        run: String,
    },
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskKey::Instance(id) => f.write_str(id),
            TaskKey::Legacy { dag, task, run } => write!(f, "{dag}/{task}/{run}"),
        }
    }
}

const SDK_PREFIX: &str = "airflow worker -- ";
const RUNNER_PREFIX: &str = "airflow task runner: ";
const SUPERVISOR_PREFIX: &str = "airflow task supervisor: ";

/// The task a process with this `cmdline` runs, if it is one of the forms above.
pub fn task_of(cmdline: &[u8]) -> Option<TaskKey> {
    let args: Vec<&[u8]> = {
        let mut args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        while args.last().is_some_and(|a| a.is_empty()) {
            args.pop();
        }
        args
    };
    let first = std::str::from_utf8(args.first()?).ok()?;
    // setproctitle may leave padding after the title.
    let title = first.trim_end_matches([' ', '\0']);
    if let Some(rest) = title.strip_prefix(SDK_PREFIX) {
        return is_uuid(rest).then(|| TaskKey::Instance(rest.to_string()));
    }
    if let Some(rest) = title.strip_prefix(RUNNER_PREFIX) {
        let mut words = rest.split(' ').filter(|w| !w.is_empty());
        return legacy(words.next()?, words.next()?, words.next()?);
    }
    if let Some(rest) = title.strip_prefix(SUPERVISOR_PREFIX) {
        let items = python_str_list(rest)?;
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        return tasks_run(&refs);
    }
    let argv: Vec<&str> = args
        .iter()
        .map(|a| std::str::from_utf8(a))
        .collect::<Result<_, _>>()
        .ok()?;
    tasks_run(&argv)
}

/// `… airflow tasks run <dag> <task> <run> …`, where the word before `tasks` is the
/// `airflow` command (or a path ending in it).
fn tasks_run(argv: &[&str]) -> Option<TaskKey> {
    let at = argv
        .windows(3)
        .position(|w| is_airflow(w[0]) && w[1] == "tasks" && w[2] == "run")?;
    let rest = &argv[at + 3..];
    let (dag, task, run) = (rest.first()?, rest.get(1)?, rest.get(2)?);
    if [dag, task, run].iter().any(|w| w.starts_with('-')) {
        return None;
    }
    legacy(dag, task, run)
}

fn is_airflow(word: &str) -> bool {
    word == "airflow" || word.ends_with("/airflow")
}

fn legacy(dag: &str, task: &str, run: &str) -> Option<TaskKey> {
    if dag.is_empty() || task.is_empty() || run.is_empty() {
        return None;
    }
    Some(TaskKey::Legacy {
        dag: dag.to_string(),
        task: task.to_string(),
        run: run.to_string(),
    })
}

/// The canonical text form of a uuid: 8-4-4-4-12 hexadecimal digits.
fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The strings of a Python `repr` of a list of strings (`['a', "b'c", 'd\\e']`), as
/// Airflow 2's supervisor title holds its command. `None` if it is not one.
fn python_str_list(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else {
            return Some(items);
        };
        if quote != '\'' && quote != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                '\\' => item.push(chars.next()?),
                c if c == quote => break,
                c => item.push(c),
            }
        }
        items.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "0199a3f2-7c4e-7d1a-9b2e-5f3c8e1d2a40";

    fn argv(words: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in words {
            out.extend_from_slice(w.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn airflow_3_task_runner_counts_by_its_instance_id() {
        let title = format!("airflow worker -- {ID}");
        assert_eq!(
            task_of(title.as_bytes()),
            Some(TaskKey::Instance(ID.to_string()))
        );
        // As /proc shows a title written over argv: NUL-terminated, maybe NUL-padded.
        let padded = format!("airflow worker -- {ID}\0\0\0\0");
        assert_eq!(
            task_of(padded.as_bytes()),
            Some(TaskKey::Instance(ID.to_string()))
        );
    }

    #[test]
    fn local_executor_pool_processes_do_not_count() {
        for title in [
            "airflow worker -- LocalExecutor: <idle>".to_string(),
            format!("airflow worker -- LocalExecutor: {ID}"),
            "airflow worker -- LocalExecutor".to_string(),
            format!("airflow worker -- {ID} extra"),
            format!("airflow worker -- {}", &ID[..35]),
            format!("airflow worker -- {}", ID.replace('-', "_")),
            "airflow worker -- 0199a3f2-7c4e-7d1a-9b2e-5f3c8e1d2a4g".to_string(),
            format!("xairflow worker -- {ID}"),
        ] {
            assert_eq!(task_of(title.as_bytes()), None, "{title}");
        }
    }

    #[test]
    fn other_processes_of_a_worker_do_not_count() {
        for words in [
            &[
                "/usr/local/bin/python3.12",
                "/home/airflow/.local/bin/airflow",
                "celery",
                "worker",
            ][..],
            &["[celeryd: celery@ip-10-0-1-7:MainProcess] -active- (celery worker)"],
            &["airflow scheduler"],
            &[
                "/usr/bin/dumb-init",
                "--",
                "/entrypoint",
                "celery",
                "worker",
            ],
            &["airflow", "tasks", "run"],
            &["airflow", "tasks", "run", "--help"],
            &["airflow", "tasks", "list", "dag"],
            &["sleep", "60"],
            &[],
        ] {
            assert_eq!(task_of(&argv(words)), None, "{words:?}");
        }
    }

    #[test]
    fn airflow_2_forms_count_by_dag_task_and_run() {
        let key = TaskKey::Legacy {
            dag: "etl".into(),
            task: "load".into(),
            run: "scheduled__2026-12-01T00:00:00+00:00".into(),
        };
        let runner = "airflow task runner: etl load scheduled__2026-12-01T00:00:00+00:00 42";
        assert_eq!(task_of(runner.as_bytes()), Some(key.clone()));
        let supervisor = "airflow task supervisor: ['airflow', 'tasks', 'run', 'etl', 'load', 'scheduled__2026-12-01T00:00:00+00:00', '--local', '--subdir', 'DAGS_FOLDER/etl.py']";
        assert_eq!(task_of(supervisor.as_bytes()), Some(key.clone()));
        let raw = argv(&[
            "/usr/local/bin/python",
            "/home/airflow/.local/bin/airflow",
            "tasks",
            "run",
            "etl",
            "load",
            "scheduled__2026-12-01T00:00:00+00:00",
            "--job-id",
            "42",
            "--raw",
        ]);
        assert_eq!(task_of(&raw), Some(key.clone()));
        let local = argv(&[
            "airflow",
            "tasks",
            "run",
            "etl",
            "load",
            "scheduled__2026-12-01T00:00:00+00:00",
            "--local",
        ]);
        assert_eq!(task_of(&local), Some(key));
        assert_eq!(key_text(), "etl/load/r");
    }

    fn key_text() -> String {
        TaskKey::Legacy {
            dag: "etl".into(),
            task: "load".into(),
            run: "r".into(),
        }
        .to_string()
    }

    #[test]
    fn python_list_reprs_are_read_with_both_quotes_and_escapes() {
        assert_eq!(
            python_str_list(r#"['a', "b'c", 'd\\e']"#),
            Some(vec!["a".into(), "b'c".into(), "d\\e".into()])
        );
        assert_eq!(python_str_list("[]"), Some(vec![]));
        assert_eq!(python_str_list("['a', b]"), None);
        assert_eq!(python_str_list("['a"), None);
        assert_eq!(python_str_list("'a'"), None);
    }

    proptest! {
        // Whatever a process writes over its argv, reading it never panics, and a key
        // is only ever found for one of the documented prefixes or an airflow argv.
        #[test]
        fn any_cmdline_is_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(key) = task_of(&bytes) {
                let text = String::from_utf8_lossy(&bytes);
                let documented = text.starts_with(SDK_PREFIX)
                    || text.starts_with(RUNNER_PREFIX)
                    || text.starts_with(SUPERVISOR_PREFIX)
                    || text.contains("airflow\0tasks\0run\0");
                prop_assert!(documented, "{key:?} from {text:?}");
            }
        }

        // Every canonical uuid after the prefix is a task; one changed separator is not.
        #[test]
        fn every_uuid_and_nothing_else(hex in "[0-9a-f]{32}", cut in 0usize..36) {
            let id = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
            let title = format!("airflow worker -- {id}");
            prop_assert_eq!(task_of(title.as_bytes()), Some(TaskKey::Instance(id.clone())));
            let mut broken = id.into_bytes();
            broken[cut] = if broken[cut] == b'-' { b'0' } else { b'-' };
            let title = format!("airflow worker -- {}", String::from_utf8(broken).unwrap());
            prop_assert_eq!(task_of(title.as_bytes()), None);
        }
    }
}
