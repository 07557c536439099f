//! Faults on the output path: throttling, 5xx, dropped connections, Firehose partial
//! failures; and the exit codes for destinations that are missing or forbidden.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airside_testkit::{ExchangeRewrite, Fault, FaultPlan, FaultProxy, moto};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::common::*;

/// Fakes Firehose partial failures honestly: in every other PutRecordBatch, every third
/// record is removed from the request before moto sees it and reported back as failed
/// (ServiceUnavailableException), so a record marked failed was really not delivered.
fn partial_failures(requests: Arc<AtomicU64>, failed: Arc<AtomicU64>) -> ExchangeRewrite {
    Arc::new(move |_path, headers, body| {
        let target = headers.get("x-amz-target")?.to_str().ok()?;
        if !target.ends_with("PutRecordBatch") {
            return None;
        }
        let n = requests.fetch_add(1, Ordering::Relaxed) as usize;
        if n % 2 == 1 {
            return None;
        }
        let mut req: Value = serde_json::from_slice(body).ok()?;
        let records = req["Records"].as_array()?.clone();
        let mut fail: Vec<bool> = (0..records.len())
            .map(|i| (i + n).is_multiple_of(3))
            .collect();
        if fail.iter().all(|f| *f) {
            fail[0] = false;
        }
        let kept: Vec<Value> = records
            .iter()
            .zip(&fail)
            .filter(|(_, f)| !**f)
            .map(|(r, _)| r.clone())
            .collect();
        let nfail = fail.iter().filter(|f| **f).count();
        failed.fetch_add(nfail as u64, Ordering::Relaxed);
        req["Records"] = Value::Array(kept);
        let fix = Box::new(move |resp: &Bytes| -> Bytes {
            let mut v: Value = serde_json::from_slice(resp).expect("moto answers JSON");
            let mut answers = v["RequestResponses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter();
            let rebuilt: Vec<Value> = fail
                .iter()
                .map(|f| {
                    if *f {
                        json!({"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "injected partial failure"})
                    } else {
                        answers.next().expect("one answer per forwarded record")
                    }
                })
                .collect();
            v["RequestResponses"] = Value::Array(rebuilt);
            v["FailedPutCount"] = json!(nfail);
            Bytes::from(serde_json::to_vec(&v).unwrap())
        });
        Some((Bytes::from(serde_json::to_vec(&req).unwrap()), fix as _))
    })
}

fn write_lines(path: &std::path::Path, tag: &str, from: usize, to: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in from..to {
        writeln!(f, "{tag} line {i:06} {}", "x".repeat(i % 97)).unwrap();
    }
}

async fn run_with_faults(plan: FaultPlan, expect_no_duplicates: bool) -> u64 {
    let (bucket, stream) = firehose_to_bucket().await;
    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let proxy = FaultProxy::start_with_exchange(
        &moto().endpoint(),
        plan,
        partial_failures(requests.clone(), failed.clone()),
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs/dag_id=faulty/run_id=r");
    let a = root.join("task_id=a/attempt=1.log");
    let b = root.join("task_id=b/attempt=1.log");
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    write_lines(&a, "a", 0, 3000);
    write_lines(&b, "b", 0, 3000);
    let mut d = Daemon::start(
        &[
            s("--path"),
            format!("{}/logs/**/*.log", tmp.path().display()),
            s("--output"),
            format!("firehose:{stream}"),
            s("--state-dir"),
            tmp.path().join("state").display().to_string(),
            s("--linger"),
            s("100ms"),
            s("--firehose-record-size"),
            s("2KiB"),
        ],
        &proxy.endpoint(),
        tmp.path(),
        false,
    );
    d.wait_ready().await;
    // Small steps with pauses: many batches, so many chances for faults.
    for step in 0..40 {
        write_lines(&a, "a", 3000 + step * 50, 3050 + step * 50);
        write_lines(&b, "b", 3000 + step * 50, 3050 + step * 50);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let files: HashMap<String, String> = [&a, &b]
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let (bk, fc) = (bucket.clone(), files.clone());
    eventually(Duration::from_secs(60), "every line despite faults", || {
        let (bk, fc) = (bk.clone(), fc.clone());
        async move { reconstruct(&fc, &all_records(&bk, "fh/").await).is_ok() }
    })
    .await;
    let m = d.metrics().await;
    d.stop(Duration::from_secs(30)).await;

    let recs = all_records(&bucket, "fh/").await;
    let r = reconstruct(&files, &recs).unwrap();
    let stats = proxy.stats();
    println!(
        "faults injected: {} (500: {}, 503: {}, throttle: {}, drop before: {}, drop after: {}); \
         partial failures: {} records in {} requests; logship retries {}, throttles {}, failed records {}; \
         {} records arrived, {} duplicates",
        stats.injected_total(),
        stats.injected(Fault::InternalError),
        stats.injected(Fault::SlowDown),
        stats.injected(Fault::Throttle),
        stats.injected(Fault::DropBeforeForward),
        stats.injected(Fault::DropAfterForward),
        failed.load(Ordering::Relaxed),
        requests.load(Ordering::Relaxed),
        metric_sum(&m, "logship_retries_total"),
        metric_sum(&m, "logship_throttles_total"),
        metric_sum(&m, "logship_records_failed_total"),
        r.records,
        r.duplicates,
    );
    assert!(stats.injected_total() > 0, "no fault was injected");
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "no partial failure was injected"
    );
    assert!(metric_sum(&m, "logship_records_failed_total") > 0.0, "{m}");
    assert!(metric_sum(&m, "logship_retries_total") > 0.0, "{m}");
    if expect_no_duplicates {
        assert_eq!(r.duplicates, 0, "a retry duplicated records");
    }
    stats.injected(Fault::DropAfterForward)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_partial_failures_lose_nothing_and_duplicate_nothing() {
    // Every fault that stops a request before it takes effect, plus partial failures:
    // a retry may then only re-send what was really not delivered.
    run_with_faults(
        FaultPlan::only(
            0.3,
            &[
                Fault::InternalError,
                Fault::SlowDown,
                Fault::Throttle,
                Fault::DropBeforeForward,
            ],
        ),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_after_delivery_are_resent_without_loss() {
    // A dropped answer after moto stored the batch: at-least-once means the batch is
    // sent again; the test reports the duplicates this causes and requires no loss.
    let dropped = run_with_faults(
        FaultPlan::only(0.3, &[Fault::DropAfterForward, Fault::Throttle]),
        false,
    )
    .await;
    assert!(dropped > 0, "no answer was dropped after delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_destinations_exit_2_and_denied_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let base = |out: String| {
        vec![
            s("--path"),
            format!("{}/*.log", tmp.path().display()),
            s("--output"),
            out,
            s("--state-dir"),
            tmp.path().join("state").display().to_string(),
        ]
    };
    for out in [
        s("firehose:no-such-stream"),
        s("s3://no-such-bucket-logship/x"),
    ] {
        let mut d = Daemon::start(&base(out.clone()), &moto().endpoint(), tmp.path(), false);
        let status = d.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(2), "{out}:\n{}", d.stderr_text());
    }
    // A key template that renders the same key at every roll would overwrite shipped
    // objects: refused before anything is read, saying why.
    let bucket = create_bucket().await;
    let mut args = base(format!("s3://{bucket}/logs"));
    args.extend([
        s("--s3-key-template"),
        s("{dag_id}/{task_id}/{yyyy}{mm}{dd}.ndjson.gz"),
    ]);
    let mut d = Daemon::start(&args, &moto().endpoint(), tmp.path(), false);
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", d.stderr_text());
    assert!(d.stderr_text().contains("{uuid}"), "{}", d.stderr_text());
    let proxy = FaultProxy::start(
        &moto().endpoint(),
        FaultPlan::only(1.0, &[Fault::AccessDenied]),
    );
    let (_, stream) = firehose_to_bucket().await;
    let mut d = Daemon::start(
        &base(format!("firehose:{stream}")),
        &proxy.endpoint(),
        tmp.path(),
        false,
    );
    let status = d.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(3), "{}", d.stderr_text());
    assert!(
        proxy.stats().injected(Fault::AccessDenied) >= 5,
        "gave up without retrying"
    );
    // A state directory that cannot be written: exit 4.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let mut args = base(s("stdout"));
    let n = args.len();
    args[n - 1] = blocker.join("state").display().to_string();
    let mut d = Daemon::start(&args, &moto().endpoint(), tmp.path(), false);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).await.code(), Some(4));
}
