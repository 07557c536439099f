//! logship in a memory cgroup limited as the worker task definition limits it, replaying
//! a 1 GiB backlog while Firehose throttles. A test binary of its own: it saturates both
//! cores and the disk for minutes, which would starve the timing-sensitive tests of
//! `tests/it` if it ran beside them (cargo runs test binaries one after another).

#[path = "it/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::Duration;

use airside_testkit::moto;
use serde_json::Value;

use crate::common::*;

/// The worker task definition gives logship 64 MiB. Under that limit (a memory cgroup
/// around the static binary the image ships), a 1 GiB backlog of 1,024 task logs is
/// replayed into an S3 output with a per-task key template (an object per task, were
/// nothing to bound them) and into Firehose, which throttles every call for the first
/// minute: nothing is OOM-killed, and every line arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_backlog_replays_inside_the_task_definition_limit_while_firehose_throttles() {
    use airside_testkit::{Fault, FaultPlan, FaultProxy, MemoryCap, Moto};
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
        "127.0.0.1:0",
        "--log-format",
        "json",
        // Warnings only, but the line that says where the admin server listens.
        "--log-level",
        "warn,airside_core::admin=info",
    ])
    .env_remove("ECS_CONTAINER_METADATA_URI_V4")
    .envs(Moto::env_for(&proxy.endpoint()));
    let mut daemon = cap.spawn_daemon("logship", &mut cmd);
    let admin = daemon.admin_addr();
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
