//! metricship in a memory cgroup limited as the scheduler task definition limits it,
//! flooded by a hostile sender. A test binary of its own, so that the flood does not
//! starve the timing-sensitive tests beside it (cargo runs test binaries one at a time).

#[path = "it/common.rs"]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use airside_testkit::{FaultPlan, FaultProxy, moto, unique_name};

/// What the scheduler task definition gives metricship (128 MiB), enforced by a memory
/// cgroup around the static binary the image ships, while a hostile sender floods it with
/// 1,000,000 distinct 200-byte names and sets with 1 KiB members: /metrics keeps
/// answering, the signal keeps reaching CloudWatch, nothing is OOM-killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_names_and_set_members_stays_inside_the_task_definition_limit() {
    use airside_testkit::MemoryCap;
    assert!(
        MemoryCap::available(),
        "memory-capped tests need root and the cgroup v1 memory controller"
    );
    let proxy = FaultProxy::start_strict_aws(&moto().endpoint(), FaultPlan::none());
    let run = unique_name("run");
    let cap = MemoryCap::for_container("scheduler", "metricship");
    // The binary the image ships: a debug build's memory says little about production.
    let mut cmd = daemon_command(
        &airside_testkit::dist_binary("metricship"),
        &proxy.endpoint(),
        &unique_name("Airflow"),
        &run,
        &["--freshness-window", "5s"],
    );
    let mut daemon = cap.spawn_daemon("metricship", &mut cmd);
    let (statsd, admin) = (logged_statsd_addr(daemon.log_path()), daemon.admin_addr());
    let pid = daemon.pid;
    wait_ready_at(admin).await;

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
    let refused = sample(
        &body,
        "metricship_series_dropped_total{reason=\"memory_budget\"}",
    )
    .unwrap_or(0.0)
        + sample(
            &body,
            "metricship_series_dropped_total{reason=\"series_cap\"}",
        )
        .unwrap_or(0.0);
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
