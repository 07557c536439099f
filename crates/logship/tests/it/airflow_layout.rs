//! The airflow-s3 output against moto: what Airflow's S3 reader would see (every key
//! starting with the attempt key, in key order, concatenated; `S3RemoteLogIO.read` in
//! apache-airflow-providers-amazon) while a task writes, after SIGKILLs, and when
//! Airflow's own uploader is left on. The real Airflow reader is exercised by
//! `tests/airflow/` (pytest, Airflow 3.3.2).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airside_testkit::{FaultPlan, FaultProxy, moto};

use crate::common::*;

const ATTEMPT: &str = "dag_id=etl/run_id=manual__2026-12-03/task_id=load/attempt=1.log";

/// What Airflow's reader shows for the attempt key `key`: the objects listed under it,
/// sorted, concatenated; and their keys. Two moments of a fold are read again, as the
/// UI's next poll would see them:
/// * an object deleted between the listing and its read (Airflow shows an error line
///   for it);
/// * a fold stored (under the name of the first object it folds) while the objects it
///   supersedes are not deleted yet, or replaced between the listing and the reads: one
///   file's objects then overlap (Airflow's UI drops the repeated lines when it merges
///   the sources by timestamp; `tests/airflow` checks that with real Airflow). Each
///   object's name carries its first offset, so the overlap is seen exactly; a *gap*
///   (bytes missing between two objects) is never read again, it fails the caller's
///   check.
async fn airflow_view(bucket: &str, key: &str) -> (Vec<u8>, Vec<String>) {
    let s3 = s3_client().await;
    for _ in 0..200 {
        let mut keys = airside_testkit::s3::list_keys(&s3, bucket, key).await;
        keys.sort();
        let mut out = Vec::new();
        let mut parts = Vec::new();
        let mut deleted = false;
        for k in &keys {
            match s3.get_object().bucket(bucket).key(k).send().await {
                Ok(o) => {
                    let body = o.body.collect().await.unwrap().into_bytes();
                    parts.push((k.clone(), body.len() as u64));
                    out.extend(body);
                }
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    deleted = true;
                    break;
                }
                Err(e) => panic!("GetObject {k}: {e:?}"),
            }
        }
        if deleted || mid_fold(&parts) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return (out, keys);
    }
    panic!("the objects under {key} kept overlapping for 200 reads: a fold never finished");
}

/// What Airflow's UI shows for `key` while no logship runs (after a SIGKILL): one read of
/// the objects. A kill between a fold's store and the deletion of the objects it
/// supersedes (a second later, see `delete_delay`) leaves them overlapping until the
/// next start deletes them; the UI merges the sources and drops the repeated lines
/// (`tests/airflow` checks that with real Airflow), so the overlap is shown once here,
/// by the offsets in the objects' names. A gap stays a gap.
async fn view_after_kill(bucket: &str, key: &str) -> (Vec<u8>, Vec<String>) {
    let s3 = s3_client().await;
    let mut keys = airside_testkit::s3::list_keys(&s3, bucket, key).await;
    keys.sort();
    let mut out = Vec::new();
    let mut end_of: std::collections::HashMap<String, u64> = Default::default();
    for k in &keys {
        let o = s3.get_object().bucket(bucket).key(k).send().await;
        let body = o.unwrap().body.collect().await.unwrap().into_bytes();
        let named = k
            .rsplit_once('.')
            .filter(|(_, d)| d.len() == 12)
            .and_then(|(stem, d)| Some((stem.to_string(), d.parse::<u64>().ok()?)));
        let Some((stem, start)) = named else {
            out.extend(body);
            continue;
        };
        let end = end_of.get(&stem).copied().unwrap_or(start);
        let skip = end.saturating_sub(start).min(body.len() as u64) as usize;
        out.extend(&body[skip..]);
        end_of.insert(stem, end.max(start + body.len() as u64));
    }
    (out, keys)
}

/// Waits up to `within` until the view of `key` is exactly `want`, held in `objects`
/// objects.
async fn wait_for_view(
    within: Duration,
    what: &str,
    bucket: &str,
    key: &str,
    want: &[u8],
    objects: usize,
) {
    let (bucket, key, want) = (bucket.to_string(), key.to_string(), want.to_vec());
    eventually(within, what, || {
        let (bucket, key, want) = (bucket.clone(), key.clone(), want.clone());
        async move {
            let (view, keys) = airflow_view(&bucket, &key).await;
            view == want && keys.len() == objects
        }
    })
    .await;
}

