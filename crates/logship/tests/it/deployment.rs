//! logship as the task definitions run it: as uid 65532 among Airflow's files, with
//! Airflow 3's JSON logs, with lines that never get their newline, and (in a memory
//! cgroup) replaying a large backlog while Firehose throttles.

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
    let admin = d.admin;
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

/// The worker task definition gives logship 64 MiB. Under that limit (a memory cgroup
/// around the static binary the image ships), a 1 GiB backlog of 1,024 task logs is
/// replayed into an S3 output with a per-task key template (an object per task, were
/// nothing to bound them) and into Firehose, which throttles every call for the first
/// minute: nothing is OOM-killed, and every line arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_backlog_replays_inside_the_task_definition_limit_while_firehose_throttles() {
    use airside_testkit::{Fault, FaultPlan, FaultProxy, MemoryCap, Moto, free_addr};
    assert!(
        MemoryCap::available(),
        "memory-capped tests need root and the cgroup v1 memory controller"
    );
    const TASKS: usize = 1024;
    const LINES: usize = 5243; // 200-byte lines: 1 MiB per task, 1 GiB in all
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let filler = "f".repeat(200);
    for t in 0..TASKS {
        let dir = logs.join(format!("dag_id=d{}/run_id=r1/task_id=t{t:04}", t % 8));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::with_capacity(LINES * 200);
        for i in 0..LINES {
            let head = format!("task {t:04} line {i:06} ");
            text.push_str(&head);
            text.push_str(&filler[..199 - head.len()]);
            text.push('\n');
        }
        std::fs::write(dir.join("attempt=1.log"), text).unwrap();
    }
    let bucket = create_bucket().await;
    let (_, stream) = firehose_to_bucket().await;
    let proxy = FaultProxy::start_strict_aws(
        &moto().endpoint(),
        FaultPlan::only(0.0, &[Fault::Throttle]).for_target("Firehose_"),
    );
    let cap = MemoryCap::for_container("worker", "logship");
    let state = tmp.path().join("state");
    let admin = free_addr();
    let mut cmd = std::process::Command::new(airside_testkit::dist_binary("logship"));
    cmd.args([
        "--path",
        &format!("{}/**/*.log", logs.display()),
        "--output",
        &format!("s3://{bucket}/logs"),
        "--output",
        &format!("firehose:{stream}"),
        "--s3-key-template",
        "{dag_id}/{run_id}/{task_id}/{try_number}-{uuid}.ndjson.gz",
        "--state-dir",
        &state.display().to_string(),
        "--admin-addr",
        &admin.to_string(),
        "--log-format",
        "json",
        "--log-level",
        "warn",
    ])
    .env_remove("ECS_CONTAINER_METADATA_URI_V4")
    .envs(Moto::env_for(&proxy.endpoint()));
    let mut daemon = cap.spawn_daemon("logship", &mut cmd);
    eventually(Duration::from_secs(30), "readiness", || async move {
        matches!(
            airside_core::healthcheck::get(admin, "/readyz").await,
            Ok((200, _))
        )
    })
    .await;
    // Firehose throttles every call for a minute, then recovers.
    proxy.set_rate(1.0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    proxy.set_rate(0.0);
    let throttled = proxy.stats().injected(Fault::Throttle);
    let file_size = (LINES * 200) as u64;
    let delivered = || {
        let Ok(bytes) = std::fs::read(state.join("checkpoints.json")) else {
            return 0;
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        v["files"]
            .as_array()
            .map(|files| {
                files
                    .iter()
                    .filter(|e| e["offset"].as_u64() == Some(file_size))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while delivered() < TASKS {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "logship exited: {:?}\n{}",
            cap.report(),
            daemon.logs()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {TASKS} files delivered in 10 minutes\n{}",
            delivered(),
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let peak_rss = MemoryCap::peak_rss(daemon.pid).expect("VmHWM of a running process");
    let metrics = metrics(admin).await;
    let report = cap.assert_no_oom("logship");
    daemon.child.sigterm();
    let status = daemon
        .child
        .wait_exit(Duration::from_secs(30))
        .expect("stops");
    assert!(status.success(), "{status}\n{}", daemon.logs());
    assert!(
        throttled >= 10,
        "Firehose was throttled {throttled} times only"
    );

    // Firehose: every line, exactly once (a throttled call never reached the emulator).
    assert_eq!(
        proxy.strict_api().firehose_lines_accepted(),
        (TASKS * LINES) as u64
    );
    assert!(proxy.strict_api().refused().is_empty());
    // S3: every line of every task, read back from the objects.
    let keys = list_keys(&bucket, "logs/").await;
    let mut seen = vec![false; TASKS * LINES];
    let mut set = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(8).max(1)) {
        let (bucket, chunk) = (bucket.clone(), chunk.to_vec());
        set.spawn(async move {
            let mut found = Vec::new();
            for key in chunk {
                let task_dir = key.split('/').nth(3).unwrap_or_default().to_string();
                for r in object_records(&bucket, &key).await {
                    let m = r["message"].as_str().unwrap();
                    let t: usize = m[5..9].parse().unwrap();
                    let i: usize = m[15..21].parse().unwrap();
                    // A per-task key: each object holds one task's lines only.
                    assert_eq!(task_dir, format!("t{t:04}"), "{key}");
                    found.push(t * LINES + i);
                }
            }
            found
        });
    }
    while let Some(found) = set.join_next().await {
        for n in found.unwrap() {
            seen[n] = true;
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "{missing} lines missing from S3");
    let early = metric_sum(&metrics, "logship_s3_early_rolls_total");
    assert!(
        early > 0.0,
        "1,024 open objects must have met --s3-max-buffered"
    );
    println!(
        "1 GiB backlog ({TASKS} tasks) into S3 (per-task keys, {} objects, {early} early rolls) and Firehose (throttled {throttled} times in the first 60 s) under {} MiB: peak RSS {:.1} MiB, cgroup peak {:.1} MiB",
        keys.len(),
        report.limit >> 20,
        peak_rss as f64 / 1048576.0,
        report.peak as f64 / 1048576.0
    );
}
