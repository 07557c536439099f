//! dagsync as the task definitions deploy it: against S3's documented behaviour (the
//! fault proxy's strict-S3 mode), inside its container's memory limit, and with the DAG
//! folder shared by many tasks.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use airside_testkit::{FaultPlan, FaultProxy, MemoryCap, Moto, moto};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use md5::{Digest, Md5};

use crate::support::*;

#[derive(Clone, Copy)]
enum Sse {
    None,
    Kms,
    Dsse,
    CustomerKey,
}

async fn put_sse(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8], sse: Sse) {
    let req = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()));
    let req = match sse {
        Sse::None => req,
        Sse::Kms => req.server_side_encryption(ServerSideEncryption::AwsKms),
        Sse::Dsse => req.server_side_encryption(ServerSideEncryption::AwsKmsDsse),
        Sse::CustomerKey => req.sse_customer_algorithm("AES256"),
    };
    req.send().await.unwrap();
}

/// A two-part upload (5 MiB, S3's smallest non-final part, then the rest).
async fn put_multipart(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8], kms: bool) {
    let mut create = s3.create_multipart_upload().bucket(bucket).key(key);
    if kms {
        create = create.server_side_encryption(ServerSideEncryption::AwsKms);
    }
    let upload = create.send().await.unwrap();
    let id = upload.upload_id().unwrap();
    let split = 5 * 1024 * 1024;
    let mut parts = Vec::new();
    for (n, chunk) in [&body[..split], &body[split..]].into_iter().enumerate() {
        let part = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(n as i32 + 1)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n as i32 + 1)
                .e_tag(part.e_tag().unwrap())
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

fn content(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("# dag {i}\n").into_bytes();
    v.resize(len, b'#');
    v
}

fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    status.code()
}

/// One `dagsync --once` of `s3://BUCKET/dags/` into a fresh folder, with `extra` flags:
/// (folder, status, stderr).
fn once_into(
    endpoint: &str,
    bucket: &str,
    extra: &[&str],
) -> (tempfile::TempDir, std::process::ExitStatus, String) {
    let dest = tempfile::tempdir().unwrap();
    let source = format!("s3://{bucket}/dags/");
    let mut args = vec![
        "--source",
        &source,
        "--dest",
        dest.path().to_str().unwrap(),
        "--once",
    ];
    args.extend_from_slice(extra);
    let (status, _, stderr) = run_once(endpoint, &args);
    (dest, status, stderr)
}

