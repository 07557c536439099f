//! dagsync end to end: the real binary against moto's S3 on loopback.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use airside_testkit::{EmptyRoot, Fault, FaultPlan, FaultProxy, Moto, dist_binary, moto};
use rand::{Rng, SeedableRng};

fn tree_with_many_objects() -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    // 1,050 objects over nested folders: more than one ListObjectsV2 page (1,000).
    for i in 0..1050 {
        let key = format!("env/team{}/pkg{}/dag_{i:04}.py", i % 7, i % 13);
        objects.insert(key, format!("# dag {i}\nprint({i})\n").into_bytes());
    }
    objects.insert(
        "env/ünïcödé/日本語_dag.py".into(),
        "# ✓\n".as_bytes().to_vec(),
    );
    objects.insert("env/.airflowignore".into(), b"scratch/\n".to_vec());
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_a_large_nested_tree_exactly_and_nothing_outside_dest() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    let objects = tree_with_many_objects();
    put_objects(&s3, &bucket, &objects).await;
    // A directory marker, unsafe keys, and a key in another environment's prefix.
    put_object(&s3, &bucket, "env/empty-folder/", "").await;
    put_object(&s3, &bucket, "env/../escape.py", "evil").await;
    put_object(&s3, &bucket, "env/a/../../escape2.py", "evil").await;
    put_object(&s3, &bucket, "env//rooted.py", "evil").await;
    put_object(&s3, &bucket, "env2/other.py", "not ours").await;

    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dags");
    std::fs::create_dir(&dest).unwrap();
    let (status, _out, err) = run_once(
        &moto().endpoint(),
        &[
            "--once",
            "--source",
            &format!("s3://{bucket}/env"),
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "{status:?}\n{err}");

    assert_eq!(snapshot(&dest), expected_tree(&objects, "env/"));
    assert!(
        !dest.join("empty-folder").exists(),
        "a directory marker creates nothing"
    );
    // Nothing outside --dest: the parent holds only dags/.
    let siblings: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("dags")]);
    // The unsafe keys were reported, once each.
    assert_eq!(err.matches("skipping key").count(), 3, "{err}");
    assert!(err.contains("\"downloaded\":1052"), "{err}");
    // All of them (unicode and nested keys too) through the direct GET: a key it encoded
    // differently from the SDK would have come back 404 and been repeated through the SDK.
    assert!(err.contains("\"via_sdk\":0"), "{err}");
    assert!(leftovers(&dest).is_empty(), "{:?}", leftovers(&dest));
}