/// Whether some file's objects overlap: `FILE.<12-digit offset>` named objects, sorted,
/// where one starts before the previous one of the same file ends.
fn mid_fold(parts: &[(String, u64)]) -> bool {
    let mut end_of: std::collections::HashMap<&str, u64> = Default::default();
    for (k, len) in parts {
        let Some((stem, digits)) = k.rsplit_once('.') else {
            continue;
        };
        let Ok(start) = digits.parse::<u64>() else {
            continue;
        };
        if digits.len() != 12 {
            continue;
        }
        if end_of.get(stem).is_some_and(|&end| start < end) {
            return true;
        }
        end_of.insert(stem, start + len);
    }
    false
}

#[test]
fn a_view_mid_fold_is_told_from_a_gap() {
    let p = |k: &str, len: u64| (format!("logs/a.log{k}"), len);
    // Contiguous, and another file's objects beside them.
    let whole = [
        p(".000000000000", 100),
        p(".000000000100", 50),
        p(".trigger.7.log.000000000000", 9),
    ];
    assert!(!mid_fold(&whole));
    // A fold under the first name while the object it folded is still there.
    assert!(mid_fold(&[p(".000000000000", 150), p(".000000000100", 50)]));
    // A gap is not a fold: the caller's check must fail on it.
    assert!(!mid_fold(&[
        p(".000000000000", 100),
        p(".000000000150", 50)
    ]));
}

fn args(folder: &Path, state: &Path, bucket: &str, interval: &str, compact: &str) -> Vec<String> {
    vec![
        s("--path"),
        format!("{}/**/*.log", folder.display()),
        s("--airflow-log-folder"),
        folder.display().to_string(),
        s("--output"),
        format!("airflow-s3://{bucket}/logs"),
        s("--state-dir"),
        state.display().to_string(),
        s("--poll-interval"),
        s("100ms"),
        s("--multiline-timeout"),
        s("200ms"),
        s("--airflow-flush-interval"),
        s(interval),
        s("--airflow-compact-after"),
        s(compact),
    ]
}

/// A task log that grows by one numbered line at a time; remembers how long it was when.
struct TaskLog {
    path: PathBuf,
    file: std::fs::File,
    written: Vec<(Instant, usize)>,
    next: usize,
}

impl TaskLog {
    fn create(folder: &Path, rel: &str) -> Self {
        let path = folder.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        Self {
            path,
            file,
            written: Vec::new(),
            next: 0,
        }
    }

    /// Writes the next line (Airflow 3's JSON form) and returns the file's length.
    fn line(&mut self) -> usize {
        self.next += 1;
        writeln!(
            self.file,
            r#"{{"timestamp":"2026-12-03T10:00:00.{:06}Z","level":"info","event":"line {} of the task","logger":"task"}}"#,
            self.next, self.next
        )
        .unwrap();
        let len = std::fs::metadata(&self.path).unwrap().len() as usize;
        self.written.push((Instant::now(), len));
        len
    }