/// Through the strict-S3 proxy: KMS, DSSE-KMS and SSE-C objects (whose ETags are not
/// their MD5), multipart objects, objects without checksums and plain ones all sync
/// exactly, by the direct path and the SDK path; a body corrupted on the wire is rejected
/// by its checksum or its MD5, named in the log, the exit code, `/readyz` and
/// `/metrics`, never published, and published once it comes through intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_s3_encrypted_and_multipart_objects_sync_and_corrupt_bodies_never_publish() {
    let proxy = FaultProxy::start_strict_s3(&moto().endpoint(), FaultPlan::none());
    let s3 = s3_client_at(&proxy.endpoint()).await;
    let bucket = create_bucket(&s3, "dags").await;
    let strict = proxy.strict_s3();
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..30 {
        let (kind, sse) = match i % 5 {
            0 => ("kms", Sse::Kms),
            1 => ("dsse", Sse::Dsse),
            2 => ("ssec", Sse::CustomerKey),
            3 => ("kms_legacy", Sse::Kms),
            _ => ("plain_legacy", Sse::None),
        };
        let key = format!("dags/{kind}_{i}.py");
        let body = content(i, 100 + i * 37);
        put_sse(&s3, &bucket, &key, &body, sse).await;
        if kind.ends_with("legacy") || kind == "ssec" {
            // Stored before S3 added default checksums: only the ETag (where it is an
            // MD5) and the size can be checked.
            strict.legacy_object(&bucket, &key);
        }
        objects.insert(key, body);
    }
    let big = content(99, 5 * 1024 * 1024 + 4321);
    put_multipart(&s3, &bucket, "dags/zipped/kms_multipart.zip", &big, true).await;
    put_multipart(&s3, &bucket, "dags/zipped/plain_multipart.zip", &big, false).await;
    objects.insert("dags/zipped/kms_multipart.zip".into(), big.clone());
    objects.insert("dags/zipped/plain_multipart.zip".into(), big);

    // The strict mode itself: the listing shows encrypted objects with 32-hex ETags that
    // are not their MD5, and multipart objects with `-N` ETags.
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("dags/")
        .send()
        .await
        .unwrap();
    for o in listed.contents() {
        let key = o.key().unwrap();
        let etag = o.e_tag().unwrap().trim_matches('"');
        let md5 = format!("{:x}", Md5::digest(&objects[key]));
        if key.contains("multipart") {
            assert!(etag.ends_with("-2"), "{key}: {etag}");
        } else if key.contains("plain") {
            assert_eq!(etag, md5, "{key}");
        } else {
            assert_eq!(etag.len(), 32, "{key}: {etag}");
            assert_ne!(etag, md5, "{key}: strict mode must not give an MD5 ETag");
        }
    }

    let expected = expected_tree(&objects, "dags/");
    let sync_once = |direct: &str| once_into(&proxy.endpoint(), &bucket, &["--direct-get", direct]);
    for direct in ["true", "false"] {
        let (dest, status, stderr) = sync_once(direct);
        assert!(status.success(), "direct={direct}: {status}\n{stderr}");
        assert_eq!(snapshot(dest.path()), expected, "direct={direct}");
    }

    // Corrupt one checksummed object and one whose only check is its MD5 ETag, and deny
    // the KMS key of a third.
    let bad_crc = "dags/kms_5.py";
    let bad_md5 = "dags/plain_legacy_4.py";
    let denied = "dags/kms_10.py";
    strict.corrupt(&bucket, bad_crc);
    strict.corrupt(&bucket, bad_md5);
    strict.deny_kms(&bucket, denied);
    let mut good = expected.clone();
    good.remove("kms_5.py");
    good.remove("plain_legacy_4.py");
    good.remove("kms_10.py");
    for direct in ["true", "false"] {
        let (dest, status, stderr) = sync_once(direct);
        assert_eq!(exit_code(status), Some(6), "direct={direct}\n{stderr}");
        for (key, check) in [
            ("kms_5.py", "crc64nvme"),
            ("plain_legacy_4.py", "etag-md5"),
            ("kms_10.py", "access_denied"),
        ] {
            assert!(
                stderr.contains(key) && stderr.contains(check),
                "direct={direct}: {key} / {check} not named in:\n{stderr}"
            );
        }
        // Everything else was published; the corrupt files never were.
        assert_eq!(snapshot(dest.path()), good, "direct={direct}");
    }

    // With --all-or-nothing nothing is published.
    let (dest, status, stderr) = once_into(&proxy.endpoint(), &bucket, &["--all-or-nothing"]);
    assert!(!status.success(), "{stderr}");
    assert!(snapshot(dest.path()).is_empty());

    // The daemon keeps the fleet going: ready, the failures on /readyz and /metrics, and
    // the files published as soon as their bodies come through intact.
    let dest = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::fast(
        &proxy.endpoint(),
        &format!("s3://{bucket}/dags/"),
        dest.path().to_str().unwrap(),
        "3s",
    );
    let admin_addr = daemon.admin();
    assert!(
        wait_until(Duration::from_secs(30), || http_get(admin_addr, "/readyz")
            .0
            == 200),
        "{}",
        daemon.logs()
    );
    let (_, ready) = http_get(admin_addr, "/readyz");
    assert!(
        ready.contains("failing object: kms_5.py (integrity)")
            && ready.contains("failing object: plain_legacy_4.py (integrity)")
            && ready.contains("failing object: kms_10.py (access_denied)"),
        "{ready}"
    );
    let (_, metrics) = http_get(admin_addr, "/metrics");
    assert!(metrics.contains("dagsync_objects_failing 3"), "{metrics}");
    assert!(
        metrics.contains("dagsync_object_failures_total{reason=\"access_denied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dagsync_object_failures_total{reason=\"integrity\"}"),
        "{metrics}"
    );
    assert_eq!(snapshot(dest.path()), good);
    strict.repair(&bucket, bad_crc);
    strict.repair(&bucket, bad_md5);
    strict.allow(&bucket, denied);
    assert!(
        wait_until(Duration::from_secs(30), || snapshot(dest.path())
            == expected),
        "{}",
        daemon.logs()
    );
    assert!(wait_until(Duration::from_secs(10), || http_get(
        admin_addr, "/metrics"
    )
    .1
    .contains("dagsync_objects_failing 0")));
    assert!(!http_get(admin_addr, "/readyz").1.contains("failing object"));
    daemon.assert_running();
    assert_eq!(daemon.terminate(Duration::from_secs(15)).code(), Some(0));
}

