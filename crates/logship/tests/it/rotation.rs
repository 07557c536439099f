//! Rotation while lines are written fast: rename (logrotate's default) and copytruncate.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use airside_testkit::moto;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_copytruncate_rotation_lose_and_repeat_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemon::start(
        &[
            s("--path"),
            format!("{}/*.log", dir.display()),
            // The copies that copytruncate leaves behind (b.log.1, ...) are followed too:
            // that is what lets logship pick up the lines it had not read before the truncate.
            s("--path"),
            format!("{}/*.log.*", dir.display()),
            s("--output"),
            s("stdout"),
            s("--state-dir"),
            tmp.path().join("state").display().to_string(),
            s("--poll-interval"),
            s("100ms"),
        ],
        &moto().endpoint(),
        tmp.path(),
        true,
    );
    d.wait_ready().await;
    const LINES: usize = 12_000;
    const EVERY: usize = 2_000;
    let wdir = dir.clone();
    let writer = std::thread::spawn(move || {
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(wdir.join(name))
                .unwrap()
        };
        let mut a = open("a.log");
        let mut b = open("b.log");
        let mut expected = Vec::new();
        for i in 0..LINES {
            if i > 0 && i % EVERY == 0 {
                let k = i / EVERY;
                // Rename rotation: the old file moves out of the glob, a new one starts.
                std::fs::rename(wdir.join("a.log"), wdir.join(format!("a.rotated.{k}"))).unwrap();
                a = open("a.log");
                // Copytruncate: copy, then truncate in place; the writer keeps its handle.
                std::fs::copy(wdir.join("b.log"), wdir.join(format!("b.log.{k}"))).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(wdir.join("b.log"))
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
            let la = format!("a {i:06} {}", "α".repeat(i % 40));
            let lb = format!("b {i:06} {}", "β".repeat(i % 40));
            writeln!(a, "{la}").unwrap();
            writeln!(b, "{lb}").unwrap();
            expected.push(la);
            expected.push(lb);
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(15));
            }
        }
        expected
    });
    let expected = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let n = expected.len();
    d.eventually_on_stdout(Duration::from_secs(60), "every rotated line", |lines| {
        lines.len() >= n
    })
    .await;
    // Give a repeated line the chance to show up before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = d.metrics().await;
    d.stop(Duration::from_secs(30)).await;
    let recs = d.stdout_records();
    assert_ordered_within("stdout", &recs);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &recs {
        *count.entry(r["message"].as_str().unwrap()).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|l| !count.contains_key(l.as_str()))
        .collect();
    let repeated: Vec<(&&str, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} lines written with {} rename and {} copytruncate rotations; {} records, {} missing, {} repeated; {}",
        expected.len(),
        LINES / EVERY - 1,
        LINES / EVERY - 1,
        recs.len(),
        missing.len(),
        repeated.len(),
        m.lines()
            .filter(|l| l.starts_with("logship_rotations_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        missing.is_empty(),
        "lost {} lines, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        repeated.is_empty(),
        "repeated: {:?}",
        &repeated[..repeated.len().min(5)]
    );
    assert_eq!(recs.len(), expected.len());
    // Every rotation was noticed as what it was.
    assert!(metric_sum(&m, "logship_rotations_total") >= 10.0, "{m}");
}
