//! The bounded backlog: while CloudWatch is down, a full backlog drops the oldest
//! batches (and counts them) and keeps the newest.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use airside_testkit::{Fault, FaultPlan, FaultProxy, moto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_drops_the_oldest_and_counts_them() {
    let moto = moto();
    // A true outage: nothing reaches moto (no DropAfterForward, which lets requests through).
    let proxy = FaultProxy::start(
        &moto.endpoint(),
        FaultPlan::only(
            0.0,
            &[
                Fault::InternalError,
                Fault::SlowDown,
                Fault::Throttle,
                Fault::DropBeforeForward,
            ],
        ),
    );
    let (cw, ns, run) = verifier(moto).await;
    let daemon = Running::start(
        &proxy.endpoint(),
        &ns,
        &run,
        &[
            "--cloudwatch-allow",
            "airflow_executor_open_slots",
            "--backlog-datums",
            "3",
        ],
    )
    .await;
    let (statsd, admin) = (daemon.statsd, daemon.admin);
    daemon.wait_ready().await;
    proxy.set_rate(1.0);
    for i in 1..=6u32 {
        set_gauge_and_await_flush(statsd, admin, i).await;
    }
    proxy.set_rate(0.0);
    let got: BTreeSet<u32> = eventually(
        "the newest flushes in CloudWatch",
        Duration::from_secs(60),
        || {
            let (cw, ns, run) = (cw.clone(), ns.clone(), run.clone());
            async move {
                let got = open_slots_values(&cw, &ns, &run).await;
                [4, 5, 6].iter().all(|v| got.contains(v)).then_some(got)
            }
        },
    )
    .await;
    // The oldest went when the backlog (3 datums) overflowed; at most one of them can
    // have been in flight when CloudWatch came back (that one is delivered, not lost).
    let old_delivered = [1, 2, 3].iter().filter(|v| got.contains(v)).count();
    assert!(old_delivered <= 1, "{got:?}");
    let body = scrape(admin).await;
    assert!(
        sample(
            &body,
            "metricship_cloudwatch_datums_dropped_total{reason=\"backlog_full\"}"
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{body}"
    );
    daemon.stop().await;
}