/// Inode and mtime of every synced file: equal before and after a run that rewrote nothing.
fn file_identities(dest: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    snapshot(dest)
        .keys()
        .map(|k| {
            let m = std::fs::metadata(dest.join(k)).unwrap();
            (k.clone(), (m.ino(), m.mtime_nsec(), m.mtime()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_pycache_and_restart_without_downloads() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    let mut objects = BTreeMap::new();
    objects.insert("p/a.py".to_string(), b"version-1".to_vec());
    objects.insert("p/nested/deep/b.py".to_string(), b"bbb".to_vec());
    objects.insert("p/nested/c.py".to_string(), b"ccc".to_vec());
    objects.insert("p/d.py".to_string(), b"ddd".to_vec());
    put_objects(&s3, &bucket, &objects).await;
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap().to_string();
    let source = format!("s3://{bucket}/p/");
    // Every request goes through a transparent proxy so the test can count them.
    let proxy = FaultProxy::start(&moto().endpoint(), FaultPlan::none());
    let args = ["--once", "--source", &source, "--dest", &d];
    let with = |extra: &[&'static str]| -> Vec<String> {
        extra
            .iter()
            .copied()
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    };
    let (status, _, err) = run_once(&proxy.endpoint(), &args);
    assert!(status.success(), "{err}");
    assert_eq!(snapshot(dest.path()), expected_tree(&objects, "p/"));

    // Airflow writes __pycache__ next to DAGs; someone drops a file by hand.
    std::fs::create_dir_all(dest.path().join("nested/deep/__pycache__")).unwrap();
    std::fs::write(
        dest.path()
            .join("nested/deep/__pycache__/b.cpython-311.pyc"),
        b"pyc",
    )
    .unwrap();
    std::fs::write(dest.path().join("by_hand.py"), b"mine").unwrap();

    // Same-size edit, delete in a nested folder.
    put_object(&s3, &bucket, "p/a.py", "version-2").await;
    objects.insert("p/a.py".into(), b"version-2".to_vec());
    delete_object(&s3, &bucket, "p/nested/c.py").await;
    objects.remove("p/nested/c.py");
    delete_object(&s3, &bucket, "p/nested/deep/b.py").await;
    objects.remove("p/nested/deep/b.py");
    let (status, _, err) = run_once(&proxy.endpoint(), &with(&["--max-delete", "2"]));
    assert!(status.success(), "{err}");
    let mut want = expected_tree(&objects, "p/");
    want.insert(
        "nested/deep/__pycache__/b.cpython-311.pyc".into(),
        b"pyc".to_vec(),
    );
    want.insert("by_hand.py".into(), b"mine".to_vec());
    assert_eq!(snapshot(dest.path()), want);
    // nested/deep is kept for its __pycache__; nothing else was pruned wrongly.
    assert!(dest.path().join("nested/deep/__pycache__").is_dir());

    // Remove the pycache: the next deletion prunes the emptied folders.
    std::fs::remove_dir_all(dest.path().join("nested/deep/__pycache__")).unwrap();
    delete_object(&s3, &bucket, "p/d.py").await;
    objects.remove("p/d.py");
    let (status, _, err) = run_once(&proxy.endpoint(), &with(&["--max-delete", "1"]));
    assert!(status.success(), "{err}");
    assert!(!dest.path().join("d.py").exists());

    // Restart against an unchanged prefix: one list request, no GetObject, files untouched.
    let before = file_identities(dest.path());
    let requests_before = proxy.stats().requests();
    let (status, _, err) = run_once(&proxy.endpoint(), &args);
    assert!(status.success(), "{err}");
    assert_eq!(
        proxy.stats().requests() - requests_before,
        1,
        "only one ListObjectsV2 page"
    );
    assert!(err.contains("\"downloaded\":0"), "{err}");
    let after = file_identities(dest.path());
    assert_eq!(before, after);

    // A local edit of a synced file is repaired; the hand-written file stays. This run
    // uses the SDK's GetObject only.
    std::fs::write(dest.path().join("a.py"), b"tampered!").unwrap();
    let (status, _, err) = run_once(&proxy.endpoint(), &with(&["--direct-get", "false"]));
    assert!(status.success(), "{err}");
    assert!(err.contains("\"downloaded\":1"), "{err}");
    assert!(err.contains("\"via_sdk\":1"), "{err}");
    assert_eq!(
        std::fs::read(dest.path().join("a.py")).unwrap(),
        b"version-2"
    );
    assert_eq!(
        std::fs::read(dest.path().join("by_hand.py")).unwrap(),
        b"mine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_refuse_and_exit_codes_follow_the_contract() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    for k in ["g/a.py", "g/b.py", "g/c.py", "g/d.py"] {
        put_object(&s3, &bucket, k, k).await;
    }
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap().to_string();
    let source = format!("s3://{bucket}/g/");
    let endpoint = moto().endpoint();
    // `dagsync --once EXTRA... --source SOURCE --dest D` against `endpoint`.
    let once = |endpoint: &str, extra: &[&str]| {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--source", &source, "--dest", &d]);
        run_once(endpoint, &args)
    };
    let (status, _, err) = once(&endpoint, &[]);
    assert!(status.success(), "{err}");
    let synced = snapshot(dest.path());
    assert_eq!(synced.len(), 4);

    // Over the cap: 3 of 4 would go, --max-delete 2 → exit 5, nothing deleted, says why.
    for k in ["g/b.py", "g/c.py", "g/d.py"] {
        delete_object(&s3, &bucket, k).await;
    }
    let (status, _, err) = once(&endpoint, &["--max-delete", "2"]);
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(err.contains("--max-delete 2 allows 2"), "{err}");
    assert_eq!(snapshot(dest.path()), synced);

    // The dry run shows the refusal and changes nothing.
    let (status, out, _) = once(&endpoint, &["--dry-run", "--max-delete", "2"]);
    assert_eq!(status.code(), Some(5));
    assert!(out.contains("! b.py (deletion refused)"), "{out}");
    let (status, out, _) = once(&endpoint, &["--dry-run", "--max-delete", "3"]);
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("- c.py"), "{out}");
    assert_eq!(snapshot(dest.path()), synced);

    // Empty prefix: refused even with a generous cap.
    delete_object(&s3, &bucket, "g/a.py").await;
    let (status, _, err) = once(&endpoint, &["--max-delete", "100%"]);
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(err.contains("listing is empty"), "{err}");
    assert_eq!(snapshot(dest.path()), synced);

    // A failed listing (every request answered 500) deletes nothing; exit 1 after retries.
    let proxy = FaultProxy::start(&endpoint, FaultPlan::only(1.0, &[Fault::InternalError]));
    let (status, _, err) = once(&proxy.endpoint(), &["--max-delete", "100%"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("ListObjectsV2 failed"), "{err}");
    assert_eq!(snapshot(dest.path()), synced);
    assert!(proxy.stats().injected(Fault::InternalError) > 0);

    // Exit 2: the bucket does not exist; and a configuration that breaks the staleness bound.
    let (status, _, err) = run_once(
        &endpoint,
        &[
            "--once",
            "--source",
            "s3://no-such-bucket-airside/x/",
            "--dest",
            &d,
        ],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    let (status, _, err) = run_once(
        &endpoint,
        &["--interval", "90s", "--source", &source, "--dest", &d],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--max-staleness"), "{err}");

    // Exit 3: access denied, after retries.
    let denied = FaultProxy::start(&endpoint, FaultPlan::only(1.0, &[Fault::AccessDenied]));
    let (status, _, err) = once(&denied.endpoint(), &[]);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("AccessDenied"), "{err}");

    // Exit 4: the destination is missing.
    let missing = dest.path().join("not-mounted");
    let (status, _, err) = run_once(
        &endpoint,
        &[
            "--once",
            "--source",
            &source,
            "--dest",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("mount"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_injected_faults_and_keeps_running() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    let mut objects = BTreeMap::new();
    for i in 0..150 {
        objects.insert(
            format!("f/dir{}/dag{i}.py", i % 5),
            format!("dag {i}").into_bytes(),
        );
    }
    put_objects(&s3, &bucket, &objects).await;
    let proxy = FaultProxy::start(&moto().endpoint(), FaultPlan::all(0.3));
    let dest = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(
        &proxy.endpoint(),
        &[
            "--source",
            &format!("s3://{bucket}/f/"),
            "--dest",
            dest.path().to_str().unwrap(),
            "--interval",
            "1s",
            "--jitter",
            "200ms",
            "--max-staleness",
            "5s",
        ],
    );
    let admin = daemon.admin();
    let want = expected_tree(&objects, "f/");
    assert!(
        wait_until(Duration::from_secs(90), || snapshot(dest.path()) == want),
        "did not converge; logs:\n{}",
        daemon.logs()
    );
    daemon.assert_running();
    // Change things while faults continue.
    for i in 0..20 {
        let k = format!("f/dir{}/dag{i}.py", i % 5);
        put_object(&s3, &bucket, &k, format!("dag {i} v2")).await;
        objects.insert(k, format!("dag {i} v2").into_bytes());
    }
    delete_object(&s3, &bucket, "f/dir0/dag145.py").await;
    objects.remove("f/dir0/dag145.py");
    let want = expected_tree(&objects, "f/");
    assert!(
        wait_until(Duration::from_secs(90), || snapshot(dest.path()) == want),
        "did not converge after changes; logs:\n{}",
        daemon.logs()
    );
    daemon.assert_running();
    for f in [
        Fault::InternalError,
        Fault::SlowDown,
        Fault::DropBeforeForward,
    ] {
        assert!(proxy.stats().injected(f) > 0, "{f:?} was never injected");
    }
    let (_, metrics) = http_get(admin, "/metrics");
    assert!(
        metrics.contains("dagsync_syncs_total{result=\"changed\"}"),
        "{metrics}"
    );
    // Faults hit the direct GETs too; each was repeated through the SDK.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("dagsync_direct_fallbacks_total ") > 0.0, "{metrics}");
    assert!(
        value("dagsync_objects_sent_total{via=\"direct\"}") > 0.0,
        "{metrics}"
    );
    assert!(
        value("dagsync_objects_sent_total{via=\"sdk\"}") > 0.0,
        "{metrics}"
    );
    let status = daemon.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}

/// SIGKILL at random moments during syncs of larger files, many times: a file at its final
/// path is always a complete version of its object, and the next good cycle leaves no
/// temporary files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_leaves_partial_files() {
    let dest = tempfile::tempdir().unwrap();
    sigkill_rounds(dest.path()).await;
}

/// The same on a FUSE mount standing in for EFS, where staged writes go through the
/// blocking pool and renames through a userspace filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_leaves_partial_files_on_a_fuse_mount() {
    assert!(
        airside_testkit::FuseMount::available(),
        "bindfs and /dev/fuse are needed (scripts/test installs bindfs)"
    );
    let fuse = airside_testkit::FuseMount::new();
    sigkill_rounds(fuse.path()).await;
}

async fn sigkill_rounds(dest: &Path) {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    let keys: Vec<String> = (0..12).map(|i| format!("k/big{i}.py")).collect();
    let content = |key: &str, version: u32| -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            version as u64 * 1000 + key.len() as u64 + key.as_bytes()[key.len() - 4] as u64,
        );
        let len = 300_000 + (version as usize % 3) * 200_000;
        let mut v = format!("# {key} version {version}\n").into_bytes();
        v.extend((0..len).map(|_| rng.random_range(b'a'..=b'z')));
        v
    };
    // Every version ever uploaded, per key.
    let mut versions: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for k in &keys {
        let c = content(k, 0);
        put_object(&s3, &bucket, k, c.clone()).await;
        versions.entry(k.clone()).or_default().push(c);
    }
    let source = format!("s3://{bucket}/k/");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let check = |versions: &BTreeMap<String, Vec<Vec<u8>>>| {
        for (rel, data) in snapshot(dest) {
            let key = format!("k/{rel}");
            let known = versions
                .get(&key)
                .unwrap_or_else(|| panic!("unexpected file {rel}"));
            assert!(
                known.contains(&data),
                "{rel} holds {} bytes that are no complete version",
                data.len()
            );
        }
    };
    let mut kills = 0;
    for round in 1..=15u32 {
        // New versions of a random half of the objects.
        for k in &keys {
            if rng.random_bool(0.5) {
                let c = content(k, round);
                put_object(&s3, &bucket, k, c.clone()).await;
                versions.get_mut(k).unwrap().push(c);
            }
        }
        let mut daemon = Daemon::start(
            &moto().endpoint(),
            &[
                "--source",
                &source,
                "--dest",
                dest.to_str().unwrap(),
                "--interval",
                "1s",
                "--jitter",
                "0s",
                "--concurrency",
                "4",
            ],
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(30..700)));
        daemon.child.kill().unwrap(); // SIGKILL
        daemon.child.wait().unwrap();
        kills += 1;
        check(&versions);
    }
    // One clean run: converges to the latest versions and removes every temporary file.
    let (status, _, err) = run_once(
        &moto().endpoint(),
        &[
            "--once",
            "--source",
            &source,
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "{err}");
    for k in &keys {
        let rel = k.strip_prefix("k/").unwrap();
        assert_eq!(
            &std::fs::read(dest.join(rel)).unwrap(),
            versions[k].last().unwrap()
        );
    }
    assert!(
        leftovers(dest).is_empty(),
        "temporary files left: {:?}",
        leftovers(dest)
    );
    assert_eq!(kills, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_healthcheck() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    put_object(&s3, &bucket, "h/a.py", "a").await;
    // Start with every request failing: alive but not ready.
    let proxy = FaultProxy::start(&moto().endpoint(), FaultPlan::only(1.0, &[Fault::SlowDown]));
    let dest = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(
        &proxy.endpoint(),
        &[
            "--source",
            &format!("s3://{bucket}/h/"),
            "--dest",
            dest.path().to_str().unwrap(),
            "--interval",
            "1s",
            "--jitter",
            "0s",
            "--max-staleness",
            "3s",
            "--ready-max-age",
            "4s",
        ],
    );
    let admin_addr = daemon.admin();
    let admin = admin_addr.to_string();
    assert!(wait_until(Duration::from_secs(20), || http_get(
        admin_addr, "/healthz"
    )
    .0 == 200));
    let (status, body) = http_get(admin_addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no successful sync yet"), "{body}");
    let hc = |admin: &str| {
        Command::new(BIN)
            .args(["healthcheck", "--admin-addr", admin])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(hc(&admin), Some(1));

    // Wait for a failed cycle (the SDK's own retries come first) before S3 comes back.
    assert!(
        wait_until(Duration::from_secs(60), || http_get(admin_addr, "/metrics")
            .1
            .contains("dagsync_syncs_total{result=\"error\"}")),
        "{}",
        daemon.logs()
    );
    proxy.set_rate(0.0);
    assert!(
        wait_until(Duration::from_secs(60), || http_get(admin_addr, "/readyz")
            .0
            == 200),
        "{}",
        daemon.logs()
    );
    assert_eq!(hc(&admin), Some(0));
    let (_, m) = http_get(admin_addr, "/metrics");
    for name in [
        "dagsync_syncs_total{result=\"changed\"}",
        "dagsync_syncs_total{result=\"error\"}",
        "dagsync_sync_duration_seconds_bucket",
        "dagsync_objects_sent_total{via=\"direct\"} 1",
        "dagsync_bytes_sent_total 1",
        // The deprecated names, for one more release.
        "dagsync_objects_downloaded_total{via=\"direct\"} 1",
        "dagsync_bytes_downloaded_total 1",
        "dagsync_last_success_timestamp_seconds",
        "dagsync_errors_total{class=\"throttled\"}",
    ] {
        assert!(m.contains(name), "{name} missing from:\n{m}");
    }

    // S3 goes away again: after --ready-max-age without a success, not ready.
    proxy.set_rate(1.0);
    assert!(wait_until(Duration::from_secs(30), || http_get(
        admin_addr, "/readyz"
    )
    .0 == 503));
    assert!(
        http_get(admin_addr, "/readyz")
            .1
            .contains("last successful sync was")
    );
    assert_eq!(hc(&admin), Some(1));
    daemon.assert_running();
    assert_eq!(daemon.terminate(Duration::from_secs(15)).code(), Some(0));
    // No daemon any more: the health check fails.
    assert_eq!(hc(&admin), Some(1));
}

#[test]
fn local_source_with_watch_syncs_on_change() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("first.py"), b"1").unwrap();
    // A 60 s interval: only the watch can bring the change within the wait below.
    let mut daemon = Daemon::start(
        "http://127.0.0.1:9", // unused: a local source makes no AWS call
        &[
            "--source",
            src.path().to_str().unwrap(),
            "--dest",
            dest.path().to_str().unwrap(),
            "--watch",
            "--interval",
            "60s",
            "--jitter",
            "0s",
            "--max-staleness",
            "120s",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || dest
            .path()
            .join("first.py")
            .exists()),
        "{}",
        daemon.logs()
    );
    std::fs::create_dir(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("sub/second.py"), b"2").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read(
            dest.path().join("sub/second.py")
        )
        .ok()
        .as_deref()
            == Some(b"2")),
        "{}",
        daemon.logs()
    );
    std::fs::remove_file(src.path().join("first.py")).unwrap();
    std::fs::write(src.path().join("third.py"), b"3").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || !dest
            .path()
            .join("first.py")
            .exists()),
        "{}",
        daemon.logs()
    );
    daemon.assert_running();
}

/// The static binary runs from an empty root (only itself, /etc/hosts, /etc/resolv.conf) and
/// reaches the emulator by name through hickory's /etc/hosts lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_binary_runs_from_an_empty_root() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    put_object(&s3, &bucket, "e/dag.py", "from the empty root").await;
    let root = EmptyRoot::new(&dist_binary("dagsync"));
    root.mkdir("dags");
    let out = root
        .command()
        .args([
            "--once",
            "--source",
            &format!("s3://{bucket}/e/"),
            "--dest",
            "/dags",
        ])
        .envs(Moto::env_for(&moto().localhost_endpoint()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(root.path().join("dags/dag.py")).unwrap(),
        b"from the empty root"
    );
    let files = root.files();
    assert!(
        files
            .iter()
            .all(|f| f == "dagsync" || f.starts_with("etc/") || f.starts_with("dags/")),
        "{files:?}"
    );
}
