//! logship as the task definitions run it: as uid 65532 among Airflow's files, with
//! Airflow 3's JSON logs, with lines that never get their newline. (The memory-capped
//! backlog replay is `tests/memory.rs`, a test binary of its own.)

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use airside_testkit::moto;
use serde_json::Value;

use crate::common::*;

/// The user the images run logship as.
const LOGSHIP_UID: u32 = 65532;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon tailing `DIR/logs/**/*.log` to stdout, polling every `poll`, with a 300 ms
/// multiline timeout, as `uid`.
async fn stdout_daemon(tmp: &Path, poll: &str, uid: Option<u32>) -> Daemon {
    let state = tmp.join("state");
    std::fs::create_dir_all(&state).unwrap();
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&state, Some(uid), Some(uid)).unwrap();
    }
    let mut d = Daemon::start_as(
        &[
            s("--path"),
            format!("{}/logs/**/*.log", tmp.display()),
            s("--output"),
            s("stdout"),
            s("--state-dir"),
            state.display().to_string(),
            s("--poll-interval"),
            s(poll),
            s("--multiline-timeout"),
            s("300ms"),
        ],
        &moto().endpoint(),
        tmp,
        true,
        uid,
    );
    d.wait_ready().await;
    d
}

fn messages(d: &Daemon) -> Vec<String> {
    d.stdout_records()
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_files_and_folders_show_in_the_log_metrics_and_readyz() {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(logs.join("ok")).unwrap();
    std::fs::create_dir_all(logs.join("locked")).unwrap();
    chmod(&logs, 0o755);
    chmod(&logs.join("ok"), 0o755);
    std::fs::write(logs.join("ok/attempt=1.log"), "readable line\n").unwrap();
    chmod(&logs.join("ok/attempt=1.log"), 0o644);
    // Airflow's files as a umask of 077 leaves them: root's here, unreadable to 65532.
    let secret = logs.join("secret.log");
    std::fs::write(&secret, "hidden line\n").unwrap();
    chmod(&secret, 0o600);
    std::fs::write(logs.join("locked/attempt=1.log"), "locked line\n").unwrap();
    chmod(&logs.join("locked"), 0o700);

    let mut d = stdout_daemon(tmp.path(), "200ms", Some(LOGSHIP_UID)).await;
    d.eventually_on_stdout(Duration::from_secs(10), "the readable file", |l| {
        l.iter().any(|x| x.contains("readable line"))
    })
    .await;
    let admin = d.admin();
    eventually(
        Duration::from_secs(10),
        "both unreadable paths on /readyz",
        || async move {
            let (status, body) = airside_core::healthcheck::get(admin, "/readyz")
                .await
                .unwrap();
            status == 200
                && body.contains("secret.log (Permission denied")
                && body.contains("locked (Permission denied")
        },
    )
    .await;
    let m = d.metrics().await;
    assert_eq!(metric_sum(&m, "logship_files_unreadable"), 2.0, "{m}");
    assert_eq!(
        metric_sum(&m, "logship_files_unreadable_total"),
        2.0,
        "logged and counted once each: {m}"
    );
    let log = d.stderr_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("cannot read a log file or folder"))
        .count();
    assert_eq!(
        warnings, 2,
        "one warning per path, however many walks:\n{log}"
    );
    assert!(
        log.contains("secret.log") && log.contains("\"uid\":65532"),
        "{log}"
    );

    // Fixing the permission ships the file, and clears the report.
    chmod(&secret, 0o644);
    chmod(&logs.join("locked"), 0o755);
    chmod(&logs.join("locked/attempt=1.log"), 0o644);
    d.eventually_on_stdout(Duration::from_secs(10), "the files made readable", |l| {
        l.iter().any(|x| x.contains("hidden line")) && l.iter().any(|x| x.contains("locked line"))
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the report cleared",
        || async move {
            let (_, body) = airside_core::healthcheck::get(admin, "/readyz")
                .await
                .unwrap();
            !body.contains("unreadable")
        },
    )
    .await;
    assert_eq!(
        metric_sum(&d.metrics().await, "logship_files_unreadable"),
        0.0
    );
    d.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_a_newline_are_shipped_when_quiet_and_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
    // No polls (10 minutes): only the quiet timer can find these.
    let mut d = stdout_daemon(tmp.path(), "10m", None).await;
    let logs = tmp.path().join("logs");
    // A file whose only content is one unterminated line (a task killed mid-line).
    let mut only = std::fs::File::create(logs.join("only.log")).unwrap();
    only.write_all(b"Killed before the newline").unwrap();
    only.flush().unwrap();
    // A followed file whose last line has no newline.
    let mut two = std::fs::File::create(logs.join("two.log")).unwrap();
    two.write_all(b"first line\nlast line without newline")
        .unwrap();
    two.flush().unwrap();
    d.eventually_on_stdout(Duration::from_secs(10), "both unterminated lines", |l| {
        l.iter().any(|x| x.contains("Killed before the newline"))
            && l.iter().any(|x| x.contains("last line without newline"))
    })
    .await;
    let got = messages(&d);
    assert_eq!(
        got.iter().filter(|m| m.contains("Killed before")).count(),
        1,
        "{got:?}"
    );
    assert!(got.contains(&"first line".to_string()), "{got:?}");
    // At shutdown a fresh unterminated line is complete at once.
    let mut last = std::fs::File::create(logs.join("atexit.log")).unwrap();
    last.write_all(b"written just before SIGTERM").unwrap();
    last.flush().unwrap();
    // Let the creation event be seen, then stop before the quiet timer could fire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.stop(Duration::from_secs(30)).await;
    let got = messages(&d);
    assert!(
        got.contains(&"written just before SIGTERM".to_string()),
        "{got:?}\n{}",
        d.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_airflow3_json_traceback_ships_as_one_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp
        .path()
        .join("logs/dag_id=etl_orders/run_id=manual__2026-11-21/task_id=export");
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = stdout_daemon(tmp.path(), "200ms", None).await;
    let fixture = std::fs::read_to_string(
        airside_testkit::workspace_root()
            .join("crates/logship/tests/fixtures/airflow3_subprocess_traceback.log"),
    )
    .unwrap();
    std::fs::write(dir.join("attempt=1.log"), &fixture).unwrap();
    d.eventually_on_stdout(Duration::from_secs(10), "the last record", |l| {
        l.iter()
            .any(|x| x.contains("Task instance in failure state"))
    })
    .await;
    let recs = d.stdout_records();
    d.stop(Duration::from_secs(30)).await;
    assert_eq!(recs.len(), 10, "{recs:#?}");
    let hook = "airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook";
    let tb = &recs[2];
    assert_eq!(tb["fields"]["logger"], hook);
    assert_eq!(tb["dag_id"], "etl_orders");
    assert_eq!(tb["task_id"], "export");
    let message = tb["message"].as_str().unwrap();
    assert!(
        message.starts_with("Traceback (most recent call last):\n  File"),
        "{message}"
    );
    assert!(message.ends_with("RuntimeError: export of orders_clean failed — Zeitüberschreitung"));
    assert_eq!(message.lines().count(), 14);
    // Nothing lost or reordered, and every byte covered once.
    let events: Vec<String> = fixture
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let shipped: Vec<String> = recs
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shipped.join("\n"), events.join("\n"));
    let offsets: Vec<u64> = recs.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    // The other loggers' records stay their own, even between a traceback's lines.
    assert_eq!(recs[6]["fields"]["logger"], "task");
    assert_eq!(recs[5]["message"].as_str().unwrap().lines().count(), 2);
}
