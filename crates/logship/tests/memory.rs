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

/// One forward-protocol connection sending `events` events of container `c{n}` in
/// Forward-mode frames of 500 with an ack each (as Fluent Bit's forward output does);
/// every 5,000th event is a 40 KiB line the way the Docker driver splits it (16 KiB
/// partials). Returns the lines in order.
fn send_container(socket: std::path::PathBuf, n: usize, events: usize) -> Vec<String> {
    use rmpv::Value;
    use std::io::Write;
    fn v(s: &str) -> Value {
        Value::from(s)
    }
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let container = format!("c{n:02}");
    let mut lines = Vec::with_capacity(events);
    let mut entries = Vec::new();
    let mut frame_no = 0;
    let record = |log: &str, partial: Option<(usize, usize, bool)>| {
        let mut m = vec![
            (v("container_id"), v(format!("{container}-id").as_str())),
            (v("container_name"), v(format!("/{container}").as_str())),
            (v("source"), v("stdout")),
            (v("log"), v(log)),
        ];
        if let Some((line_no, ordinal, last)) = partial {
            m.push((v("partial_message"), v("true")));
            m.push((
                v("partial_id"),
                v(format!("{container}-p{line_no}").as_str()),
            ));
            m.push((v("partial_ordinal"), v(ordinal.to_string().as_str())));
            m.push((v("partial_last"), v(if last { "true" } else { "false" })));
        }
        Value::Map(m)
    };
    let time = Value::from(1_700_000_000u32);
    for i in 0..events {
        let line = if i % 5000 == 4999 {
            format!("{container} {i:06} {}", "L".repeat(40 * 1024))
        } else {
            format!("{container} {i:06}")
        };
        if line.len() > 16 * 1024 {
            let parts: Vec<&str> = line
                .as_bytes()
                .chunks(16 * 1024)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            for (k, p) in parts.iter().enumerate() {
                entries.push(Value::Array(vec![
                    time.clone(),
                    record(p, Some((i, k + 1, k + 1 == parts.len()))),
                ]));
            }
        } else {
            entries.push(Value::Array(vec![time.clone(), record(&line, None)]));
        }
        lines.push(line);
        if entries.len() >= 500 || i + 1 == events {
            let chunk = format!("{container}-{frame_no}");
            frame_no += 1;
            let frame = Value::Array(vec![
                v(format!("{container}-firelens-t").as_str()),
                Value::Array(std::mem::take(&mut entries)),
                Value::Map(vec![(v("chunk"), v(chunk.as_str()))]),
            ]);
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &frame).unwrap();
            conn.write_all(&bytes).unwrap();
            let ack = rmpv::decode::read_value(&mut conn).expect("an ack");
            assert_eq!(ack.as_map().unwrap()[0].1.as_str(), Some(chunk.as_str()));
        }
    }
    lines
}

