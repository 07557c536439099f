//! metricship against CloudWatch's real rules (the test kit's strict-AWS mode in front of
//! moto): poisoned StatsD cannot cost the autoscaling signal, and a partly silent
//! scheduler withholds what cannot be computed instead of reading it as zero.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use airside_testkit::{AcceptedDatum, FaultPlan, FaultProxy, moto, unique_name};

const SIGNAL: [&str; 4] = [
    "QueueDepth",
    "celery.queue_depth",
    "TaskDemand",
    "DesiredWorkers",
];

/// Accepted datums grouped by flush (their timestamp, to the millisecond).
fn by_interval(datums: &[AcceptedDatum]) -> BTreeMap<u64, BTreeSet<String>> {
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for d in datums {
        let t = (d.timestamp.expect("metricship stamps every datum") * 1000.0).round() as u64;
        out.entry(t).or_default().insert(d.name.clone());
    }
    out
}

async fn start(proxy: &FaultProxy, run: &str) -> (Running, SocketAddr, SocketAddr) {
    let daemon = Running::start(&proxy.endpoint(), &unique_name("Airflow"), run, &[]).await;
    let (statsd, admin) = (daemon.statsd, daemon.admin);
    daemon.wait_ready().await;
    (daemon, statsd, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_statsd_never_costs_the_signal() {
    airside_core::telemetry::init(airside_core::config::LogFormat::Text, "warn");
    let proxy = FaultProxy::start_strict_aws(&moto().endpoint(), FaultPlan::none());
    let run = unique_name("run");
    let (daemon, statsd, admin) = start(&proxy, &run).await;

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
    let (daemon, statsd, admin) = start(&proxy, &run).await;
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
    let (daemon, statsd, admin) = start(&proxy, &run).await;

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