    /// The file's length at `t`.
    fn len_at(&self, t: Instant) -> usize {
        self.written
            .iter()
            .take_while(|(w, _)| *w <= t)
            .last()
            .map_or(0, |(_, l)| *l)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_log_is_readable_live_then_compacted_to_one_object() {
    let bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("logs");
    let mut log = TaskLog::create(&folder, ATTEMPT);
    log.line();
    // Beside the records output, as the task definitions run it beside Firehose.
    let mut flags = args(&folder, &tmp.path().join("state"), &bucket, "500ms", "2s");
    flags.extend([
        s("--output"),
        format!("s3://{bucket}/records"),
        s("--s3-max-object-age"),
        s("1s"),
    ]);
    // Through strict S3: its DeleteObjects must carry an integrity header and at most
    // 1,000 keys, as S3 demands and moto does not.
    let proxy = FaultProxy::start_strict_s3(&moto().endpoint(), FaultPlan::none());
    let mut d = Daemon::start(&flags, &proxy.endpoint(), tmp.path(), false);
    d.wait_ready().await;
    let key = format!("logs/{ATTEMPT}");

    // Live: every view is a prefix of the file, and it keeps up.
    let mut worst_lag = Duration::ZERO;
    let mut max_objects = 0;
    for _ in 0..30 {
        log.line();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (view, keys) = airflow_view(&bucket, &key).await;
        let file = log.bytes();
        assert!(
            file.starts_with(&view),
            "the view ({} bytes, {keys:?}) is not a prefix of the file ({} bytes)",
            view.len(),
            file.len()
        );
        max_objects = max_objects.max(keys.len());
        // How long ago the last line the view has was written.
        let shown = log.written.iter().rev().find(|(_, l)| *l <= view.len());
        let newest_missing = log.written.iter().find(|(_, l)| *l > view.len());
        if let (Some(_), Some((t, _))) = (shown, newest_missing) {
            worst_lag = worst_lag.max(t.elapsed());
        }
    }
    println!("live: worst lag {worst_lag:?}, at most {max_objects} objects");
    assert!(
        worst_lag < Duration::from_secs(3),
        "a line took {worst_lag:?} to show (flush interval 500 ms)"
    );
    // A trigger log of the same attempt sorts after it and shows with it.
    let mut trigger = TaskLog::create(&folder, &format!("{ATTEMPT}.trigger.7.log"));
    trigger.line();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, before) = airflow_view(&bucket, &key).await;

    // Quiet for --airflow-compact-after: one object per file, byte for byte.
    let want = [log.bytes(), trigger.bytes()].concat();
    wait_for_view(
        Duration::from_secs(20),
        "compaction to one object per file",
        &bucket,
        &key,
        &want,
        2,
    )
    .await;
    let (_, keys) = airflow_view(&bucket, &key).await;
    assert_eq!(
        keys,
        [
            format!("{key}.000000000000"),
            format!("{key}.trigger.7.log.000000000000")
        ]
    );
    let m = d.metrics().await;
    if before.len() > 2 {
        // More than one object per file before the quiet time: compaction made them one.
        assert!(
            metric_sum(&m, "logship_airflow_compactions_total") >= 1.0,
            "{before:?}\n{m}"
        );
    }
    // While it ran, uploads folded earlier objects and deleted them.
    assert!(
        metric_sum(&m, "logship_airflow_objects_deleted_total") >= 1.0,
        "{m}"
    );
    d.stop(Duration::from_secs(20)).await;
}

/// Superseded objects go in DeleteObjects requests; a key S3 refuses (a per-key error
/// inside a successful answer) stays listed as superseded and is deleted at a later
/// round once S3 lets it, and nothing of the file is lost meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deletions_are_retried_until_s3_takes_them() {
    let bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("logs");
    let mut log = TaskLog::create(&folder, ATTEMPT);
    log.line();
    let proxy = FaultProxy::start_strict_s3(&moto().endpoint(), FaultPlan::none());
    let key = format!("logs/{ATTEMPT}");
    proxy.strict_s3().refuse_deletes_under(&bucket, &key);
    let flags = args(&folder, &tmp.path().join("state"), &bucket, "300ms", "2s");
    let mut d = Daemon::start(&flags, &proxy.endpoint(), tmp.path(), false);
    d.wait_ready().await;
    // Folds happen while the task writes; none of their deletions is taken.
    for _ in 0..30 {
        log.line();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(Duration::from_secs(10), "a refused deletion", || {
        let text = d.stderr_text();
        async move { text.contains("cannot delete superseded objects") }
    })
    .await;
    let m = d.metrics().await;
    assert_eq!(
        metric_sum(&m, "logship_airflow_objects_deleted_total"),
        0.0,
        "S3 refused every deletion: {m}"
    );
    let stuck = list_keys(&bucket, &key).await;
    assert!(stuck.len() > 1, "folds left superseded objects: {stuck:?}");
    assert!(
        d.stderr_text().contains("AccessDenied"),
        "{}",
        d.stderr_text()
    );

    // S3 takes them again: the next rounds delete every superseded object, and the view
    // is the file, once.
    proxy.strict_s3().allow_deletes_under(&bucket, &key);
    let want = log.bytes();
    wait_for_view(
        Duration::from_secs(10),
        "the refused objects deleted",
        &bucket,
        &key,
        &want,
        1,
    )
    .await;
    let m = d.metrics().await;
    assert!(
        metric_sum(&m, "logship_airflow_objects_deleted_total") >= (stuck.len() - 1) as f64,
        "{stuck:?}\n{m}"
    );
    d.stop(Duration::from_secs(20)).await;
}

/// The airflow-s3 output asks for a read of every file before each upload round, so a
/// line waits for one round, not for a read on the tailer's own clock and then a round.
/// That clock is set to 30 s here: without the asked-for reads nothing written after the
/// start would show within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_with_uploads_so_a_line_waits_one_flush_interval() {
    let bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("logs");
    let mut log = TaskLog::create(&folder, ATTEMPT);
    log.line();
    let interval = Duration::from_secs(1);
    let mut flags = args(&folder, &tmp.path().join("state"), &bucket, "1s", "60s");
    flags.extend([s("--read-interval"), s("30s")]);
    let mut d = Daemon::start(&flags, &moto().endpoint(), tmp.path(), false);
    d.wait_ready().await;
    let key = format!("logs/{ATTEMPT}");
    // Lines every 100 ms for 12 s; each one's lag is from its write until a view has it.
    let mut lags: Vec<Duration> = Vec::new();
    let mut waiting: std::collections::VecDeque<(Instant, usize)> = Default::default();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let len = log.line();
        waiting.push_back((Instant::now(), len));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (view, _) = airflow_view(&bucket, &key).await;
        assert!(log.bytes().starts_with(&view), "the view is not a prefix");
        while waiting.front().is_some_and(|(_, l)| *l <= view.len()) {
            let (t, _) = waiting.pop_front().unwrap();
            lags.push(t.elapsed());
        }
    }
    let worst = lags.iter().max().copied().unwrap_or_default();
    println!(
        "{} lines seen while running, worst lag {worst:?} (flush interval {interval:?})",
        lags.len()
    );
    assert!(
        lags.len() >= 60,
        "only {} lines were seen in 12 s",
        lags.len()
    );
    // One interval, plus the read, the upload and this loop's own view (100 ms sleep
    // and a list-and-get of moto), with room for a busy machine.
    assert!(
        worst < interval + Duration::from_millis(1500),
        "a line took {worst:?} to show with a {interval:?} flush interval"
    );
    d.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_uploaded_and_restarts_duplicate_nothing() {
    let bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("logs");
    let state = tmp.path().join("state");
    let mut log = TaskLog::create(&folder, ATTEMPT);
    let key = format!("logs/{ATTEMPT}");
    let interval = Duration::from_millis(500);
    for round in 0..4 {
        let mut d = Daemon::start(
            &args(&folder, &state, &bucket, "500ms", "30s"),
            &moto().endpoint(),
            tmp.path(),
            false,
        );
        d.wait_ready().await;
        let until = Instant::now() + Duration::from_millis(1500 + 300 * round);
        while Instant::now() < until {
            log.line();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d.child.kill().unwrap();
        let killed = Instant::now();
        let _ = d.wait_exit(Duration::from_secs(5)).await;
        let (view, keys) = view_after_kill(&bucket, &key).await;
        let file = log.bytes();
        assert!(
            file.starts_with(&view),
            "round {round}: after SIGKILL the view is not a prefix of the file ({keys:?})"
        );
        // Written two flush intervals before the kill (one, plus the upload in flight).
        let due = log.len_at(killed - 2 * interval);
        assert!(
            view.len() >= due,
            "round {round}: {} bytes shown, {due} written 1 s before the kill",
            view.len()
        );
    }
    // A last start uploads the rest: every line once, in order.
    let mut d = Daemon::start(
        &args(&folder, &state, &bucket, "500ms", "1s"),
        &moto().endpoint(),
        tmp.path(),
        false,
    );
    d.wait_ready().await;
    let want = log.bytes();
    wait_for_view(
        Duration::from_secs(20),
        "the whole file, once, in one object",
        &bucket,
        &key,
        &want,
        1,
    )
    .await;
    d.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_s_own_upload_leaves_every_line_once() {
    let bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("logs");
    let mut log = TaskLog::create(&folder, ATTEMPT);
    let key = format!("logs/{ATTEMPT}");
    let mut d = Daemon::start(
        &args(&folder, &tmp.path().join("state"), &bucket, "300ms", "60s"),
        &moto().endpoint(),
        tmp.path(),
        false,
    );
    d.wait_ready().await;
    for _ in 0..20 {
        log.line();
    }
    let want = log.bytes();
    eventually(Duration::from_secs(10), "the log in S3", || {
        let (bucket, key, want) = (bucket.clone(), key.clone(), want.clone());
        async move { airflow_view(&bucket, &key).await.0 == want }
    })
    .await;
    // What Airflow 3's S3TaskHandler does at the end of a task when remote logging is
    // on where the task runs: PutObject of the whole file at the attempt key, then it
    // empties the local file (S3RemoteLogIO.upload).
    let s3 = s3_client().await;
    airside_testkit::s3::put_object(&s3, &bucket, &key, want.clone()).await;
    std::fs::File::create(&log.path).unwrap();
    eventually(Duration::from_secs(10), "only Airflow's object", || {
        let (bucket, key, want) = (bucket.clone(), key.clone(), want.clone());
        async move {
            let (view, keys) = airflow_view(&bucket, &key).await;
            view == want && keys == [key]
        }
    })
    .await;
    d.stop(Duration::from_secs(20)).await;
}
