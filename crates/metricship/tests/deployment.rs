//! metricship against CloudWatch's real rules (the test kit's strict-AWS mode in front of
//! moto): poisoned StatsD cannot cost the autoscaling signal, and a partly silent
//! scheduler withholds what cannot be computed instead of reading it as zero.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airside_testkit::{AcceptedDatum, FaultPlan, FaultProxy, moto, unique_name};
use common::*;

const SIGNAL: [&str; 4] = [
    "QueueDepth",
    "celery.queue_depth",
    "TaskDemand",
    "DesiredWorkers",
];

/// The datums of this run (by its `Run` dimension) that CloudWatch accepted.
fn accepted(proxy: &FaultProxy, run: &str) -> Vec<AcceptedDatum> {
    proxy
        .strict_api()
        .accepted()
        .into_iter()
        .filter(|d| d.dimensions.iter().any(|(k, v)| k == "Run" && v == run))
        .collect()
}

/// Accepted datums grouped by flush (their timestamp, to the millisecond).
fn by_interval(datums: &[AcceptedDatum]) -> BTreeMap<u64, BTreeSet<String>> {
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for d in datums {
        let t = (d.timestamp.expect("metricship stamps every datum") * 1000.0).round() as u64;
        out.entry(t).or_default().insert(d.name.clone());
    }
    out
}

fn healthy_scheduler() -> Vec<String> {
    vec![
        "airflow.scheduler_heartbeat:1|c".into(),
        "airflow.pool.queued_slots.default_pool:30|g".into(),
        "airflow.pool.queued_slots.etl:12|g".into(),
        "airflow.executor.queued_tasks:20|g".into(),
        "airflow.executor.running_tasks:50|g".into(),
    ]
}

