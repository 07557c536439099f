//! What arrives: the Airflow example tree through Firehose and S3, multipart objects,
//! the polling fallback, and the static binary in an empty root.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use airside_testkit::{EmptyRoot, KillOnDrop, Moto, dist_binary, moto};
use serde_json::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_tree_arrives_exactly_once_through_firehose_and_s3() {
    let (fh_bucket, stream) = firehose_to_bucket().await;
    let s3_bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    copy_tree(&examples_dir(), &root);
    let state = tmp.path().join("state");
    let mut d = Daemon::start(
        &[
            s("--path"),
            format!("{}/**/*.log", root.display()),
            s("--output"),
            format!("firehose:{stream}"),
            s("--output"),
            format!("s3://{s3_bucket}/direct"),
            s("--state-dir"),
            state.display().to_string(),
            s("--poll-interval"),
            s("200ms"),
            s("--linger"),
            s("200ms"),
            s("--firehose-record-size"),
            s("2KiB"),
            s("--s3-max-object-age"),
            s("1s"),
            s("--multiline-timeout"),
            s("300ms"),
        ],
        &moto().endpoint(),
        tmp.path(),
        false,
    );
    d.wait_ready().await;

    // The healthcheck subcommand sees the running daemon as ready.
    let hc = std::process::Command::new(env!("CARGO_BIN_EXE_logship"))
        .args(["healthcheck", "--admin-addr", &d.admin().to_string()])
        .status()
        .unwrap();
    assert!(hc.success(), "healthcheck failed against a ready daemon");

    // A task starts while logship runs: a new mapped task file, written in two steps,
    // with a traceback arriving in pieces.
    let live = root.join(
        "dag_id=etl_orders/run_id=scheduled__2026-11-21T00:00:00+00:00/task_id=load/map_index=2/attempt=1.log",
    );
    std::fs::create_dir_all(live.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(&live).unwrap();
    writeln!(
        f,
        "[2026-11-21T00:08:00.000+0000] {{load.py:10}} INFO - shard 2: Ünïcödé ✓"
    )
    .unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    write!(f, "[2026-11-21T00:08:01.000+0000] {{load.py:20}} ERROR - failed\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n").unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    writeln!(f, "    1/0\n    ~^~\nZeroDivisionError: division by zero").unwrap();
    writeln!(
        f,
        "[2026-11-21T00:08:02.000+0000] {{load.py:30}} INFO - done"
    )
    .unwrap();
    drop(f);

    let files = read_logs(&root);
    assert_eq!(files.len(), 7);
    let fh = fh_bucket.clone();
    let files_c = files.clone();
    eventually(
        Duration::from_secs(30),
        "every line through Firehose",
        || {
            let fh = fh.clone();
            let files = files_c.clone();
            async move { reconstruct(&files, &all_records(&fh, "fh/").await).is_ok() }
        },
    )
    .await;
    d.stop(Duration::from_secs(30)).await;

    for (name, bucket, prefix) in [
        ("firehose", &fh_bucket, "fh/"),
        ("s3", &s3_bucket, "direct/"),
    ] {
        let objects = all_objects(bucket, prefix).await;
        assert!(!objects.is_empty(), "{name}: nothing arrived");
        let mut all = Vec::new();
        for (key, recs) in &objects {
            assert_ordered_within(key, recs);
            if name == "s3" {
                assert!(key.ends_with(".ndjson.gz"), "{key}");
                // The key template puts the dag_id first; the object holds only that DAG.
                let dag = key
                    .strip_prefix("direct/dag_id=")
                    .and_then(|k| k.split('/').next())
                    .unwrap();
                assert!(recs.iter().all(|r| r["dag_id"] == dag), "{key}");
            }
            all.extend(recs.iter().cloned());
        }
        let r = reconstruct(&files, &all).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.duplicates, 0, "{name}: duplicates");
        println!(
            "{name}: {} records from {} files in {} objects, no duplicates",
            r.records,
            files.len(),
            objects.len()
        );

        // Airflow fields, tracebacks as one record, non-ASCII text, JSON fields kept.
        let tb = all
            .iter()
            .find(|r| {
                r["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Task failed with exception")
            })
            .expect("traceback record");
        let msg = tb["message"].as_str().unwrap();
        assert!(msg.contains("~~~~~^^^^^^^^^^^^^^^^^^^"), "caret line kept");
        assert!(msg.contains("During handling of the above exception"));
        assert!(msg.ends_with("RuntimeError: transform failed for batch 3"));
        assert_eq!(tb["level"], "ERROR");
        assert_eq!(tb["dag_id"], "etl_orders");
        assert_eq!(tb["task_id"], "transform");
        assert_eq!(tb["try_number"], 1);
        assert_eq!(tb["run_id"], "scheduled__2026-11-21T00:00:00+00:00");
        let mapped: Vec<&Value> = all.iter().filter(|r| r["map_index"] == 1).collect();
        assert_eq!(mapped.len(), 3);
        assert!(mapped.iter().all(|r| r["task_id"] == "load"));
        let jp = all
            .iter()
            .find(|r| r["message"].as_str().unwrap().starts_with("注文を"))
            .expect("Japanese line");
        assert_eq!(jp["fields"]["logger"], "etl_orders.extract");
        assert_eq!(jp["level"], "info");
        let live_tb = all
            .iter()
            .find(|r| r["message"] == "failed\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    1/0\n    ~^~\nZeroDivisionError: division by zero")
            .is_some();
        assert!(live_tb, "the traceback written in pieces is one record");
        // ids are file fingerprint + offset and unique.
        let mut ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_s3_objects_use_multipart_upload() {
    let bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    std::fs::create_dir_all(&root).unwrap();
    // ~14 MiB of hex text: compresses to about half, more than one 5 MiB part.
    let path = root.join("big.log");
    let mut content = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..70_000 {
        let mut line = format!("line {i:06} ");
        while line.len() < 200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push_str(&format!("{x:016x}"));
        }
        line.truncate(200);
        content.push_str(&line);
        content.push('\n');
    }
    std::fs::write(&path, &content).unwrap();
    let mut d = Daemon::start(
        &[
            s("--path"),
            format!("{}/*.log", root.display()),
            s("--output"),
            format!("s3://{bucket}/big"),
            s("--state-dir"),
            tmp.path().join("state").display().to_string(),
            s("--s3-part-size"),
            s("5MiB"),
            s("--s3-max-object-age"),
            s("10m"),
        ],
        &moto().endpoint(),
        tmp.path(),
        false,
    );
    d.wait_ready().await;
    let d_admin = d.admin();
    eventually(Duration::from_secs(60), "all lines read", || async move {
        metric_sum(&metrics(d_admin).await, "logship_records_read_total") >= 70_000.0
    })
    .await;
    d.stop(Duration::from_secs(60)).await;
    let keys = list_keys(&bucket, "big/").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let head = s3_client()
        .await
        .head_object()
        .bucket(&bucket)
        .key(&keys[0])
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap();
    assert!(etag.contains('-'), "not a multipart object: ETag {etag}");
    let recs = object_records(&bucket, &keys[0]).await;
    let files = HashMap::from([(path.display().to_string(), content)]);
    let r = reconstruct(&files, &recs).unwrap();
    assert_eq!((r.records, r.duplicates), (70_000, 0));
    println!(
        "multipart object {} ({etag}) holds all 70000 lines",
        keys[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_where_no_change_events_arrive_are_followed_by_polling() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    let unwatched = tmp.path().join("efs");
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::create_dir_all(&unwatched).unwrap();
    let mut d = Daemon::start(
        &[
            s("--path"),
            format!("{}/*.log", watched.display()),
            s("--path"),
            format!("{}/**/*.log", unwatched.display()),
            s("--no-watch"),
            unwatched.display().to_string(),
            s("--output"),
            s("stdout"),
            s("--state-dir"),
            tmp.path().join("state").display().to_string(),
            s("--poll-interval"),
            s("300ms"),
        ],
        &moto().endpoint(),
        tmp.path(),
        true,
    );
    d.wait_ready().await;
    // Phase 1: only the unwatched directory changes — a new subdirectory, a new file,
    // lines appended over time.
    let sub = unwatched.join("dag_id=poll/run_id=r/task_id=t");
    std::fs::create_dir_all(&sub).unwrap();
    let p = sub.join("attempt=1.log");
    let mut f = std::fs::File::create(&p).unwrap();
    for i in 0..5 {
        writeln!(f, "polled line {i}").unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    d.eventually_on_stdout(Duration::from_secs(10), "polled lines", |lines| {
        lines.iter().filter(|x| x.contains("polled line")).count() == 5
    })
    .await;
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(&m, "logship_watch_events_total"),
        0.0,
        "change events arrived for the unwatched directory:\n{m}"
    );
    // Phase 2: the watched directory delivers events, so the watcher was live all along
    // and phase 1 really ran on polling alone.
    std::fs::write(watched.join("w.log"), "watched line\n").unwrap();
    d.eventually_on_stdout(Duration::from_secs(10), "watched line", |lines| {
        lines.iter().any(|x| x.contains("watched line"))
    })
    .await;
    let m = d.metrics().await;
    assert!(metric_sum(&m, "logship_watch_events_total") > 0.0, "{m}");
    let recs = d.stdout_records();
    let polled: Vec<&Value> = recs.iter().filter(|r| r["dag_id"] == "poll").collect();
    assert_eq!(polled.len(), 5);
    d.stop(Duration::from_secs(30)).await;
}

/// A daemon tailing `DIR/logs/*.log` to stdout that never polls (10 minutes), with a
/// 300 ms multiline timeout: only change events and that timeout wake its tailer.
async fn stdout_tailer_without_polls(tmp: &std::path::Path) -> (Daemon, std::path::PathBuf) {
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut d = Daemon::start(
        &[
            s("--path"),
            format!("{}/*.log", logs.display()),
            s("--output"),
            s("stdout"),
            s("--state-dir"),
            tmp.join("state").display().to_string(),
            s("--poll-interval"),
            s("10m"),
            s("--multiline-timeout"),
            s("300ms"),
        ],
        &moto().endpoint(),
        tmp,
        true,
    );
    d.wait_ready().await;
    (d, logs)
}

/// Writes a two-line traceback start (the last line may go on, so it is held).
fn write_traceback_start(f: &mut std::fs::File) {
    writeln!(f, "Traceback (most recent call last):").unwrap();
    writeln!(f, "  File \"dag.py\", line 1, in <module>").unwrap();
    f.flush().unwrap();
}

/// The last line of a file may still be followed by traceback lines, so it waits
/// `--multiline-timeout`; it must then go out on time, not at the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_last_line_is_sent_when_the_multiline_timeout_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, logs) = stdout_tailer_without_polls(tmp.path()).await;
    let mut f = std::fs::File::create(logs.join("held.log")).unwrap();
    write_traceback_start(&mut f);
    let written = Instant::now();
    // Nothing else happens in the directory: no event and no poll (10 minutes away)
    // wakes the tailer, only the timeout can.
    d.eventually_on_stdout(Duration::from_secs(10), "the held traceback", |lines| {
        lines.iter().any(|x| x.contains("dag.py"))
    })
    .await;
    let waited = written.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "sent after {waited:?}, before the multiline timeout"
    );
    let recs = d.stdout_records();
    assert_eq!(recs.len(), 1, "the traceback is one record: {recs:?}");
    d.stop(Duration::from_secs(30)).await;
}

/// Regression (seen once in CI on a loaded machine): a file the tailer found before its
/// first line was complete was not followed, and its later writes (data events) never
/// made the tailer look again, so it waited for the next poll. Airflow creates a task's
/// log file before it writes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_found_empty_is_followed_from_its_first_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, logs) = stdout_tailer_without_polls(tmp.path()).await;
    let mut f = std::fs::File::create(logs.join("late.log")).unwrap();
    // Let the creation event be handled (its walk finds an empty file) before writing.
    eventually(Duration::from_secs(10), "the creation event", || async {
        metric_sum(&d.metrics().await, "logship_watch_events_total") >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_traceback_start(&mut f);
    d.eventually_on_stdout(Duration::from_secs(10), "the late file's lines", |lines| {
        lines.iter().any(|x| x.contains("dag.py"))
    })
    .await;
    let recs = d.stdout_records();
    assert_eq!(recs.len(), 1, "the traceback is one record: {recs:?}");
    assert_eq!(recs[0]["offset"], 0, "read from its start: {recs:?}");
    d.stop(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_binary_ships_from_an_empty_root() {
    let (bucket, stream) = firehose_to_bucket().await;
    let root = EmptyRoot::new(&dist_binary("logship"));
    let logs = root.mkdir("/logs/dag_id=empty/run_id=r/task_id=t");
    root.mkdir("/state");
    let content =
        "[2026-11-22T06:00:00.000+0000] {x.py:1} INFO - from an empty root\nplain line ✓\n";
    std::fs::write(logs.join("attempt=1.log"), content).unwrap();
    let mut cmd = root.command();
    cmd.args([
        "--path",
        "/logs/**/*.log",
        "--output",
        &format!("firehose:{stream}"),
        "--state-dir",
        "/state",
        "--admin-addr",
        "127.0.0.1:0",
        "--linger",
        "100ms",
    ])
    .envs(Moto::env_for(&moto().localhost_endpoint()))
    .stdout(std::process::Stdio::null());
    let logdir = tempfile::tempdir().unwrap();
    let stderr = logdir.path().join("stderr");
    cmd.stderr(std::fs::File::create(&stderr).unwrap());
    let child = cmd.spawn().unwrap();
    let mut d = Daemon {
        child: KillOnDrop::new(child),
        stderr,
        stdout_lines: None,
    };
    let b = bucket.clone();
    eventually(
        Duration::from_secs(30),
        "records from the empty root",
        || {
            let b = b.clone();
            async move { all_records(&b, "fh/").await.len() >= 2 }
        },
    )
    .await;
    d.stop(Duration::from_secs(30)).await;
    let recs = all_records(&bucket, "fh/").await;
    let files = HashMap::from([(
        s("/logs/dag_id=empty/run_id=r/task_id=t/attempt=1.log"),
        s(content),
    )]);
    let r = reconstruct(&files, &recs).unwrap();
    assert_eq!((r.records, r.duplicates), (2, 0));
    assert!(root.path().join("state/checkpoints.json").exists());
}
