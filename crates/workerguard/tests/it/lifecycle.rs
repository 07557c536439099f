//! Protection follows the tasks: on within a check, renewed through a long run, off after
//! the idle grace and not before; restarts, SIGTERM and the start outside ECS.

use std::time::{Duration, Instant};

use airside_testkit::EcsAgent;

use crate::*;

/// A task runs for 10 stand-in minutes (10 s) under 2-minute protections (2 s): renewed
/// about every second, never lapsing; on within one check of the start, off one grace
/// after the end and not before.
#[test]
fn a_long_task_is_protected_renewed_and_released_after_the_grace() {
    let agent = EcsAgent::start_with_minute(Duration::from_secs(1));
    let proc = FakeProc::new();
    let guard = Guard::start(
        &agent.agent_uri(),
        proc.path(),
        &["--protection-minutes", "2"],
    );
    guard.wait_ready();
    std::thread::sleep(Duration::from_millis(500));

    let started = agent.elapsed();
    proc.start_task(100, 1);
    wait_for(
        Duration::from_secs(5),
        "protected after the task started",
        || agent.protected_now(),
    );
    assert_eq!(guard.metric("workerguard_running_tasks"), Some(1.0));
    assert_eq!(guard.metric("workerguard_protected"), Some(1.0));
    std::thread::sleep(Duration::from_secs(10));
    let ended = agent.elapsed();
    proc.end(100);
    std::thread::sleep(GRACE + Duration::from_secs(1));
    assert!(!agent.protected_now(), "{}", guard.logs());
    let until = agent.elapsed();

    assert_follows(
        &agent,
        &[(started, ended + GRACE)],
        CHECK + MARGIN,
        None,
        until,
    );
    let timeline = agent.timeline();
    assert_eq!(timeline.len(), 2, "one protection, no lapse: {timeline:?}");
    let requests = agent.requests();
    assert_eq!(requests[0].method, "GET", "the state is read first");
    let puts: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    let renewals = puts
        .iter()
        .filter(|r| {
            body(&r.body) == serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": 2})
        })
        .count();
    // The first call, then a renewal per second (half of the 2 s the stand-in grants)
    // through the 10 s run and the 3 s grace after it: 14.
    assert!(
        (12..=15).contains(&renewals),
        "{renewals} protect calls: {puts:#?}"
    );
    assert_eq!(
        body(&puts.last().unwrap().body),
        serde_json::json!({"ProtectionEnabled": false})
    );
    assert!(requests.iter().all(|r| r.status == 200), "{requests:#?}");
    let logs = guard.logs();
    assert!(logs.contains(&task_id(1)), "the log names the task: {logs}");
    assert!(logs.contains("task protected from scale-in"));
    assert!(logs.contains("task no longer protected: idle"));
    let protected_s = guard.metric("workerguard_protected_seconds_total").unwrap();
    assert!(
        (12.0..=15.0).contains(&protected_s),
        "{protected_s} s protected"
    );
}

/// Two overlapping tasks: protection stays on until both have ended (and the grace).
#[test]
fn overlapping_tasks_keep_protection_until_the_last_ends() {
    let agent = EcsAgent::start();
    let proc = FakeProc::new();
    let guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
    guard.wait_ready();

    let first = agent.elapsed();
    proc.start_task(100, 1);
    std::thread::sleep(Duration::from_secs(1));
    proc.start_task(200, 2);
    wait_for(Duration::from_secs(2), "two tasks seen", || {
        guard.metric("workerguard_running_tasks") == Some(2.0)
    });
    std::thread::sleep(Duration::from_secs(1));
    proc.end(100);
    // The first ended, the second runs: still protected well past the first's grace.
    std::thread::sleep(GRACE + Duration::from_secs(1));
    assert!(agent.protected_now());
    let last = agent.elapsed();
    proc.end(200);
    std::thread::sleep(GRACE + Duration::from_secs(1));
    assert!(!agent.protected_now());
    assert_follows(
        &agent,
        &[(first, last + GRACE)],
        CHECK + MARGIN,
        None,
        agent.elapsed(),
    );
    assert_eq!(agent.timeline().len(), 2);
    drop(guard);
}

/// A task that ends and another that starts within the grace: one protection throughout.
#[test]
fn a_task_within_the_grace_keeps_the_same_protection() {
    let agent = EcsAgent::start();
    let proc = FakeProc::new();
    let guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
    guard.wait_ready();
    let first = agent.elapsed();
    proc.start_task(100, 1);
    std::thread::sleep(Duration::from_secs(1));
    proc.end(100);
    std::thread::sleep(GRACE / 2);
    proc.start_task(101, 2);
    std::thread::sleep(Duration::from_secs(1));
    let last = agent.elapsed();
    proc.end(101);
    std::thread::sleep(GRACE + Duration::from_secs(1));
    assert_follows(
        &agent,
        &[(first, last + GRACE)],
        CHECK + MARGIN,
        None,
        agent.elapsed(),
    );
    assert_eq!(agent.timeline().len(), 2, "{:?}", agent.timeline());
    drop(guard);
}

/// A workerguard that starts and finds the task protected (its predecessor's doing) with
/// no task running clears it one grace after its start; and a worker's other processes
/// (the LocalExecutor's idle pool) do not count.
#[test]
fn a_protection_left_by_an_earlier_life_is_cleared_after_the_grace() {
    let agent = EcsAgent::start();
    agent.set_protected(60);
    let proc = FakeProc::new();
    proc.start(7, "airflow worker -- LocalExecutor: <idle>\0");
    let t0 = agent.elapsed();
    let guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
    guard.wait_ready();
    assert!(agent.protected_now());
    wait_for(GRACE + Duration::from_secs(3), "unprotected", || {
        !agent.protected_now()
    });
    let off = agent.timeline().last().unwrap().0;
    assert!(
        off >= t0 + GRACE,
        "cleared at {off:?}, before the grace from {t0:?}"
    );
    assert_eq!(guard.metric("workerguard_running_tasks"), Some(0.0));
}

/// SIGTERM while protected: workerguard exits 0 at once and leaves protection on (the
/// task is stopping; the running tasks are Celery's warm shutdown's to finish).
#[test]
fn sigterm_leaves_protection_as_it_is() {
    let agent = EcsAgent::start();
    let proc = FakeProc::new();
    let mut guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
    proc.start_task(100, 1);
    wait_for(Duration::from_secs(5), "protected", || {
        agent.protected_now()
    });
    let requests = agent.requests().len();
    let t = Instant::now();
    guard.child.sigterm();
    let status = guard
        .child
        .wait_exit(Duration::from_secs(5))
        .expect("exits within its 5 s drain bound");
    assert!(status.success(), "{status}: {}", guard.logs());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    proc.end(100);
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.protected_now());
    assert_eq!(agent.requests().len(), requests, "no call after SIGTERM");
    assert!(guard.logs().contains("protection left as it is"));
}

/// Outside ECS: exit 2, saying that ECS_AGENT_URI is missing and why.
#[test]
fn outside_ecs_it_exits_2_and_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workerguard"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ECS_AGENT_URI is not set"), "{stderr}");
}

/// The healthcheck subcommand answers from /readyz: ready once the agent answered.
#[test]
fn healthcheck_follows_readiness() {
    let agent = EcsAgent::start();
    let proc = FakeProc::new();
    let guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
    guard.wait_ready();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_workerguard"))
        .env_clear()
        .args(["healthcheck", "--admin-addr", &guard.admin.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (_, body) = guard.get("/readyz");
    assert!(body.contains("running tasks: 0"), "{body}");
}

fn body(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}
