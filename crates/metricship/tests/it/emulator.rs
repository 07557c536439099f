//! An Airflow-shaped StatsD stream over real UDP into metricship, read back from the
//! emulator's CloudWatch with GetMetricData (and from /metrics).

use std::time::Duration;

use crate::common::*;
use airside_testkit::moto;

/// What the Airflow 3 scheduler sends (legacy names on, plain StatsD): the pool pair,
/// both executor name forms, timers, counters with sample rates, and noise.
fn airflow_stream() -> Vec<String> {
    let mut p = Vec::new();
    for _ in 0..5 {
        p.push("airflow.scheduler_heartbeat:1|c".to_string());
    }
    for (pool, queued) in [("default_pool", 30), ("etl", 12)] {
        p.push(format!("airflow.pool.queued_slots.{pool}:{queued}|g"));
        // The tag-less Airflow 3 name, once per pool: last one (12) must not win anywhere.
        p.push(format!("airflow.pool.queued_slots:{queued}|g"));
        p.push(format!("airflow.pool.open_slots.{pool}:100|g"));
    }
    for name in ["queued_tasks", "running_tasks"] {
        let v = if name == "queued_tasks" { 20 } else { 50 };
        p.push(format!("airflow.executor.{name}:{v}|g"));
        p.push(format!("airflow.executor.{name}.CeleryExecutor:{v}|g"));
    }
    // Task durations 1..=100 ms: sum 5050, max 100, p50 50, p90 90.
    for v in 1..=100 {
        p.push(format!("airflow.dag.etl_daily.extract.duration:{v}|ms"));
    }
    // 40 successes plus 10 sampled at 0.5: a sum of 60.
    for _ in 0..40 {
        p.push("airflow.ti_successes:1|c".to_string());
    }
    for _ in 0..10 {
        p.push("airflow.ti_successes:1|c|@0.5".to_string());
    }
    // Not on the allowlist.
    p.push("airflow.dagbag_size:7|g".to_string());
    p.push("airflow.ti.finish.etl_daily.extract.success:1|c".to_string());
    // Noise that must be counted and skipped.
    p.push("garbage without a value".to_string());
    p.push("airflow.x:1|zz".to_string());
    p.push("airflow.y:nan|g".to_string());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_stream_reaches_cloudwatch_and_the_signal_is_withheld_when_silent() {
    let moto = moto();
    let (cw, ns, run) = verifier(moto).await;
    let mut allow = Vec::new();
    for name in metricship::config::DEFAULT_ALLOWLIST
        .iter()
        .chain(&["airflow_task_duration_seconds", "airflow_ti_successes"])
    {
        allow.extend(["--cloudwatch-allow", name]);
    }
    let daemon = Running::start(&moto.endpoint(), &ns, &run, &allow).await;
    let (statsd, admin) = (daemon.statsd, daemon.admin);

    // Ready once the socket is bound and CloudWatch answered ListMetrics.
    daemon.wait_ready().await;

    send(statsd, &airflow_stream());

    let run_dim = [("Run", run.as_str())];
    let q = eventually("QueueDepth in CloudWatch", Duration::from_secs(20), || {
        let (cw, ns) = (cw.clone(), ns.clone());
        async move {
            let v = stat(&cw, &ns, "QueueDepth", &run_dim, "Maximum", 3600).await;
            v.first().copied()
        }
    })
    .await;
    // 30 + 12 over the two pools; the tag-less pool.queued_slots is not a third pool.
    assert_eq!(q, 42.0);
    for (name, want) in [
        ("QueueDepth", 42.0),
        ("celery.queue_depth", 42.0),
        // Executor plain and suffixed forms are the same tasks: 20 + 50, not 140.
        ("TaskDemand", 70.0),
        // ceil(70 / 16)
        ("DesiredWorkers", 5.0),
    ] {
        for s in ["Maximum", "Minimum"] {
            assert_eq!(
                stat(&cw, &ns, name, &run_dim, s, 3600).await,
                vec![want],
                "{name} {s}"
            );
        }
    }

    // In the order sent (labels sorted, then --dimension): moto compares the
    // dimension lists of three or more in order.
    let timer_dims = [
        ("dag_id", "etl_daily"),
        ("task_id", "extract"),
        ("Run", run.as_str()),
    ];
    // The stream may straddle two flushes: wait until all of it has landed.
    eventually(
        "every timer sample in CloudWatch",
        Duration::from_secs(10),
        || {
            let (cw, ns) = (cw.clone(), ns.clone());
            async move {
                let n = stat(
                    &cw,
                    &ns,
                    "airflow_task_duration_seconds",
                    &timer_dims,
                    "SampleCount",
                    3600,
                )
                .await;
                let c = stat(
                    &cw,
                    &ns,
                    "airflow_ti_successes",
                    &run_dim,
                    "SampleCount",
                    3600,
                )
                .await;
                (n == vec![100.0] && !c.is_empty()).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (s, want) in [
        ("SampleCount", 100.0),
        ("Sum", 5050.0),
        ("Maximum", 100.0),
        ("Minimum", 1.0),
        ("p50", 50.0),
        ("p90", 90.0),
        ("p99", 99.0),
    ] {
        assert_eq!(
            stat(
                &cw,
                &ns,
                "airflow_task_duration_seconds",
                &timer_dims,
                s,
                3600
            )
            .await,
            vec![want],
            "task duration {s}"
        );
    }
    assert_eq!(
        stat(&cw, &ns, "airflow_ti_successes", &run_dim, "Sum", 3600).await,
        vec![60.0]
    );
    assert_eq!(
        stat(
            &cw,
            &ns,
            "airflow_pool_queued_slots",
            &[("pool_name", "etl"), ("Run", run.as_str())],
            "Maximum",
            3600
        )
        .await,
        vec![12.0]
    );

    // Names outside the allowlist never reach CloudWatch.
    let listed = cw.list_metrics().namespace(&ns).send().await.unwrap();
    let names: std::collections::BTreeSet<_> = listed
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name().map(str::to_string))
        .collect();
    assert!(names.contains("QueueDepth"), "{names:?}");
    for outside in ["airflow_dagbag_size", "airflow_ti_finish"] {
        assert!(!names.contains(outside), "{outside} leaked: {names:?}");
    }

    // /metrics has everything, cumulative, with the signal while the source is fresh.
    let body = scrape(admin).await;
    assert_eq!(
        sample(
            &body,
            "airflow_pool_queued_slots{pool_name=\"default_pool\"}"
        ),
        Some(30.0),
        "{body}"
    );
    assert_eq!(sample(&body, "airflow_dagbag_size"), Some(7.0));
    assert_eq!(sample(&body, "airflow_ti_successes"), Some(60.0));
    assert_eq!(
        sample(
            &body,
            "airflow_task_duration_seconds_count{dag_id=\"etl_daily\",task_id=\"extract\"}"
        ),
        Some(100.0)
    );
    assert_eq!(sample(&body, "metricship_lines_malformed_total"), Some(3.0));
    assert_eq!(
        sample(
            &body,
            "metricship_lines_dropped_total{reason=\"ambiguous\"}"
        ),
        Some(2.0)
    );
    assert!(sample(&body, "metricship_packets_received_total").unwrap() >= 170.0);
    assert!(sample(&body, "metricship_cloudwatch_datums_sent_total").unwrap() > 0.0);
    assert!(
        body.contains("metricship_kernel_receive_drops_total"),
        "{body}"
    );

    // The scheduler goes silent: after the freshness window the signal is withheld,
    // so no new QueueDepth datapoints appear and /metrics drops the signal gauges.
    let count_now = || {
        let (cw, ns) = (cw.clone(), ns.clone());
        async move {
            stat(&cw, &ns, "QueueDepth", &run_dim, "SampleCount", 3600)
                .await
                .first()
                .copied()
                .unwrap_or(0.0)
        }
    };
    eventually("the signal withheld", Duration::from_secs(15), || async {
        let body = scrape(admin).await;
        (sample(&body, "metricship_queue_depth").is_none()
            && sample(&body, "metricship_source_age_seconds")? > 3.0)
            .then_some(())
    })
    .await;
    // Let the flush in flight land, then prove no more datapoints arrive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = count_now().await;
    assert!(before >= 1.0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        count_now().await,
        before,
        "QueueDepth kept being sent while the source was silent"
    );
    let body = scrape(admin).await;
    assert!(
        sample(
            &body,
            "metricship_signal_withheld_total{metric=\"QueueDepth\"}"
        )
        .unwrap()
            >= 2.0
    );

    // The scheduler comes back: the signal resumes.
    send(
        statsd,
        &["airflow.pool.queued_slots.default_pool:3|g".to_string()],
    );
    eventually(
        "the signal resumed",
        Duration::from_secs(15),
        || async move { (count_now().await > before).then_some(()) },
    )
    .await;

    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_last_interval() {
    let moto = moto();
    let (cw, ns, run) = verifier(moto).await;
    // Flushes far apart (longer than the test): only the shutdown flush can send this
    // interval.
    let daemon = Running::start(
        &moto.endpoint(),
        &ns,
        &run,
        &[
            "--flush-interval",
            "3600s",
            "--cloudwatch-allow",
            "airflow_ti_successes",
        ],
    )
    .await;
    let (statsd, admin) = (daemon.statsd, daemon.admin);
    let lines: Vec<String> = (0..25)
        .map(|_| "airflow.ti_successes:2|c".to_string())
        .collect();
    send(statsd, &lines);
    eventually("lines parsed", Duration::from_secs(5), || async {
        let body = scrape(admin).await;
        (sample(&body, "airflow_ti_successes")? == 50.0).then_some(())
    })
    .await;
    daemon.stop().await;
    assert_eq!(
        stat(
            &cw,
            &ns,
            "airflow_ti_successes",
            &[("Run", run.as_str())],
            "Sum",
            3600
        )
        .await,
        vec![50.0]
    );
}
