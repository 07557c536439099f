//! workerguard's telemetry, in one place: every name it exports on `/metrics` (the crate
//! README's metrics table lists exactly [`ALL`], checked by the contract test below) and
//! one function per notable event, which logs it and counts it, as vector's
//! `internal_events` do. No other module calls `metrics::` (the contract test checks).

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Gauge: Airflow task instances running in the worker task now.
pub const RUNNING_TASKS: &str = "workerguard_running_tasks";
/// Gauge: 1 while the agent last confirmed the task protected, 0 otherwise.
pub const PROTECTED: &str = "workerguard_protected";
/// Counter: seconds the task was protected (as last confirmed by the agent).
pub const PROTECTED_SECONDS: &str = "workerguard_protected_seconds_total";
/// Counter: protection calls the agent carried out (labels: `call` = `protect`, `unprotect`, `read`).
pub const CALLS_SENT: &str = "workerguard_protection_calls_sent_total";
/// Counter: calls ECS refused with a `failure` answer (labels: `reason`, ECS's failure reason such as `TASK_NOT_VALID`).
pub const CALL_FAILURES: &str = "workerguard_protection_failures_total";
/// Counter: calls that got no answer or an error answer, by class (labels: `class` = `transient`, `throttled`, `access_denied`, `not_found`, `invalid`).
pub const ERRORS: &str = "workerguard_errors_total";
/// Counter: process-table scans that failed (the last known tasks are kept meanwhile).
pub const SCAN_ERRORS: &str = "workerguard_scan_errors_total";
/// Gauge: Unix time of the last call the agent carried out.
pub const LAST_SUCCESS: &str = "workerguard_last_success_timestamp_seconds";

/// Every name above, for the contract test.
pub const ALL: &[&str] = &[
    RUNNING_TASKS,
    PROTECTED,
    PROTECTED_SECONDS,
    CALLS_SENT,
    CALL_FAILURES,
    ERRORS,
    SCAN_ERRORS,
    LAST_SUCCESS,
];

/// No renames in progress.
pub const DEPRECATED: &[(&str, &str)] = &[];

/// Registers every series at start, so that a scrape before the first event shows zeros.
pub fn started(agent: &str, check_interval: Duration, idle_grace: Duration, minutes: u32) {
    metrics::gauge!(RUNNING_TASKS).set(0.0);
    metrics::gauge!(PROTECTED).set(0.0);
    metrics::counter!(PROTECTED_SECONDS).absolute(0);
    metrics::counter!(SCAN_ERRORS).absolute(0);
    tracing::info!(
        agent,
        check_interval = ?check_interval,
        idle_grace = ?idle_grace,
        protection_minutes = minutes,
        "workerguard started"
    );
}

/// The set of running task instances changed.
pub fn tasks_changed(started: &[String], ended: &[String], running: usize) {
    metrics::gauge!(RUNNING_TASKS).set(running as f64);
    tracing::info!(?started, ?ended, running, "running tasks changed");
}

/// The process table shows no other process: the worker's are not visible.
pub fn alone_in_proc(root: &str) {
    tracing::warn!(
        proc = root,
        "no process but workerguard's own is visible: set pidMode \"task\" in the task definition, or workerguard cannot see the worker's tasks"
    );
}

/// Scanning the process table failed.
pub fn scan_failed(error: &dyn Display) {
    metrics::counter!(SCAN_ERRORS).increment(1);
    tracing::warn!(error = %error, "cannot scan the process table; keeping the last known tasks");
}

/// The agent read the state at start.
pub fn state_read(enabled: bool, expires: Option<SystemTime>) {
    metrics::counter!(CALLS_SENT, "call" => "read").increment(1);
    success_now();
    metrics::gauge!(PROTECTED).set(f64::from(u8::from(enabled)));
    let expires = rfc3339(expires);
    tracing::info!(protected = enabled, %expires, "protection state read");
}

/// Protection turned on (from off or unknown), for these tasks.
pub fn protected(tasks: &[String], expires: Option<SystemTime>) {
    metrics::counter!(CALLS_SENT, "call" => "protect").increment(1);
    success_now();
    metrics::gauge!(PROTECTED).set(1.0);
    let expires = rfc3339(expires);
    tracing::info!(
        protected = true,
        ?tasks,
        %expires,
        "task protected from scale-in"
    );
}

/// Protection renewed while tasks run.
pub fn renewed(running: usize, expires: Option<SystemTime>) {
    metrics::counter!(CALLS_SENT, "call" => "protect").increment(1);
    success_now();
    metrics::gauge!(PROTECTED).set(1.0);
    let expires = rfc3339(expires);
    tracing::debug!(running, %expires, "protection renewed");
}

/// Protection turned off after the idle grace; `last_tasks` are the tasks that ended last.
pub fn unprotected(idle_grace: Duration, last_tasks: &[String]) {
    metrics::counter!(CALLS_SENT, "call" => "unprotect").increment(1);
    success_now();
    metrics::gauge!(PROTECTED).set(0.0);
    tracing::info!(protected = false, idle_grace = ?idle_grace, ?last_tasks, "task no longer protected: idle");
}

/// Whole seconds passed while protected.
pub fn protected_for(seconds: u64) {
    metrics::counter!(PROTECTED_SECONDS).increment(seconds);
}

/// A call failed and is retried after `retry_in`.
pub fn call_failed(
    call: &'static str,
    error: &dyn Display,
    class: &'static str,
    failure_reason: Option<&str>,
    retry_in: Duration,
) {
    match failure_reason {
        Some(reason) => {
            metrics::counter!(CALL_FAILURES, "reason" => reason.to_string()).increment(1)
        }
        None => metrics::counter!(ERRORS, "class" => class).increment(1),
    }
    tracing::warn!(call, error = %error, class, retry_in = ?retry_in, "task protection call failed; retrying");
}

/// A call failed for good: the daemon exits.
pub fn gave_up(call: &'static str, error: &dyn Display, class: &'static str) {
    metrics::counter!(ERRORS, "class" => class).increment(1);
    tracing::error!(call, error = %error, class, "task protection call failed; giving up");
}

/// Shutdown: protection is left as it is.
pub fn stopping(protected: Option<bool>, running: usize) {
    tracing::info!(
        ?protected,
        running,
        "workerguard stopping; protection left as it is (the task is stopping)"
    );
}

/// The expiry as RFC 3339, or empty when there is none.
fn rfc3339(at: Option<SystemTime>) -> String {
    at.map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

fn success_now() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(LAST_SUCCESS).set(now.as_secs_f64());
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_table_is_the_telemetry_module() {
        airside_testkit::metric_contract::check(
            env!("CARGO_MANIFEST_DIR"),
            "workerguard",
            super::ALL,
            super::DEPRECATED,
        );
    }
}
