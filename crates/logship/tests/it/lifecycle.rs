//! Crashes and shutdown: SIGKILL at random moments with restarts, SIGTERM under load.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airside_testkit::moto;
use rand::Rng;
use serde_json::Value;

use crate::common::*;

/// A line written by the test: (file path, offset, end, text).
type Written = (String, u64, u64, String);

/// Appends lines to `files` until `stop`, recording each line's byte range.
fn spawn_writer(
    files: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    lines_per_burst: usize,
    pause: Duration,
) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<Written>>>) {
    let written = Arc::new(Mutex::new(Vec::new()));
    let w = written.clone();
    let handle = std::thread::spawn(move || {
        let mut handles: Vec<(String, std::fs::File, u64)> = files
            .iter()
            .map(|p| {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap();
                (p.display().to_string(), f, 0)
            })
            .collect();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut burst = Vec::new();
            for _ in 0..lines_per_burst {
                for (path, f, off) in handles.iter_mut() {
                    let text = format!(
                        "{} seq={seq:08} {}",
                        path.rsplit('/').nth(1).unwrap(),
                        "p".repeat((seq % 60) as usize)
                    );
                    let line = format!("{text}\n");
                    f.write_all(line.as_bytes()).unwrap();
                    let end = *off + line.len() as u64;
                    burst.push((path.clone(), *off, end, text));
                    *off = end;
                }
                seq += 1;
            }
            w.lock().unwrap().extend(burst);
            std::thread::sleep(pause);
        }
    });
    (handle, written)
}

fn checkpoint(state_dir: &Path) -> HashMap<String, u64> {
    let Ok(bytes) = std::fs::read(state_dir.join("checkpoints.json")) else {
        return HashMap::new();
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The message of every record delivered through Firehose into `bucket`.
async fn delivered_messages(bucket: &str) -> HashSet<String> {
    all_records(bucket, "fh/")
        .await
        .into_iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect()
}

fn ship_args(root: &Path, stream: &str, state: &Path) -> Vec<String> {
    vec![
        s("--path"),
        format!("{}/**/*.log", root.display()),
        s("--output"),
        format!("firehose:{stream}"),
        s("--state-dir"),
        state.display().to_string(),
        s("--linger"),
        s("100ms"),
        s("--poll-interval"),
        s("200ms"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let (bucket, stream) = firehose_to_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    let state = tmp.path().join("state");
    let files: Vec<PathBuf> = (0..3)
        .map(|i| root.join(format!("dag_id=crashy/run_id=r/task_id=t{i}/attempt=1.log")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (writer, written) = spawn_writer(files.clone(), stop.clone(), 20, Duration::from_millis(5));
    let args = ship_args(&root, &stream, &state);
    const KILLS: usize = 10;
    // Per kill: the checkpoint left behind and the objects delivered up to then.
    let mut snapshots: Vec<(HashMap<String, u64>, HashSet<String>)> = Vec::new();
    let mut rng = rand::rng();
    for _ in 0..KILLS {
        let mut d = Daemon::start(&args, &moto().endpoint(), tmp.path(), false);
        let wait = Duration::from_millis(rng.random_range(200..1500));
        tokio::time::sleep(wait).await;
        d.child.kill().unwrap(); // SIGKILL
        d.child.wait().unwrap();
        // Let moto finish a request the dead process had in flight.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let keys: HashSet<String> = list_keys(&bucket, "fh/").await.into_iter().collect();
        snapshots.push((checkpoint(&state), keys));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let written = written.lock().unwrap().clone();

    // A last run delivers the rest, then stops cleanly.
    let mut d = Daemon::start(&args, &moto().endpoint(), tmp.path(), false);
    let expected: HashSet<String> = written.iter().map(|w| w.3.clone()).collect();
    let b = bucket.clone();
    let exp = expected.clone();
    eventually(
        Duration::from_secs(90),
        "every line after the crashes",
        || {
            let (b, exp) = (b.clone(), exp.clone());
            async move { exp.is_subset(&delivered_messages(&b).await) }
        },
    )
    .await;
    d.stop(Duration::from_secs(30)).await;

    let objects: HashMap<String, Vec<Value>> =
        all_objects(&bucket, "fh/").await.into_iter().collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for recs in objects.values() {
        assert!(!recs.is_empty());
        for r in recs {
            *seen
                .entry(r["message"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let missing = expected.iter().filter(|l| !seen.contains_key(*l)).count();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    assert_eq!(missing, 0, "lines lost");
    assert_eq!(seen.len(), expected.len(), "unexpected records");

    // The checkpoint never ran ahead of delivery: every line before a file's checkpoint
    // at kill i had arrived by then...
    let mut previous: HashSet<String> = HashSet::new();
    let mut behind_checkpoint_resent = 0;
    for (i, (ckpt, keys)) in snapshots.iter().enumerate() {
        let delivered: HashSet<&str> = keys
            .iter()
            .flat_map(|k| objects[k].iter())
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        for (path, _, end, text) in &written {
            if ckpt.get(path).is_some_and(|c| *end <= *c) {
                assert!(
                    delivered.contains(text.as_str()),
                    "kill {i}: checkpoint of {path} at {} but line ending at {end} had not arrived",
                    ckpt[path]
                );
            }
        }
        // ...and the run after kill i re-sent nothing before that checkpoint: duplicates
        // come only from the unacknowledged tail.
        if i > 0 {
            let (prev_ckpt, _) = &snapshots[i - 1];
            for k in keys.difference(&previous) {
                for r in &objects[k] {
                    let path = r["path"].as_str().unwrap();
                    if prev_ckpt
                        .get(path)
                        .is_some_and(|c| r["offset"].as_u64().unwrap() < *c)
                    {
                        behind_checkpoint_resent += 1;
                    }
                }
            }
        }
        previous = keys.clone();
    }
    println!(
        "{KILLS} SIGKILLs; {} lines written to {} files; {} arrived; 0 lost; {duplicates} duplicates (all from unacknowledged tails)",
        expected.len(),
        files.len(),
        seen.values().sum::<usize>(),
    );
    assert_eq!(
        behind_checkpoint_resent, 0,
        "records before a checkpoint were sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_heavy_writing_delivers_every_line_written_before_it() {
    let (bucket, stream) = firehose_to_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    let state = tmp.path().join("state");
    let files: Vec<PathBuf> = (0..2)
        .map(|i| root.join(format!("dag_id=busy/run_id=r/task_id=t{i}/attempt=1.log")))
        .collect();
    let mut d = Daemon::start(
        &ship_args(&root, &stream, &state),
        &moto().endpoint(),
        tmp.path(),
        false,
    );
    d.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (writer, written) =
        spawn_writer(files.clone(), stop.clone(), 200, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Everything complete in the files at this moment must be delivered before exit.
    let before: Vec<Written> = written.lock().unwrap().clone();
    d.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status}:\n{}", d.stderr_text());
    let got = delivered_messages(&bucket).await;
    let missing: Vec<&Written> = before.iter().filter(|w| !got.contains(&w.3)).collect();
    println!(
        "{} lines written before SIGTERM; {} records delivered before exit; {} missing",
        before.len(),
        got.len(),
        missing.len()
    );
    assert!(before.len() > 10_000, "not heavy enough: {}", before.len());
    assert!(
        missing.is_empty(),
        "lost {} lines, first {:?}",
        missing.len(),
        missing.first()
    );
}