/// logship as the FireLens router, under the worker task definition's 64 MiB: 1,000,000
/// events from 20 concurrent connections, long lines split into 16 KiB partials, while
/// Firehose is down for the first minute. Everything acknowledged reaches Firehose → S3
/// exactly once and in order per container, nothing is OOM-killed, the disk buffer
/// drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_forwarded_events_survive_a_firehose_outage_inside_the_task_definition_limit() {
    use airside_testkit::{Fault, FaultPlan, FaultProxy, MemoryCap, Moto};
    assert!(
        MemoryCap::available(),
        "memory-capped tests need root and the cgroup v1 memory controller"
    );
    const CONNECTIONS: usize = 20;
    const EVENTS: usize = 50_000;
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, stream) = firehose_to_bucket().await;
    let proxy = FaultProxy::start_strict_aws(
        &moto().endpoint(),
        FaultPlan::only(0.0, &[Fault::InternalError]).for_target("Firehose_"),
    );
    let cap = MemoryCap::for_container("worker", "logship");
    let socket = tmp.path().join("fluent.sock");
    let buffer = tmp.path().join("buffer");
    let mut cmd = std::process::Command::new(airside_testkit::dist_binary("logship"));
    cmd.args([
        "--forward",
        "true",
        "--path",
        "",
        "--forward-socket",
        &socket.display().to_string(),
        "--forward-listen",
        "",
        "--forward-health",
        "",
        "--firelens-config",
        &tmp.path().join("none.conf").display().to_string(),
        "--buffer-dir",
        &buffer.display().to_string(),
        "--output",
        &format!("firehose:{stream}"),
        "--state-dir",
        &tmp.path().join("state").display().to_string(),
        "--admin-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
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
    // Firehose is down for a minute while all 20 connections send.
    proxy.set_rate(1.0);
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|n| {
            let socket = socket.clone();
            std::thread::spawn(move || send_container(socket, n, EVENTS))
        })
        .collect();
    let sent: Vec<Vec<String>> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let send_time = started.elapsed();
    let buffered = metric_sum(&metrics(admin).await, "logship_forward_buffer_bytes");
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(started.elapsed())).await;
    proxy.set_rate(0.0);
    let failed = proxy.stats().injected(Fault::InternalError);
    let total: u64 = sent.iter().map(|s| s.len() as u64).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while proxy.strict_api().firehose_lines_accepted() < total {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "logship exited: {:?}\n{}",
            cap.report(),
            daemon.logs()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {total} events delivered in 10 minutes\n{}",
            proxy.strict_api().firehose_lines_accepted(),
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let peak_rss = MemoryCap::peak_rss(daemon.pid).expect("VmHWM of a running process");
    let report = cap.assert_no_oom("logship");
    // The buffer drains: delivered segments are deleted.
    let b = buffer.clone();
    eventually(Duration::from_secs(30), "the buffer drained", || {
        let b = b.clone();
        async move {
            std::fs::read_dir(&b)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "lsb")
                })
                .count()
                <= 1
        }
    })
    .await;
    daemon.child.sigterm();
    let status = daemon
        .child
        .wait_exit(Duration::from_secs(30))
        .expect("stops");
    assert!(status.success(), "{status}\n{}", daemon.logs());
    assert!(failed >= 10, "Firehose failed {failed} calls only");
    assert!(buffered > 0.0, "the outage filled the buffer");
    assert_eq!(
        proxy.strict_api().firehose_lines_accepted(),
        total,
        "exactly once"
    );
    assert!(proxy.strict_api().refused().is_empty());
    // Read back from S3: every container's lines, once, in order within each object
    // (the emulator's object names do not order objects written in the same second).
    let mut got: std::collections::HashMap<String, Vec<(usize, String)>> = Default::default();
    for key in list_keys(&bucket, "fh/").await {
        let mut last: std::collections::HashMap<String, usize> = Default::default();
        for r in object_records(&bucket, &key).await {
            let c = r["container_name"].as_str().unwrap().to_string();
            let m = r["message"].as_str().unwrap().to_string();
            let i: usize = m[4..10].parse().unwrap();
            if let Some(&before) = last.get(&c) {
                assert!(i > before, "{key}: {c} event {i} after {before}");
            }
            last.insert(c.clone(), i);
            got.entry(c).or_default().push((i, m));
        }
    }
    for (n, lines) in sent.iter().enumerate() {
        let c = format!("c{n:02}");
        let mut g = got.remove(&c).unwrap_or_default();
        g.sort();
        assert_eq!(
            g.len(),
            lines.len(),
            "{c}: {} of {} lines",
            g.len(),
            lines.len()
        );
        assert!(
            g.iter().map(|(_, m)| m).eq(lines.iter()),
            "{c}: lines missing, doubled or changed"
        );
    }
    assert!(got.is_empty());
    println!(
        "1,000,000 forwarded events from {CONNECTIONS} connections (sent in {send_time:?}, {buffered:.0} bytes buffered during a 60 s Firehose outage, {failed} failed calls) under {} MiB: peak RSS {:.1} MiB, cgroup peak {:.1} MiB",
        report.limit >> 20,
        peak_rss as f64 / 1048576.0,
        report.peak as f64 / 1048576.0
    );
}
