//! The simulator end to end: determinism, the cold-start bound, and the binary's CSV path.

use std::time::Duration;

use airside_autoscale_sim::policy::{Params, PolicyKind};
use airside_autoscale_sim::simulate;
use airside_autoscale_sim::synth::{Workload, generate};
use airside_autoscale_sim::trace::Task;

fn burst_after_idle_hour() -> Vec<Task> {
    (0..50)
        .map(|i| Task {
            queued_at_s: 3600.0 + f64::from(i) * 0.5,
            duration_s: 600.0,
            queue: "default".into(),
            pool: "default_pool".into(),
        })
        .collect()
}

#[test]
fn the_same_trace_and_seed_give_the_same_report_byte_for_byte() {
    let tasks = generate(Workload::Bursts, 1, 3);
    let p = Params::default();
    let a = serde_json::to_string(&simulate("bursts", &tasks, PolicyKind::Deficit, &p, 3)).unwrap();
    let b = serde_json::to_string(&simulate("bursts", &tasks, PolicyKind::Deficit, &p, 3)).unwrap();
    assert_eq!(a, b);
    // The seed matters (start latencies, which worker a scale-in stops).
    let c = serde_json::to_string(&simulate("bursts", &tasks, PolicyKind::Deficit, &p, 4)).unwrap();
    assert_ne!(a, c);
}

#[test]
fn after_an_idle_hour_the_first_worker_starts_within_two_alarm_periods_plus_start_latency() {
    let tasks = burst_after_idle_hour();
    for latency in [30u64, 90] {
        let p = Params {
            start_latency: (Duration::from_secs(latency), Duration::from_secs(latency)),
            ..Default::default()
        };
        let r = simulate("burst", &tasks, PolicyKind::Deficit, &p, 1);
        let bound = 2.0 * 60.0 + latency as f64;
        let cold = r
            .cold_start_max_s
            .expect("the burst comes after an idle hour");
        println!("start latency {latency} s: first task started after {cold} s (bound {bound} s)");
        assert!(cold <= bound, "{cold} s > {bound} s");
        // And not before the alarm could have fired at all.
        assert!(
            cold >= 60.0 + latency as f64,
            "{cold} s is faster than possible"
        );
        assert_eq!(r.never_started, 0);
    }
}

/// The goal of the shipped settings: with workerguard's protection (the worker task
/// definition runs it) and the module's defaults, no bundled trace loses a task to
/// scale-in, over a week and three seeds; without protection the same fast scale-in
/// does kill tasks (so the first half can fail).
#[test]
fn the_shipped_policy_with_protection_kills_no_task_on_any_bundled_trace() {
    let p = Params::default();
    assert!(p.protection, "the shipped worker task runs workerguard");
    let mut killed_without = 0;
    for workload in [
        Workload::DailyBatch,
        Workload::Bursts,
        Workload::Sensors,
        Workload::Steady,
    ] {
        for seed in 1..=3 {
            let tasks = generate(workload, 7, seed);
            let r = simulate(workload.name(), &tasks, PolicyKind::Deficit, &p, seed);
            assert_eq!(r.killed, 0, "{} seed {seed}: {r:?}", workload.name());
            assert_eq!(r.never_started, 0, "{} seed {seed}", workload.name());
            let unprotected = Params {
                protection: false,
                ..Params::default()
            };
            killed_without += simulate(
                workload.name(),
                &tasks,
                PolicyKind::Deficit,
                &unprotected,
                seed,
            )
            .killed;
        }
    }
    assert!(
        killed_without > 0,
        "without protection the fast scale-in should kill tasks, or this test proves nothing"
    );
}

/// Runs the binary with `args` (and `path` last); exit code, stdout, stderr.
fn sim(args: &[&str], path: &std::path::Path) -> (Option<i32>, Vec<u8>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airside-autoscale-sim"))
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), out.stdout, err)
}

#[test]
fn the_binary_writes_and_replays_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = sim(
        &["--workload", "sensors", "--days", "1", "--write-traces"],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{err}");
    let csv = dir.path().join("sensors.csv");
    let (code, out, err) = sim(&["--policy", "deficit", "--json", "--trace"], &csv);
    assert_eq!(code, Some(0), "{err}");
    let reports: serde_json::Value = serde_json::from_slice(&out).unwrap();
    // The same as simulating the generated trace directly.
    let direct = simulate(
        "sensors",
        &generate(Workload::Sensors, 1, 1),
        PolicyKind::Deficit,
        &Params::default(),
        1,
    );
    assert_eq!(reports[0], serde_json::to_value(direct).unwrap());
    // A broken trace is an input error: exit 2 with the row named.
    std::fs::write(&csv, "queued_at_s,duration_s,queue,pool\n1,-5,q,p\n").unwrap();
    let (code, _, err) = sim(&["--trace"], &csv);
    assert_eq!(code, Some(2));
    assert!(err.contains("row 1: duration_s"), "{err}");
}
