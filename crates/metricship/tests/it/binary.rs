//! The real binary: healthcheck, EMF on stdout with a graceful SIGTERM, hostile
//! senders, configuration errors, and the static binary in an empty root.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use airside_testkit::{
    EmptyRoot, Fault, FaultPlan, FaultProxy, KillOnDrop, Moto, dist_binary, free_addr, moto,
    unique_name,
};

const BIN: &str = env!("CARGO_BIN_EXE_metricship");

fn wait_ready(admin: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = Command::new(BIN)
            .args(["healthcheck", "--admin-addr", &admin.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if ok {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("metricship exited early: {status}");
        }
        assert!(Instant::now() < deadline, "metricship not ready in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_exit(child: &mut KillOnDrop, within: Duration) -> ExitStatus {
    child
        .wait_exit(within)
        .expect("metricship did not exit in time")
}

/// SIGTERM, then the exit status (within 20 s).
fn terminate(child: &mut KillOnDrop) -> ExitStatus {
    child.sigterm();
    wait_exit(child, Duration::from_secs(20))
}

fn send_unix(path: &Path, packets: &[String]) {
    let s = UnixDatagram::unbound().unwrap();
    for p in packets {
        s.send_to(p.as_bytes(), path).unwrap();
    }
}

#[test]
fn healthcheck_fails_without_a_daemon() {
    let status = Command::new(BIN)
        .args(["healthcheck", "--admin-addr", &free_addr().to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn bad_configuration_exits_2() {
    for args in [
        vec!["--mapping", "/nonexistent/mapping.yaml", "--no-cloudwatch"],
        vec![
            "--min-workers",
            "5",
            "--max-workers",
            "2",
            "--no-cloudwatch",
        ],
        vec!["--flush-interval", "soon"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--statsd-addr", "127.0.0.1:0"])
            .env("METRICSHIP_LOG_FORMAT", "text")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn emf_on_stdout_and_the_last_interval_flushed_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("statsd.sock");
    let logged = Logged::spawn(
        Command::new(BIN)
            .args(["--emf", "--high-resolution", "--flush-interval", "1h"])
            .args(["--statsd-addr", &format!("unix://{}", sock.display())])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--namespace", "AirflowDemo", "--dimension", "Cluster=test"])
            .env("METRICSHIP_LOG_FORMAT", "json")
            .stdout(Stdio::piped()),
    );
    let admin = logged.admin();
    let mut child = logged.child;
    wait_ready(admin, &mut child);
    send_unix(
        &sock,
        &[
            "airflow.pool.queued_slots.default_pool:25|g".into(),
            "airflow.executor.queued_tasks:25|g".into(),
            "airflow.executor.running_tasks:8|g".into(),
        ],
    );
    // Nothing is written before the interval ends (1h): SIGTERM must flush it.
    std::thread::sleep(Duration::from_millis(300));
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let find = |name: &str| {
        docs.iter()
            .find(|d| d.get(name).is_some())
            .unwrap_or_else(|| panic!("{name} not in {stdout}"))
    };
    let q = find("celery.queue_depth");
    assert_eq!(q["celery.queue_depth"], 25.0);
    assert_eq!(q["Cluster"], "test");
    let meta = &q["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(meta["Namespace"], "AirflowDemo");
    assert_eq!(meta["Metrics"][0]["StorageResolution"], 1);
    assert_eq!(find("TaskDemand")["TaskDemand"], 33.0);
    assert_eq!(find("DesiredWorkers")["DesiredWorkers"], 3.0);
}

#[test]
fn hostile_senders_cannot_crash_or_stall_it() {
    let logged = Logged::spawn(
        Command::new(BIN)
            .args([
                "--no-cloudwatch",
                "--max-series",
                "500",
                "--flush-interval",
                "1s",
            ])
            .args(["--statsd-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .env("METRICSHIP_LOG_FORMAT", "json")
            .stdout(Stdio::null()),
    );
    let (admin, statsd_addr) = (logged.admin(), logged.statsd());
    let mut child = logged.child;
    wait_ready(admin, &mut child);
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut packets: Vec<Vec<u8>> = Vec::new();
    for i in 0..2000 {
        let n = (next() % 300) as usize;
        packets.push((0..n).map(|_| next() as u8).collect());
        // Cardinality attack: a new name every time.
        packets.push(format!("attack.{i}.{}:1|c|#k:{}", next(), next()).into_bytes());
    }
    packets.push(vec![b'x'; 60_000]); // longer than a datagram buffer
    packets.push(b"a:1|c\n".repeat(5000)[..30_000].to_vec());
    packets.push(b"sets:x|s\n".repeat(3000)[..27_000].to_vec());
    packets.push(b"a,=:1|c\n:|\n|||\n#:#\n@@\n_e{1,1}:a|b\n".to_vec());
    for p in &packets {
        let _ = sender.send_to(p, statsd_addr);
    }
    // Still alive, still answering, and counting what it refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = rt.block_on(async {
        eventually("the attack counted", Duration::from_secs(10), || async {
            let body = scrape(admin).await;
            (sample(
                &body,
                "metricship_series_dropped_total{reason=\"series_cap\"}",
            )? > 0.0
                && sample(&body, "metricship_lines_malformed_total")? > 100.0)
                .then_some(body)
        })
        .await
    });
    assert!(child.try_wait().unwrap().is_none(), "metricship died");
    assert!(
        sample(&body, "metricship_live_series").unwrap() <= 500.0,
        "{body}"
    );
    assert!(sample(&body, "metricship_packets_truncated_total").unwrap() >= 1.0);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

/// The static binary in an empty root (no libc files, no CA bundle, no shell) publishes
/// to the emulator by name (`localhost`, resolved from /etc/hosts by hickory).
#[test]
fn static_binary_runs_in_an_empty_root() {
    let moto = moto();
    let root = EmptyRoot::new(&dist_binary("metricship"));
    let ns = unique_name("Airflow");
    let run = unique_name("run");
    let endpoint = moto.localhost_endpoint();
    let mut cmd = root.command();
    cmd.args(["--flush-interval", "1s", "--namespace", &ns])
        .args(["--dimension", &format!("Run={run}")])
        .args(["--statsd-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .envs(Moto::env_for(&endpoint))
        .stdout(Stdio::null());
    let logged = Logged::spawn(&mut cmd);
    let (admin, statsd) = (logged.admin(), logged.statsd());
    let mut child = logged.child;
    wait_ready(admin, &mut child);
    send(
        statsd,
        &["airflow.pool.queued_slots.default_pool:21|g".to_string()],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cw = aws_sdk_cloudwatch::Client::new(&moto.sdk_config().await);
        let v = eventually(
            "QueueDepth from the empty root",
            Duration::from_secs(20),
            || {
                let (cw, ns, run) = (cw.clone(), ns.clone(), run.clone());
                async move {
                    stat(
                        &cw,
                        &ns,
                        "celery.queue_depth",
                        &[("Run", run.as_str())],
                        "Maximum",
                        3600,
                    )
                    .await
                    .first()
                    .copied()
                }
            },
        )
        .await;
        assert_eq!(v, 21.0);
    });
    assert_eq!(
        root.files(),
        vec!["etc/hosts", "etc/resolv.conf", "metricship"]
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
}

/// Exit code 3: access denied, after retries — both when the start check (ListMetrics) is
/// refused and when CloudWatch starts refusing PutMetricData while the daemon runs. Every
/// request goes through a fault proxy that answers AccessDenied.
#[test]
fn access_denied_exits_3_after_retries() {
    let moto = moto();
    let run_until_exit = |proxy: &FaultProxy, deny_after_ready: bool| {
        let mut logged = Logged::spawn(
            Command::new(BIN)
                .args(["--flush-interval", "1s", "--namespace", "AirflowDenied"])
                .args(["--statsd-addr", "127.0.0.1:0"])
                .args(["--admin-addr", "127.0.0.1:0"])
                .envs(Moto::env_for(&proxy.endpoint()))
                .env("METRICSHIP_LOG_FORMAT", "json")
                .stdout(Stdio::null()),
        );
        if deny_after_ready {
            let (admin, statsd) = (logged.admin(), logged.statsd());
            wait_ready(admin, &mut logged.child);
            proxy.set_rate(1.0);
            send(
                statsd,
                &["airflow.pool.queued_slots.default_pool:7|g".to_string()],
            );
        }
        let status = wait_exit(&mut logged.child, Duration::from_secs(60));
        let stderr = logged.logs();
        (status, stderr)
    };

    // Refused from the first request: the start check retries, then gives up.
    let proxy = FaultProxy::start(
        &moto.endpoint(),
        FaultPlan::only(1.0, &[Fault::AccessDenied]),
    );
    let (status, err) = run_until_exit(&proxy, false);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(err.contains("\"exit_code\":3"), "{err}");
    assert!(
        err.matches("CloudWatch check failed; retrying").count() >= 4,
        "retried before giving up: {err}"
    );
    assert!(proxy.stats().injected(Fault::AccessDenied) >= 5);

    // Allowed at start, refused once running: PutMetricData is retried, then exit 3.
    let proxy = FaultProxy::start(
        &moto.endpoint(),
        FaultPlan::only(0.0, &[Fault::AccessDenied]),
    );
    let (status, err) = run_until_exit(&proxy, true);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("CloudWatch denied access after 5 attempts"),
        "{err}"
    );
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(
        err.matches("PutMetricData failed; retrying").count() >= 4,
        "retried before giving up: {err}"
    );
}