/// When every object is denied and nothing was ever fetched, the task role is wrong (no
/// s3:GetObject or kms:Decrypt at all): that is exit 3 after the retries, not a green
/// /readyz with every object listed as failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_can_read_no_object_exits_3() {
    let proxy = FaultProxy::start_strict_s3(&moto().endpoint(), FaultPlan::none());
    let s3 = s3_client_at(&proxy.endpoint()).await;
    let bucket = create_bucket(&s3, "dags").await;
    for i in 0..3 {
        let key = format!("dags/kms_{i}.py");
        put_sse(&s3, &bucket, &key, &content(i, 100), Sse::Kms).await;
        proxy.strict_s3().deny_kms(&bucket, &key);
    }
    let (dest, status, stderr) = once_into(&proxy.endpoint(), &bucket, &[]);
    assert_eq!(exit_code(status), Some(3), "{stderr}");
    assert!(stderr.contains("kms:Decrypt"), "{stderr}");
    assert!(snapshot(dest.path()).is_empty());
}

/// 40 objects of 7 MiB and 2,000 small files sync with default flags inside the memory
/// limit the worker task definition gives the dagsync container (read from
/// taskdefs/worker.json), with no OOM kill; the peak is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_sync_inside_the_task_definition_memory_limit() {
    if !MemoryCap::available() {
        panic!("memory-capped tests need root and the cgroup v1 memory controller");
    }
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3, "dags").await;
    let mut objects = BTreeMap::new();
    for i in 0..40 {
        let mut body = content(i, 7 * 1024 * 1024);
        // Distinct bodies, so nothing can be shared or compressed away.
        body[100..108].copy_from_slice(&(i as u64).to_le_bytes());
        objects.insert(format!("big/data_{i:02}.bin"), body);
    }
    for i in 0..2000 {
        objects.insert(
            format!("big/dags/team{}/dag_{i:04}.py", i % 10),
            content(i, 200),
        );
    }
    put_objects(&s3, &bucket, &objects).await;
    let cap = MemoryCap::for_container("worker", "dagsync");
    let dest = tempfile::tempdir().unwrap();
    // The binary the image ships: a debug build's memory says little about production.
    let mut cmd = Command::new(airside_testkit::dist_binary("dagsync"));
    cmd.args([
        "--source",
        &format!("s3://{bucket}/big/"),
        "--dest",
        dest.path().to_str().unwrap(),
        "--admin-addr",
        "127.0.0.1:0",
    ])
    .envs(Moto::env_for(&moto().endpoint()))
    .env("DAGSYNC_LOG_FORMAT", "json");
    let mut daemon = cap.spawn_daemon("dagsync", &mut cmd);
    let admin_addr = daemon.admin_addr();
    let synced = wait_until(Duration::from_secs(240), || {
        http_get(admin_addr, "/readyz").0 == 200 || daemon.child.try_wait().unwrap().is_some()
    });
    let peak_rss = MemoryCap::peak_rss(daemon.pid);
    let report = cap.assert_no_oom("dagsync");
    assert!(synced, "no sync within 240 s:\n{}", daemon.logs());
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "dagsync exited under the memory limit: {report:?}\n{}",
        daemon.logs()
    );
    let peak_rss = peak_rss.expect("VmHWM of a running process");
    println!(
        "40 x 7 MiB + 2,000 files under {} MiB: peak RSS {:.1} MiB, cgroup peak (with page cache) {:.1} MiB",
        report.limit >> 20,
        peak_rss as f64 / 1048576.0,
        report.peak as f64 / 1048576.0
    );
    assert_eq!(snapshot(dest.path()), expected_tree(&objects, "big/"));
    daemon.child.sigterm();
    daemon
        .child
        .wait_exit(Duration::from_secs(15))
        .expect("stops");
}