async fn start(
    proxy: &FaultProxy,
    run: &str,
) -> (Running, SocketAddr, SocketAddr, aws_sdk_cloudwatch::Client) {
    let sdk = moto().sdk_config_for(&proxy.endpoint()).await;
    let cw = aws_sdk_cloudwatch::Client::new(&sdk);
    let config = test_config(&unique_name("Airflow"), run);
    let daemon = Running::start(config, cw.clone()).await;
    daemon.wait_ready().await;
    let (statsd, admin) = (daemon.statsd, daemon.admin);
    (daemon, statsd, admin, cw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_statsd_never_costs_the_signal() {
    airside_core::telemetry::init(airside_core::config::LogFormat::Text, "warn");
    let proxy = FaultProxy::start_strict_aws(&moto().endpoint(), FaultPlan::none());
    let run = unique_name("run");
    let (daemon, statsd, admin, _cw) = start(&proxy, &run).await;

    // Allowlisted metrics (the default list), each with a valid series and poisoned ones:
    // an empty tag value, 2,000 characters, control characters, a value beyond ±2^360,
    // and counter sums that overflow to +Inf. (A literal `nan` or `inf` is refused by the
    // parser already: `metricship_lines_malformed_total`.)
    let long = "p".repeat(2000);
    let poison = vec![
        "airflow.pool.open_slots:100|g|#pool_name:default_pool".to_string(),
        // (A tag-less or empty-tagged pool gauge is ambiguous and dropped by the
        // catalogue; the heartbeat takes any tags, so it carries the empty one.)
        "airflow.scheduler_heartbeat:1|c|#k:".to_string(),
        format!("airflow.pool.open_slots:6|g|#pool_name:{long}"),
        "airflow.pool.open_slots:7|g|#pool_name:del\u{7f}pool".to_string(),
        "airflow.pool.open_slots:8|g|#pool_name:p\u{f6}ol".to_string(),
        // Control characters below 0x20 are refused by the parser itself.
        "airflow.pool.open_slots:9|g|#pool_name:tab\tpool".to_string(),
        "airflow.executor.open_slots:1e300|g".to_string(),
        "airflow.scheduler.tasks.starving:1e308|g".to_string(),
        "airflow.dag_processing.import_errors:1e308|g|#x:1".to_string(),
        "airflow.scheduler_heartbeat:1e308|c|#pool_name:overflow".to_string(),
        "airflow.scheduler_heartbeat:1e308|c|#pool_name:overflow".to_string(),
        "airflow.scheduler_heartbeat:1|c|#pool_name:valid".to_string(),
    ];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let mut packets = healthy_scheduler();
        packets.extend(poison.iter().cloned());
        send(statsd, &packets);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the last interval flush, then stop (the drain sends what is queued).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let body = scrape(admin).await;
    daemon.stop().await;

    let refused = proxy.strict_api().refused();
    assert!(
        refused.is_empty(),
        "metricship sent requests CloudWatch rejects: {:?}",
        refused.iter().map(|r| &r.message).collect::<Vec<_>>()
    );
    let datums = accepted(&proxy, &run);
    let intervals = by_interval(&datums);
    let with_data: Vec<_> = intervals
        .iter()
        .filter(|(_, names)| names.contains("airflow_pool_open_slots"))
        .collect();
    assert!(
        with_data.len() >= 4,
        "expected at least 4 flushes with data, got {intervals:?}"
    );
    for (t, names) in &with_data {
        for s in SIGNAL {
            assert!(
                names.contains(s),
                "interval {t}: {s} missing from {names:?}"
            );
        }
    }
    let value = |name: &str| {
        datums
            .iter()
            .filter(|d| d.name == name)
            .map(|d| d.value.unwrap() as i64)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(value("QueueDepth"), [42]);
    assert_eq!(value("TaskDemand"), [70]);
    assert_eq!(value("DesiredWorkers"), [5]);
    // The valid series of the poisoned metrics went out; the poisoned ones did not.
    let pool_names = |metric: &str| -> BTreeSet<String> {
        datums
            .iter()
            .filter(|d| d.name == metric)
            .flat_map(|d| d.dimensions.iter())
            .filter(|(k, _)| k == "pool_name")
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        pool_names("airflow_pool_open_slots"),
        BTreeSet::from(["default_pool".to_string()])
    );
    assert_eq!(
        pool_names("airflow_scheduler_heartbeat"),
        BTreeSet::from(["valid".to_string()])
    );
    assert!(
        !datums
            .iter()
            .any(|d| d.name == "airflow_executor_open_slots"),
        "1e300 is beyond ±2^360"
    );
    // Every drop counted by its reason.
    for reason in [
        "dimension_value_empty",
        "dimension_value_too_long",
        "dimension_value_not_ascii",
        "value",
    ] {
        let n = sample(
            &body,
            &format!("metricship_datums_invalid_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 4.0, "{reason}: {n}\n{body}");
    }
    assert!(sample(&body, "metricship_lines_malformed_total").unwrap() > 0.0);
    assert_eq!(
        sample(
            &body,
            "metricship_cloudwatch_datums_dropped_total{reason=\"rejected\"}"
        ),
        None,
        "nothing was rejected by CloudWatch"
    );
}

/// A datum CloudWatch rejects by a rule metricship does not know costs that datum only:
/// the rejected request is halved until the datum is alone, and the rest is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_rejected_for_one_datum_is_narrowed_down_to_it() {
    airside_core::telemetry::init(airside_core::config::LogFormat::Text, "warn");
    let proxy = FaultProxy::start_strict_aws(&moto().endpoint(), FaultPlan::none());
    proxy.strict_api().also_reject("airflow_pool_open_slots");
    let run = unique_name("run");
    let (daemon, statsd, admin, _cw) = start(&proxy, &run).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let mut packets = healthy_scheduler();
        packets.extend([
            "airflow.pool.open_slots.default_pool:100|g".to_string(),
            "airflow.executor.open_slots:16|g".to_string(),
            "airflow.scheduler.tasks.starving:2|g".to_string(),
        ]);
        send(statsd, &packets);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let body = scrape(admin).await;
    daemon.stop().await;
    let datums = accepted(&proxy, &run);
    let names: BTreeSet<&str> = datums.iter().map(|d| d.name.as_str()).collect();
    for name in [
        "airflow_executor_open_slots",
        "airflow_scheduler_tasks_starving",
        "airflow_pool_queued_slots",
        "QueueDepth",
        "DesiredWorkers",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(!names.contains("airflow_pool_open_slots"));
    assert!(
        !proxy.strict_api().refused().is_empty(),
        "the rule was applied"
    );
    assert!(sample(&body, "metricship_cloudwatch_batches_split_total").unwrap() >= 1.0);
    assert!(
        sample(
            &body,
            "metricship_cloudwatch_datums_dropped_total{reason=\"rejected\"}"
        )
        .unwrap()
            >= 1.0,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_executor_gauges_withhold_demand_not_queue_depth() {
    airside_core::telemetry::init(airside_core::config::LogFormat::Text, "warn");
    let proxy = FaultProxy::start_strict_aws(&moto().endpoint(), FaultPlan::none());
    let run = unique_name("run");
    let (daemon, statsd, admin, _cw) = start(&proxy, &run).await;

    // 2 s of a healthy scheduler, then 7 s in which only the heartbeat and the pool
    // gauges arrive (an Airflow `metrics_allow_list` without `executor.*`).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        send(statsd, &healthy_scheduler());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let executor_stopped = SystemTime::now();
    while started.elapsed() < Duration::from_secs(9) {
        let packets: Vec<String> = healthy_scheduler()
            .into_iter()
            .filter(|p| !p.contains("executor"))
            .collect();
        send(statsd, &packets);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let body = scrape(admin).await;
    daemon.stop().await;

    assert!(proxy.strict_api().refused().is_empty());
    let datums = accepted(&proxy, &run);
    // The freshness window is 3 s; a flush runs each second. After 3 s plus one flush
    // and a margin, demand must be withheld while QueueDepth goes on.
    let stale_from = executor_stopped
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 4.5;
    let later: Vec<&AcceptedDatum> = datums
        .iter()
        .filter(|d| d.timestamp.unwrap() > stale_from)
        .collect();
    let count = |name: &str| later.iter().filter(|d| d.name == name).count();
    assert!(
        count("QueueDepth") >= 2,
        "QueueDepth must still be published: {:?}",
        by_interval(&datums)
    );
    assert_eq!(count("celery.queue_depth"), count("QueueDepth"));
    assert_eq!(count("TaskDemand"), 0, "{:?}", by_interval(&datums));
    assert_eq!(count("DesiredWorkers"), 0, "{:?}", by_interval(&datums));
    // Before the executor stopped, all four were sent with the real values.
    assert!(
        datums
            .iter()
            .any(|d| d.name == "DesiredWorkers" && d.value == Some(5.0))
    );
    assert!(
        later
            .iter()
            .filter(|d| d.name == "QueueDepth")
            .all(|d| d.value == Some(42.0))
    );
    for input in ["executor.queued_tasks", "executor.running_tasks"] {
        assert_eq!(
            sample(
                &body,
                &format!("metricship_signal_input_missing{{input=\"{input}\"}}")
            ),
            Some(1.0),
            "{body}"
        );
    }
    assert_eq!(
        sample(
            &body,
            "metricship_signal_input_missing{input=\"pool.queued_slots\"}"
        ),
        Some(0.0)
    );
    assert!(body.contains("metricship_queue_depth 42"), "{body}");
    assert!(!body.contains("metricship_desired_workers "), "{body}");
}

/// What the scheduler task definition gives metricship (128 MiB), enforced by a memory
/// cgroup around the static binary the image ships, while a hostile sender floods it with
/// 1,000,000 distinct 200-byte names and sets with 1 KiB members: /metrics keeps
/// answering, the signal keeps reaching CloudWatch, nothing is OOM-killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_names_and_set_members_stays_inside_the_task_definition_limit() {
    use airside_testkit::{MemoryCap, Moto, free_addr};
    use std::process::Command;
    assert!(
        MemoryCap::available(),
        "memory-capped tests need root and the cgroup v1 memory controller"
    );
    let proxy = FaultProxy::start_strict_aws(&moto().endpoint(), FaultPlan::none());
    let run = unique_name("run");
    let cap = MemoryCap::for_container("scheduler", "metricship");
    let statsd = free_udp_addr();
    let admin = free_addr();
    let mut cmd = Command::new(airside_testkit::dist_binary("metricship"));
    cmd.args([
        "--statsd-addr",
        &statsd.to_string(),
        "--admin-addr",
        &admin.to_string(),
        "--namespace",
        &unique_name("Airflow"),
        "--flush-interval",
        "1s",
        "--freshness-window",
        "5s",
        "--dimension",
        &format!("Run={run}"),
    ])
    .envs(Moto::env_for(&proxy.endpoint()))
    .env("METRICSHIP_LOG_FORMAT", "json");
    let mut daemon = cap.spawn_daemon("metricship", &mut cmd);
    let pid = daemon.pid;
    eventually("readiness", Duration::from_secs(20), || async {
        let (status, _) = airside_core::healthcheck::get(admin, "/readyz")
            .await
            .ok()?;
        (status == 200).then_some(())
    })
    .await;

    // The flood, from its own thread, paced so that the kernel buffer keeps up: 50 sets
    // (created first, so that the names cannot crowd them out) whose 1 KiB members could
    // take 500 MB, interleaved with 1,000,000 distinct 200-byte names.
    let flood = std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let filler = "x".repeat(180);
        let member = "m".repeat(1010);
        for k in 0..50 {
            let _ = socket.send_to(format!("airflow.users.s{k}:first|s").as_bytes(), statsd);
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut packet = String::with_capacity(9000);
        let mut sets = String::with_capacity(9000);
        for i in 0..1_000_000u32 {
            // 200 bytes of name, all distinct.
            packet.push_str(&format!("airflow.flood.{filler}.{i:05}:1|c\n"));
            if i % 4 == 0 {
                sets.push_str(&format!("airflow.users.s{}:{member}{i:07}|s\n", i % 50));
            }
            for p in [&mut packet, &mut sets] {
                if p.len() > 7000 {
                    let _ = socket.send_to(p.as_bytes(), statsd);
                    p.clear();
                }
            }
            if i % 4000 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    });
    let mut scrapes = 0;
    while !flood.is_finished() {
        send(statsd, &healthy_scheduler());
        let (status, _) = airside_core::healthcheck::get(admin, "/readyz")
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
        scrapes += 1;
        if scrapes % 8 == 0 {
            let body = scrape(admin).await;
            assert!(
                body.contains("metricship_state_bytes_limit"),
                "{}",
                daemon.logs()
            );
        }
    }
    flood.join().unwrap();
    let flood_done = SystemTime::now();
    // The signal still goes out after the flood, and /metrics answers in full.
    for _ in 0..12 {
        send(statsd, &healthy_scheduler());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let body = scrape(admin).await;
    let peak_rss = MemoryCap::peak_rss(pid).expect("VmHWM of a running process");
    let report = cap.assert_no_oom("metricship");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "metricship exited under the memory limit: {report:?}\n{}",
        daemon.logs()
    );
    assert!(
        body.contains("metricship_queue_depth 42"),
        "{}",
        daemon.logs()
    );
    let state = |part: &str| {
        sample(&body, &format!("metricship_state_bytes{{part=\"{part}\"}}")).unwrap_or(0.0)
    };
    let limit = sample(&body, "metricship_state_bytes_limit").unwrap();
    let total = state("cache") + state("series") + state("sets");
    assert!(total <= limit, "state {total} over its limit {limit}");
    let refused = sample(&body, "metricship_series_refused_budget_total").unwrap_or(0.0)
        + sample(&body, "metricship_series_dropped_total").unwrap_or(0.0);
    assert!(refused > 0.0, "the flood must have met a cap\n{body:.2000}");
    assert!(
        sample(&body, "metricship_set_members_refused_total").unwrap_or(0.0) > 0.0,
        "250 MB of set members cannot fit"
    );
    let after = flood_done.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let signal_after = accepted(&proxy, &run)
        .into_iter()
        .filter(|d| d.name == "DesiredWorkers" && d.timestamp.unwrap() > after)
        .count();
    assert!(signal_after >= 1, "no DesiredWorkers after the flood");
    println!(
        "flood of 1,000,000 distinct 200-byte names and 250,000 1-KiB members of 50 sets under {} MiB: peak RSS {:.1} MiB, cgroup peak {:.1} MiB, state {:.1} MiB of {:.1} MiB, live series {}",
        report.limit >> 20,
        peak_rss as f64 / 1048576.0,
        report.peak as f64 / 1048576.0,
        total / 1048576.0,
        limit / 1048576.0,
        sample(&body, "metricship_live_series").unwrap_or(0.0)
    );
    daemon.child.sigterm();
    daemon
        .child
        .wait_exit(Duration::from_secs(30))
        .expect("stops");
}

/// A free loopback UDP address for the daemon's StatsD socket.
fn free_udp_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}
