//! Fault injection on the CloudWatch path: throttling, 5xx and dropped connections
//! (FaultProxy between metricship and moto), plus a full outage. No flush that fits
//! in the backlog may be lost.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use airside_testkit::{FaultPlan, FaultProxy, moto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_flush_is_lost_through_faults_and_an_outage() {
    let moto = moto();
    let proxy = FaultProxy::start(&moto.endpoint(), FaultPlan::all(0.35));
    // The daemon goes through the proxy; the verifying client goes straight to moto.
    let (cw, ns, run) = verifier(moto).await;
    let daemon = Running::start(
        &proxy.endpoint(),
        &ns,
        &run,
        &["--cloudwatch-allow", "airflow_executor_open_slots"],
    )
    .await;
    let (statsd, admin) = (daemon.statsd, daemon.admin);

    // One distinct gauge value per flush interval: each flush is one identifiable datum.
    let mut sent = BTreeSet::new();
    for i in 1..=16u32 {
        if i == 6 {
            // Every request fails for several flushes (a fifth of them after reaching
            // moto: DropAfterForward), so batches pile up in the backlog.
            proxy.set_rate(1.0);
        }
        if i == 11 {
            proxy.set_rate(0.35);
        }
        set_gauge_and_await_flush(statsd, admin, i * 10).await;
        sent.insert(i * 10);
    }

    let got: BTreeSet<u32> =
        eventually("every flush in CloudWatch", Duration::from_secs(60), || {
            let (cw, ns, run, sent) = (cw.clone(), ns.clone(), run.clone(), sent.clone());
            async move {
                // Duplicates (a request that took effect but whose answer was dropped)
                // add no new value.
                let got = open_slots_values(&cw, &ns, &run).await;
                sent.is_subset(&got).then_some(got)
            }
        })
        .await;
    assert_eq!(got, sent);

    let injected = proxy.stats().injected_total();
    assert!(injected > 0, "the proxy injected no fault");
    let body = scrape(admin).await;
    assert!(
        sample(
            &body,
            "metricship_cloudwatch_errors_total{class=\"throttled\"}"
        )
        .unwrap_or(0.0)
            + sample(
                &body,
                "metricship_cloudwatch_errors_total{class=\"transient\"}"
            )
            .unwrap_or(0.0)
            > 0.0,
        "no error was seen by the publisher: {body}"
    );
    assert_eq!(
        sample(
            &body,
            "metricship_cloudwatch_datums_dropped_total{reason=\"backlog_full\"}"
        ),
        None,
        "nothing may be dropped while the backlog has room"
    );

    daemon.stop().await;
}
