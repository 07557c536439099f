//! workerguard: keeps an Airflow worker's ECS task protected from scale-in exactly while
//! Airflow tasks run in it.
//!
//! Data flows one way, once per `--check-interval`:
//!
//! 1. [`procs`] lists the shared process table and [`titles`] picks out the processes
//!    that are Airflow task instances, by their process titles;
//! 2. [`guard`] turns the running set, the idle grace and the last answers into the next
//!    protection call;
//! 3. [`agent`] makes the call to the ECS agent's task-protection endpoint;
//! 4. [`telemetry`] logs each change of state and counts every call.
//!
//! Failed calls follow the core's retry policy: access denied gives up after
//! [`airside_core::retry::ACCESS_DENIED_ATTEMPTS`] consecutive failures (exit 3), a
//! request the agent calls invalid or an endpoint that does not exist at once (exit 2),
//! anything else is retried with full-jitter backoff up to `--retry-max` for as long as
//! the daemon runs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod guard;
pub mod procs;
pub mod telemetry;
pub mod titles;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airside_core::ExitCode;
use airside_core::admin::{AdminServer, Readiness};
use airside_core::aws::ErrorClass;
use airside_core::backoff::Backoff;
use airside_core::daemon::{Allocator, Daemon, Runtime};
use airside_core::exit::HasExitCode;
use airside_core::retry::{Retry, Verdict};
use airside_core::shutdown::Shutdown;

use crate::agent::{Agent, AgentError, Protection};
pub use crate::config::Config;
use crate::guard::{Call, Guard, Known};
use crate::procs::{ProcTable, Running};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin server could not be bound.
    #[error(transparent)]
    BindAdmin(#[from] airside_core::admin::BindError),
    /// A protection call failed for good.
    #[error("{call} failed: {source}{hint}")]
    Agent {
        /// Which call.
        call: &'static str,
        /// The last failure.
        #[source]
        source: AgentError,
        /// What to do about it.
        hint: &'static str,
    },
}

impl HasExitCode for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::BindAdmin(e) => e.exit_code(),
            Error::Agent { source, .. } => source.class().exit_code(),
        }
    }
}

/// workerguard as the core's [`Daemon`]: `main` is `airside_core::daemon::main::<Workerguard>()`.
pub struct Workerguard;

impl Daemon for Workerguard {
    const NAME: &'static str = "workerguard";
    const ALLOCATOR: Allocator = Allocator::Default;
    // One process-table scan and at most one small HTTP call a second.
    const RUNTIME: Runtime = Runtime::CurrentThread {
        max_blocking_threads: 1,
    };
    type Cli = config::Cli;
    type Config = Config;
    type Deps = Agent;
    type Error = Error;

    fn config(args: config::Args) -> Result<Config, String> {
        Config::from_args(args)
    }

    async fn connect(config: &Config) -> Result<Agent, Error> {
        Ok(Agent::new(&config.agent_uri, config.request_timeout))
    }

    async fn run(config: Config, agent: Agent, shutdown: Shutdown) -> Result<(), Error> {
        run(config, agent, shutdown).await
    }
}

/// What `/readyz` shows besides the verdict.
#[derive(Debug, Default)]
struct Shown {
    running: usize,
    protected: Option<bool>,
}

/// Runs until `shutdown`, or until a protection call fails for good.
pub async fn run(config: Config, agent: Agent, shutdown: Shutdown) -> Result<(), Error> {
    let readiness = Readiness::new("no answer from the ECS agent yet");
    let shown = Arc::new(Mutex::new(Shown::default()));
    let detail = shown.clone();
    let readiness = readiness.with_detail(move || {
        let s = detail.lock().expect("shown");
        format!("running tasks: {}\nprotected: {:?}", s.running, s.protected)
    });
    let admin = AdminServer::bind(config.admin_addr, readiness.clone()).await?;
    let admin_stop = Shutdown::new();
    let admin_task = tokio::spawn(admin.serve(admin_stop.clone()));

    telemetry::started(
        agent.url(),
        config.check_interval,
        config.idle_grace,
        config.protection_minutes,
    );
    let result = guard_loop(&config, &agent, &readiness, &shown, &shutdown).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    result
}

