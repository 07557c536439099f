//! Failures, each as documented: 500s and dropped connections injected by the fault
//! proxy in front of the stand-in, a 200 with a `failure` answer, and the two forms of
//! access denied. After the failures stop, the protection is right within one check
//! plus the retry backoff.

use std::time::Duration;

use airside_testkit::{AgentMode, EcsAgent, Fault, FaultPlan, FaultProxy};

use crate::*;

/// The bound after the last failure: one check, the longest retry delay, the margin.
fn bound() -> Duration {
    CHECK + RETRY_MAX + MARGIN
}

fn through(proxy: &FaultProxy, agent: &EcsAgent) -> String {
    let uri = agent.agent_uri();
    let path = &uri[uri.find("/api/").unwrap()..];
    format!("{}{path}", proxy.endpoint())
}

/// Faults while a task starts and while it ends: 500s on the way in, dropped connections
/// (before and after the agent saw the request) on the way out.
#[test]
fn server_errors_and_dropped_connections_are_retried_within_the_bound() {
    let agent = EcsAgent::start();
    let proxy = FaultProxy::start(
        &agent.agent_uri(),
        FaultPlan::only(0.0, &[Fault::InternalError]),
    );
    let proc = FakeProc::new();
    let guard = Guard::start(&through(&proxy, &agent), proc.path(), &[]);
    guard.wait_ready();

    proxy.set_rate(1.0);
    let started = agent.elapsed();
    proc.start_task(100, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!agent.protected_now(), "every call failed so far");
    assert!(proxy.stats().injected(Fault::InternalError) >= 2);
    let (status, body) = guard.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("transient"), "{body}");
    proxy.set_rate(0.0);
    let healed_in = agent.elapsed();
    wait_for(bound(), "protected after the 500s stopped", || {
        agent.protected_now()
    });
    assert!(
        guard
            .metric("workerguard_errors_total{class=\"transient\"}")
            .unwrap()
            >= 2.0,
        "{}",
        guard.get("/metrics").1
    );

    let drops = FaultProxy::start(
        &agent.agent_uri(),
        FaultPlan::only(0.0, &[Fault::DropBeforeForward, Fault::DropAfterForward]),
    );
    drop(guard);
    // A new daemon through the dropping proxy: it reads the state the last one left.
    let guard = Guard::start(&through(&drops, &agent), proc.path(), &[]);
    guard.wait_ready();
    drops.set_rate(1.0);
    let ended = agent.elapsed();
    proc.end(100);
    std::thread::sleep(GRACE + Duration::from_secs(2));
    let dropped = drops.stats().injected(Fault::DropBeforeForward)
        + drops.stats().injected(Fault::DropAfterForward);
    assert!(dropped >= 2, "{dropped} connections dropped");
    drops.set_rate(0.0);
    let healed_out = agent.elapsed();
    wait_for(bound(), "unprotected after the drops stopped", || {
        !agent.protected_now()
    });
    assert_follows(
        &agent,
        &[(started, ended + GRACE)],
        CHECK + MARGIN,
        Some((started, healed_in + bound())),
        healed_out,
    );
    // Outside the fault windows the state followed the tasks; after the last one, it is off.
    let off_at = agent.timeline().last().unwrap().0;
    assert!(off_at <= healed_out + bound(), "{off_at:?}");
    assert!(off_at >= ended + GRACE, "not before the grace: {off_at:?}");
}

/// HTTP 200 with a `failure` body is a failure: counted by its reason, not ready, retried
/// until ECS accepts.
#[test]
fn a_failure_answer_is_retried_and_counted_by_reason() {
    let agent = EcsAgent::start();
    let proc = FakeProc::new();
    let guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
    guard.wait_ready();
    agent.set_mode(AgentMode::Failure("TASK_NOT_VALID".into()));
    proc.start_task(100, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!agent.protected_now());
    let (status, body) = guard.get("/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("TASK_NOT_VALID"), "{body}");
    let failures = guard
        .metric("workerguard_protection_failures_total{reason=\"TASK_NOT_VALID\"}")
        .unwrap();
    assert!(failures >= 2.0, "{failures}");
    agent.set_mode(AgentMode::Normal);
    wait_for(bound(), "protected once ECS accepts", || {
        agent.protected_now()
    });
    guard.wait_ready();
    assert_eq!(
        guard.metric("workerguard_protection_calls_sent_total{call=\"protect\"}"),
        Some(1.0)
    );
}

/// No task-role credentials (403) and a role without the permission (ECS's 400
/// AccessDeniedException): retried, then exit 3 with what to fix, at start already.
#[test]
fn access_denied_in_either_form_exits_3_after_retries() {
    for mode in [AgentMode::NoCredentials, AgentMode::RoleDenied] {
        let agent = EcsAgent::start();
        agent.set_mode(mode.clone());
        let proc = FakeProc::new();
        let mut guard = Guard::start(&agent.agent_uri(), proc.path(), &[]);
        let status = guard
            .child
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{mode:?}: still running: {}", guard.logs()));
        assert_eq!(status.code(), Some(3), "{mode:?}: {}", guard.logs());
        let logs = guard.logs();
        assert!(logs.contains("ecs:UpdateTaskProtection"), "{logs}");
        let calls = agent.requests();
        assert_eq!(
            calls.len(),
            5,
            "{mode:?}: retried up to the shared limit: {calls:#?}"
        );
        let expected = if mode == AgentMode::NoCredentials {
            403
        } else {
            400
        };
        assert!(calls.iter().all(|c| c.status == expected));
    }
}

/// An agent that does not serve the endpoint (404): exit 2, naming the platform version.
#[test]
fn an_agent_without_the_endpoint_exits_2() {
    let agent = EcsAgent::start();
    let uri = agent.agent_uri().replace("/api/", "/v4/");
    let proc = FakeProc::new();
    let mut guard = Guard::start(&uri, proc.path(), &[]);
    let status = guard
        .child
        .wait_exit(Duration::from_secs(10))
        .expect("exits");
    assert_eq!(status.code(), Some(2), "{}", guard.logs());
    assert!(guard.logs().contains("platform 1.4.0"), "{}", guard.logs());
    assert!(agent.requests()[0].status == 404);
}