/// [`snapshot`] of a folder other processes keep renaming files into: through FUSE (as on
/// NFS) a name looked up just before it was replaced can answer ENOENT once, so a
/// snapshot that meets one is taken again.
fn shared_snapshot(root: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    for _ in 0..20 {
        match try_snapshot(root) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{}: {e}", root.display()),
        }
    }
    snapshot(root)
}

fn version_body(key: &str, v: u32) -> Vec<u8> {
    let mut b = format!("# {key} version {v}\n").into_bytes();
    b.resize(300, b'#');
    b
}

/// The version a file's content says, if it is exactly one of the versions written.
fn version_of(key: &str, bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    let v: u32 = text
        .strip_prefix(&format!("# {key} version "))?
        .split('\n')
        .next()?
        .parse()
        .ok()?;
    (version_body(key, v) == bytes).then_some(v)
}

fn role_of(addr: std::net::SocketAddr) -> Option<&'static str> {
    let (_, m) = http_get(addr, "/metrics");
    if m.contains("dagsync_role{role=\"writer\"} 1") {
        Some("writer")
    } else if m.contains("dagsync_role{role=\"standby\"} 1") {
        Some("standby")
    } else {
        None
    }
}

/// Twelve dagsyncs (web, scheduler, ten workers) share one DAG folder on a FUSE mount that
/// stands in for EFS: one writer fetches each object version once, every instance turns
/// ready, a reader never sees a file go back to an older version or a torn file, and when
/// the writer is SIGKILLed mid-sync another takes over within --max-staleness and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_instances_share_one_folder_with_one_writer() {
    use airside_testkit::FuseMount;
    assert!(
        FuseMount::available(),
        "bindfs and /dev/fuse are needed (scripts/test installs bindfs)"
    );
    let proxy = FaultProxy::start_strict_s3(&moto().endpoint(), FaultPlan::none());
    let s3 = s3_client_at(&proxy.endpoint()).await;
    let bucket = create_bucket(&s3, "dags").await;
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("team{}/dag_{i:04}.py", i % 10))
        .collect();
    let v1: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .map(|k| (format!("s/{k}"), version_body(k, 1)))
        .collect();
    put_objects(&s3, &bucket, &v1).await;
    let fuse = FuseMount::new();
    let dest = fuse.path().to_str().unwrap().to_string();
    let source = format!("s3://{bucket}/s/");
    // The whole resync after the kill must fit in --max-staleness: 2,000 files through
    // FUSE take a while on this 2-core machine shared with 12 daemons and a reader.
    let max_staleness = Duration::from_secs(30);
    let instances = 12;
    let mut daemons: Vec<(Daemon, std::net::SocketAddr)> = (0..instances)
        .map(|_| {
            let d = Daemon::fast(&proxy.endpoint(), &source, &dest, "30s");
            let addr = d.admin();
            (d, addr)
        })
        .collect();
    let all_ready = wait_until(Duration::from_secs(180), || {
        daemons
            .iter()
            .all(|(_, a)| http_get(*a, "/readyz").0 == 200)
    });
    if !all_ready {
        let mut report = String::new();
        for (i, (d, a)) in daemons.iter().enumerate() {
            let (status, body) = http_get(*a, "/readyz");
            report.push_str(&format!(
                "--- instance {i}: {status} {body:?} role {:?}\n{}\n",
                role_of(*a),
                d.logs()
                    .lines()
                    .rev()
                    .take(6)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        panic!("not every instance turned ready:\n{report}");
    }
    let expected: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .map(|k| (k.clone(), version_body(k, 1)))
        .collect();
    assert_eq!(shared_snapshot(fuse.path()), expected);
    let roles: Vec<_> = daemons.iter().map(|(_, a)| role_of(*a)).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == Some("writer")).count(),
        1,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == Some("standby")).count(),
        instances - 1,
        "{roles:?}"
    );
    let strict = proxy.strict_s3();
    // Each object fetched once, and not again by later cycles: on FUSE (as on NFS) a
    // delayed write-back once overwrote the mtime dagsync set, so that every cycle
    // took every file for changed and downloaded it again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        strict.bucket_gets(&bucket),
        2000,
        "each object fetched once"
    );

    // A reader polls every file while hot files are updated: no file ever goes back to an
    // older version, and every read is exactly one version (never torn).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, root, keys) = (stop.clone(), fuse.path().to_path_buf(), keys.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, u32> = BTreeMap::new();
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for k in &keys {
                    let Ok(bytes) = std::fs::read(root.join(k)) else {
                        continue;
                    };
                    reads += 1;
                    let v = version_of(k, &bytes)
                        .unwrap_or_else(|| panic!("{k}: torn or foreign content {bytes:?}"));
                    let last = seen.entry(k.clone()).or_insert(v);
                    assert!(v >= *last, "{k} went back from version {last} to {v}");
                    *last = v;
                }
            }
            reads
        })
    };
    let hot: Vec<&String> = keys.iter().take(20).collect();
    for v in 2..=4 {
        let batch: BTreeMap<String, Vec<u8>> = hot
            .iter()
            .map(|k| (format!("s/{k}"), version_body(k, v)))
            .collect();
        put_objects(&s3, &bucket, &batch).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mut expected = expected;
    for k in &hot {
        expected.insert((*k).clone(), version_body(k, 4));
    }
    if !wait_until(Duration::from_secs(30), || {
        shared_snapshot(fuse.path()) == expected
    }) {
        let now = shared_snapshot(fuse.path());
        let differ: Vec<String> = expected
            .iter()
            .filter(|(k, v)| now.get(*k) != Some(*v))
            .take(5)
            .map(|(k, _)| format!("{k}: {:?}", now.get(k).map(|b| version_of(k, b))))
            .collect();
        let writer = daemons
            .iter()
            .find(|(_, a)| role_of(*a) == Some("writer"))
            .map(|(d, _)| {
                d.logs()
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        panic!(
            "hot updates did not arrive ({} files, {} expected): {differ:?}\nwriter: {}",
            now.len(),
            expected.len(),
            writer.unwrap_or_default()
        );
    }
    // Each version of each hot file fetched at most once (a version overtaken by the next
    // before a cycle listed it is never fetched).
    for k in &hot {
        let gets = strict.gets(&bucket, &format!("s/{k}"));
        assert!((2..=4).contains(&gets), "{k}: {gets} GETs for 4 versions");
    }

    // Every file changes; the writer is SIGKILLed mid-sync.
    let v5: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .map(|k| (format!("s/{k}"), version_body(k, 5)))
        .collect();
    put_objects(&s3, &bucket, &v5).await;
    let writer = daemons
        .iter()
        .position(|(_, a)| role_of(*a) == Some("writer"))
        .expect("a writer");
    let before = strict.bucket_gets(&bucket);
    assert!(
        wait_until(Duration::from_secs(30), || strict.bucket_gets(&bucket)
            > before + 50),
        "the writer did not start the sync"
    );
    let (mut killed, _) = daemons.remove(writer);
    killed.child.kill().unwrap();
    let killed_at = std::time::Instant::now();
    let took_over = wait_until(Duration::from_secs(30), || {
        daemons.iter().any(|(_, a)| role_of(*a) == Some("writer"))
    });
    let takeover = killed_at.elapsed();
    assert!(took_over, "no standby took over");
    println!(
        "takeover after SIGKILL of the writer: {:.1} s",
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= max_staleness,
        "takeover took {takeover:?}, over --max-staleness {max_staleness:?}"
    );
    let expected: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .map(|k| (k.clone(), version_body(k, 5)))
        .collect();
    let finished = wait_until(max_staleness.saturating_sub(killed_at.elapsed()), || {
        shared_snapshot(fuse.path()) == expected
    });
    let finish = killed_at.elapsed();
    println!(
        "the new writer finished the 2,000-file sync {:.1} s after the kill",
        finish.as_secs_f64()
    );
    assert!(
        finished,
        "the new writer did not finish the sync within --max-staleness ({max_staleness:?})"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader
        .join()
        .expect("reader saw no rollback and no torn file");
    println!("reader: {reads} reads, no rollback, no torn file");
    assert!(
        reads > 2000,
        "the reader read too little to mean anything: {reads}"
    );
    for (d, _) in daemons.iter_mut() {
        d.assert_running();
    }
    for (mut d, _) in daemons {
        assert_eq!(d.terminate(Duration::from_secs(15)).code(), Some(0));
    }
}