async fn guard_loop(
    config: &Config,
    agent: &Agent,
    readiness: &Readiness,
    shown: &Mutex<Shown>,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let lifetime = Duration::from_secs(u64::from(config.protection_minutes) * 60);
    let mut guard = Guard::new(config.idle_grace, lifetime);
    let backoff = Backoff::new(Duration::from_millis(250), config.retry_max)
        .expect("--retry-max is checked to be at least the base");
    let mut retry = Retry::daemon(backoff);
    let mut table = ProcTable::new(config.proc_dir.clone());
    let mut running = Running::new();
    let mut last_tasks: Vec<String> = Vec::new();
    let mut first_scan = true;
    let mut ticker = tokio::time::interval(config.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let mut protected_carry = Duration::ZERO;

    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        if matches!(guard.known(), Known::On { .. }) {
            // The counter takes whole seconds; the rest waits for the next tick.
            protected_carry += now - last_tick;
            let whole = protected_carry.as_secs();
            if whole > 0 {
                telemetry::protected_for(whole);
                protected_carry -= Duration::from_secs(whole);
            }
        }
        last_tick = now;

        match table.scan() {
            Ok(now_running) => {
                if first_scan && now_running.is_empty() && only_self_visible(config) {
                    telemetry::alone_in_proc(&config.proc_dir.display().to_string());
                }
                first_scan = false;
                if now_running.keys().ne(running.keys()) {
                    let (started, ended) = difference(&running, &now_running);
                    if !ended.is_empty() {
                        last_tasks = ended.clone();
                    }
                    telemetry::tasks_changed(&started, &ended, now_running.len());
                }
                running = now_running;
            }
            Err(e) => telemetry::scan_failed(&e),
        }
        shown.lock().expect("shown").running = running.len();

        // A read at start may be followed by a protect in the same tick.
        for _ in 0..2 {
            let now = Instant::now();
            let wanted = guard.busy(now, running.len());
            let Some(call) = guard.next(now, wanted) else {
                break;
            };
            let was_on = matches!(guard.known(), Known::On { .. });
            let sent = Instant::now();
            let answer = tokio::select! {
                biased;
                // SIGTERM: the task is stopping; the call is abandoned, protection left as it is.
                _ = shutdown.cancelled() => break,
                a = send(agent, call, config.protection_minutes) => a,
            };
            match answer {
                Ok(p) => {
                    retry.succeeded();
                    readiness.set_ready();
                    guard.answered(call, sent, p, SystemTime::now());
                    shown.lock().expect("shown").protected = Some(p.enabled);
                    let tasks: Vec<String> = running.keys().map(|k| k.to_string()).collect();
                    match call {
                        Call::Read => telemetry::state_read(p.enabled, p.expires),
                        Call::Protect if was_on => telemetry::renewed(running.len(), p.expires),
                        Call::Protect => telemetry::protected(&tasks, p.expires),
                        Call::Unprotect => telemetry::unprotected(config.idle_grace, &last_tasks),
                    }
                }
                Err(e) => {
                    let class = e.class();
                    match retry.failed(class) {
                        Verdict::RetryAfter(delay) => {
                            telemetry::call_failed(
                                call_name(call),
                                &e,
                                class.as_str(),
                                e.failure_reason(),
                                delay,
                            );
                            readiness.set_not_ready(format!(
                                "{} failed ({}): {e}; retrying in {delay:?}",
                                call_name(call),
                                class.as_str()
                            ));
                            guard.failed(call, Instant::now(), delay);
                            if call == Call::Unprotect {
                                shown.lock().expect("shown").protected = None;
                            }
                        }
                        Verdict::GiveUp => {
                            telemetry::gave_up(call_name(call), &e, class.as_str());
                            return Err(Error::Agent {
                                call: call_name(call),
                                hint: hint(class),
                                source: e,
                            });
                        }
                    }
                    break;
                }
            }
        }
    }
    let protected = shown.lock().expect("shown").protected;
    telemetry::stopping(protected, running.len());
    Ok(())
}

async fn send(agent: &Agent, call: Call, minutes: u32) -> Result<Protection, AgentError> {
    match call {
        Call::Read => agent.get().await,
        Call::Protect => {
            let p = agent.set(Some(minutes)).await?;
            if !p.enabled {
                return Err(AgentError::Malformed(
                    "protection was asked for but the answer says it is off".into(),
                ));
            }
            Ok(p)
        }
        Call::Unprotect => agent.set(None).await,
    }
}

fn call_name(call: Call) -> &'static str {
    match call {
        Call::Read => "reading task protection",
        Call::Protect => "protecting the task",
        Call::Unprotect => "clearing task protection",
    }
}

fn hint(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::AccessDenied => {
            " (give the task a task role, and allow it ecs:UpdateTaskProtection and \
             ecs:GetTaskProtection on this cluster's tasks: infra/modules/sidecar-iam does)"
        }
        ErrorClass::NotFound => {
            " (ECS_AGENT_URI does not serve task protection: Fargate platform 1.4.0+ or \
             EC2 agent 1.65.0+ is needed)"
        }
        ErrorClass::Invalid => " (the agent refused the request itself: a bug, please report it)",
        ErrorClass::Transient | ErrorClass::Throttled => "",
    }
}

/// The keys that started and ended between two scans, as text.
fn difference(before: &Running, after: &Running) -> (Vec<String>, Vec<String>) {
    let b: BTreeSet<_> = before.keys().collect();
    let a: BTreeSet<_> = after.keys().collect();
    (
        a.difference(&b).map(|k| k.to_string()).collect(),
        b.difference(&a).map(|k| k.to_string()).collect(),
    )
}

/// Whether the process table shows nothing but this process (no shared PID namespace).
fn only_self_visible(config: &Config) -> bool {
    let own = std::process::id().to_string();
    std::fs::read_dir(&config.proc_dir).is_ok_and(|dir| {
        dir.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .all(|e| e.file_name().to_str() == Some(own.as_str()))
    })
}
