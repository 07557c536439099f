//! dagsync keeps an Airflow DAG folder (the shared EFS mount) in step with an S3 prefix.
//!
//! It replaces a shell loop around `aws s3 sync`. A cycle flows one way through
//! the modules: [`source`] lists the prefix (every page) → [`plan`] decides what
//! changed from the listing, the persisted [`state`] and local `stat`s (no request
//! per object), and which deletions are safe → [`source`] fetches changed objects
//! into the per-process [`staging`] folder, verified and fsynced → [`publish`]
//! renames them into place, deletes, prunes empty folders → [`state`] is saved.
//! [`cadence`] decides when the next cycle runs; [`keys`] guards against keys
//! that would land outside the destination.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cadence;
pub mod config;
mod direct;
pub mod keys;
pub mod lease;
pub mod plan;
pub mod publish;
pub mod source;
pub mod staging;
pub mod state;
pub mod syncer;
pub mod telemetry;
pub mod verify;

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airside_core::ExitCode;
use airside_core::admin::{AdminServer, Readiness};
use airside_core::aws::{self, AwsSettings};
use airside_core::backoff::Backoff;
use airside_core::exit::HasExitCode;
use airside_core::retry::{Retry, Verdict};
use airside_core::shutdown::{Shutdown, drain, sleep_or_shutdown};

use airside_core::daemon::{Allocator, Daemon, Runtime};
pub use config::{Cli, Command, Config, SyncArgs};
use source::{Source, SourceSpec};
use syncer::{CycleError, Syncer};

/// Why dagsync stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The destination is missing or not writable.
    #[error("destination: {0}")]
    Destination(String),
    /// The source failed in a way retries cannot fix.
    #[error("source {source_name}: {error}")]
    Source {
        /// The --source.
        source_name: String,
        /// The failure.
        error: CycleError,
    },
    /// A delete guard refused (with --once).
    #[error("delete guard: {0}")]
    Guard(plan::Refusal),
    /// Some objects could not be fetched or verified (with --once); the rest was published.
    #[error("{} objects could not be fetched or verified; everything else was published: {}", failed.len(), describe_failures(failed))]
    Partial {
        /// The failures.
        failed: Vec<syncer::FailedObject>,
    },
    /// With --once: another dagsync writes this folder and has not synced it recently.
    #[error(
        "another dagsync holds the writer lease of {0} and has not completed a sync within --max-staleness; try again, or check that process"
    )]
    LeaseBusy(String),
    /// AWS setup failed.
    #[error(transparent)]
    Aws(#[from] aws::AwsSetupError),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] airside_core::admin::BindError),
}

impl HasExitCode for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Usage,
            Error::Aws(e) => e.exit_code(),
            Error::Admin(e) => e.exit_code(),
            Error::Destination(_) => ExitCode::Destination,
            Error::Source { error, .. } => match error {
                CycleError::Destination { .. } => ExitCode::Destination,
                e => e.class().exit_code(),
            },
            Error::Guard(_) => ExitCode::Guard,
            Error::Partial { .. } => ExitCode::Partial,
            Error::LeaseBusy(_) => ExitCode::Other,
        }
    }
}

/// `key (reason), …` for the first few failures.
fn describe_failures(failed: &[syncer::FailedObject]) -> String {
    let mut parts: Vec<String> = failed
        .iter()
        .take(5)
        .map(|f| format!("{} ({}: {})", f.key, f.reason, f.error))
        .collect();
    if failed.len() > 5 {
        parts.push(format!("and {} more", failed.len() - 5));
    }
    parts.join("; ")
}

/// The writability probe's file name, before the process id.
const PROBE_PREFIX: &str = ".probe-";

/// Removes files in `DEST/.dagsync` that only a SIGKILL leaves behind: a writability
/// probe killed between its write and its removal, and the status file's temporary
/// file as versions before session 11 named it (`status.json.tmp-PID`, beside the
/// status file; it now goes through the process's staging folder). Neither is ever
/// needed after the microseconds it exists; another instance's probe removed mid-way
/// still counts as written.
fn sweep_leftovers(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    let old_status_tmp = format!("{}.tmp-", lease::STATUS_FILE);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with(PROBE_PREFIX) || name.starts_with(&old_status_tmp))
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checks that the destination exists, is a folder and is writable.
fn check_destination(dest: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(dest).map_err(|e| {
        Error::Destination(format!(
            "{} cannot be used ({e}); create it or mount the DAG volume there",
            dest.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Destination(format!(
            "{} is not a folder",
            dest.display()
        )));
    }
    let own = dest.join(keys::OWN_DIR);
    let probe = own.join(format!("{PROBE_PREFIX}{}", std::process::id()));
    sweep_leftovers(&own);
    std::fs::create_dir_all(&own)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| match std::fs::remove_file(&probe) {
            // Another instance's sweep took it: it was written, which is what we asked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .map_err(|e| {
            Error::Destination(format!(
                "{} is not writable ({e}); dagsync needs write access to the DAG folder",
                dest.display()
            ))
        })
}

/// Builds the source from the configuration.
pub async fn connect(spec: &SourceSpec, direct_get: bool) -> Result<Source, Error> {
    match spec {
        SourceSpec::S3 { bucket, prefix } => {
            let config = aws::load(&AwsSettings::default()).await?;
            let direct = if direct_get {
                Some(aws::http_connector(&config)?)
            } else {
                None
            };
            Ok(Source::s3(&config, bucket.clone(), prefix.clone(), direct))
        }
        SourceSpec::Local(root) => {
            if !root.is_dir() {
                return Err(Error::Config(format!(
                    "--source {} is not a folder",
                    root.display()
                )));
            }
            Ok(Source::Local { root: root.clone() })
        }
    }
}

/// What every instance knows of the shared folder's freshness, for `/readyz`: the last
/// successful cycle (this process's as writer, the writer's as standby) and the objects
/// that failed in it.
#[derive(Debug, Default)]
struct Freshness {
    last_success: Option<SystemTime>,
    failing: Vec<(String, String)>,
}

/// Runs dagsync until shutdown (or for one cycle with `--once`), with the given source.
pub async fn run_with(config: Config, source: Source, shutdown: Shutdown) -> Result<(), Error> {
    check_destination(&config.dest)?;
    let fresh: Arc<Mutex<Freshness>> = Arc::default();
    let readiness = {
        let (check, detail) = (fresh.clone(), fresh.clone());
        let max_age = config.ready_max_age;
        Readiness::new("no successful sync yet")
            .with_check(move || {
                let f = check.lock().expect("lock");
                match f.last_success {
                    None => Err("no successful sync of the DAG folder yet".into()),
                    Some(t) => {
                        let age = t.elapsed().unwrap_or_default();
                        if age > max_age {
                            Err(format!(
                                "last successful sync was {}s ago (limit {}s)",
                                age.as_secs(),
                                max_age.as_secs()
                            ))
                        } else {
                            Ok(())
                        }
                    }
                }
            })
            .with_detail(move || {
                let f = detail.lock().expect("lock");
                f.failing
                    .iter()
                    .map(|(key, reason)| format!("failing object: {key} ({reason})\n"))
                    .collect()
            })
    };
    // With --once nothing serves /metrics, so no recorder is installed (the metrics
    // macros are no-ops then): building one calibrates a clock for several milliseconds.
    if config.once {
        return sync_loop(config, source, shutdown, readiness, fresh).await;
    }
    let admin = AdminServer::bind(config.admin_addr, readiness.clone()).await?;
    admin
        .serve_during(sync_loop(config, source, shutdown, readiness, fresh))
        .await
}

/// The cycles, until shutdown (and the drain of the cycle in flight) or a fatal error.
async fn sync_loop(
    config: Config,
    source: Source,
    shutdown: Shutdown,
    readiness: Readiness,
    fresh: Arc<Mutex<Freshness>>,
) -> Result<(), Error> {
    let source_name = config.source.display();
    let own_dir = config.dest.join(keys::OWN_DIR);
    let mut watch_rx = if config.watch {
        match &config.source {
            SourceSpec::Local(root) => Some(watch(root)?),
            SourceSpec::S3 { .. } => None,
        }
    } else {
        None
    };

    let once = config.once;
    let dry_run = config.dry_run;
    let cadence = config.cadence;
    let grace = config.drain_timeout;
    let use_lease = config.lease && !dry_run;
    let mut syncer = Syncer::new(config, source).map_err(|e| Error::Destination(e.to_string()))?;
    let progress_task = (once && !dry_run && std::io::stderr().is_terminal()).then(|| {
        tokio::spawn(syncer::show_progress(
            syncer.progress.clone(),
            Instant::now(),
        ))
    });
    let backoff =
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30)).expect("static bounds");
    let mut retry = if once {
        Retry::one_shot(backoff)
    } else {
        Retry::daemon(backoff)
    };
    let mut idle = 0u32;
    let mut held: Option<lease::Lease> = None;
    let mut role: Option<lease::Role> = None;
    let once_deadline = Instant::now() + cadence.max_staleness();
    tracing::info!(source = %source_name, files = syncer.synced_files(), "dagsync starting");

    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if use_lease && held.is_none() {
            let taken = lease::Lease::try_take(&own_dir).map_err(|e| {
                Error::Destination(format!(
                    "{}: cannot open the writer lease: {e}",
                    own_dir.join(lease::LEASE_FILE).display()
                ))
            })?;
            match taken {
                Some(l) => {
                    // Continue from what the previous writer published.
                    syncer
                        .reload_state()
                        .map_err(|e| Error::Destination(e.to_string()))?;
                    if role.is_some() {
                        tracing::info!(
                            role = "writer",
                            previous = role.map(|r| r.as_str()),
                            holder = l.holder(),
                            "took over the writer lease of the DAG folder"
                        );
                    }
                    held = Some(l);
                }
                None => {
                    let status = lease::SharedStatus::read(&own_dir);
                    if role != Some(lease::Role::Standby) {
                        tracing::info!(
                            role = "standby",
                            writer = status
                                .as_ref()
                                .map(|s| s.writer.as_str())
                                .unwrap_or("unknown"),
                            "another dagsync writes this DAG folder; standing by"
                        );
                        role = Some(lease::Role::Standby);
                        telemetry::role_taken(lease::Role::Standby);
                    }
                    if let Some(status) = &status {
                        {
                            let mut f = fresh.lock().expect("lock");
                            f.last_success = Some(status.last_success());
                            f.failing = status.failing.clone();
                        }
                        // Ready as long as the writer's last success is recent (the check).
                        readiness.set_ready();
                    }
                    if once {
                        // The folder is kept by another process: done if it is fresh.
                        let recent = status.as_ref().is_some_and(|s| {
                            s.last_success().elapsed().unwrap_or_default()
                                <= cadence.max_staleness()
                        });
                        if recent {
                            tracing::info!(
                                "another dagsync keeps this folder in sync and did so recently; nothing to do"
                            );
                            return Ok(());
                        }
                        if Instant::now() >= once_deadline {
                            return Err(Error::LeaseBusy(own_dir.display().to_string()));
                        }
                        sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                        continue;
                    }
                    // Poll the lease twice per interval, so a dead writer is replaced well
                    // within --max-staleness.
                    sleep_or_shutdown(cadence.next_delay(0, Duration::ZERO) / 2, &shutdown).await;
                    continue;
                }
            }
        }
        if role != Some(lease::Role::Writer) {
            role = Some(lease::Role::Writer);
            telemetry::role_taken(lease::Role::Writer);
        }
        let started = Instant::now();
        let result = {
            let fut = syncer.cycle(held.as_ref());
            tokio::pin!(fut);
            tokio::select! {
                r = &mut fut => r,
                _ = shutdown.cancelled() => {
                    // Finish the cycle in flight, but only for so long.
                    match drain(grace, fut).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "stopping mid-cycle; nothing partial was published");
                            return Ok(());
                        }
                    }
                }
            }
        };
        let elapsed = started.elapsed();
        telemetry::cycle_ended(elapsed, syncer.synced_files());
        let delay = match result {
            Ok(report) => {
                if let Some(plan) = &report.dry_run_plan {
                    print!("{plan}");
                    return match report.refused {
                        Some(r) => Err(Error::Guard(r)),
                        None => Ok(()),
                    };
                }
                if let Some(t) = &progress_task {
                    t.abort();
                    eprintln!();
                }
                telemetry::cycle_succeeded(&report, elapsed, syncer.synced_files());
                retry.succeeded();
                let failing: Vec<(String, String)> = report
                    .failed
                    .iter()
                    .map(|f| (f.key.clone(), f.reason.to_string()))
                    .collect();
                if let Some(l) = &held {
                    let status = lease::SharedStatus {
                        writer: l.holder().to_string(),
                        last_success_ms: lease::SharedStatus::now_ms(),
                        failing: failing.clone(),
                    };
                    if let Err(e) = status.write(&own_dir, syncer.staging_dir()) {
                        tracing::warn!(error = %e, "cannot record the sync status for the other tasks' health checks");
                    }
                }
                {
                    let mut f = fresh.lock().expect("lock");
                    f.last_success = Some(SystemTime::now());
                    f.failing = failing;
                }
                readiness.set_ready();
                if once {
                    if !report.failed.is_empty() {
                        return Err(Error::Partial {
                            failed: report.failed,
                        });
                    }
                    return match report.refused {
                        Some(r) => Err(Error::Guard(r)),
                        None => Ok(()),
                    };
                }
                idle = if report.changed() || !report.failed.is_empty() {
                    0
                } else {
                    idle.saturating_add(1)
                };
                cadence.next_delay(idle, elapsed)
            }
            Err(CycleError::LeaseLost { path }) => {
                tracing::warn!(lease = %path.display(), "lost the writer lease before publishing; nothing was published, standing by");
                held = None;
                role = None;
                cadence.next_delay(0, elapsed) / 2
            }
            Err(error) => {
                let class = error.class();
                telemetry::cycle_failed(&error, class.as_str(), elapsed);
                match retry.failed(class) {
                    Verdict::RetryAfter(delay)
                        if !(once && matches!(error, CycleError::Destination { .. })) =>
                    {
                        delay.min(cadence.max_staleness())
                    }
                    _ => return Err(Error::Source { source_name, error }),
                }
            }
        };
        // Idle until the next cycle with only the memory the idle loop needs resident.
        airside_core::memory::release();
        // Sleep until the next cycle, a shutdown, or (with --watch) a change in the source.
        match watch_rx.as_mut() {
            Some((_watcher, rx)) => {
                tokio::select! {
                    _ = sleep_or_shutdown(delay, &shutdown) => {}
                    Some(()) = rx.recv() => {
                        // Let an editor finish writing (and coalesce bursts of events).
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while rx.try_recv().is_ok() {}
                    }
                }
            }
            None => {
                sleep_or_shutdown(delay, &shutdown).await;
            }
        }
    }
}

type Watch = (notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>);

fn watch(root: &Path) -> Result<Watch, Error> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already means "sync soon": dropping extra events is fine.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| Error::Config(format!("--watch: cannot watch {}: {e}", root.display())))?;
    watcher
        .watch(root, notify::RecursiveMode::Recursive)
        .map_err(|e| Error::Config(format!("--watch: cannot watch {}: {e}", root.display())))?;
    Ok((watcher, rx))
}

/// Runs dagsync until shutdown (or for one cycle with `--once`).
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    check_destination(&config.dest)?;
    let source = <Dagsync as Daemon>::connect(&config).await?;
    run_with(config, source, shutdown).await
}

/// dagsync as the core's [`Daemon`]: `main` is `airside_core::daemon::main::<Dagsync>()`.
pub struct Dagsync;

impl Daemon for Dagsync {
    const NAME: &'static str = "dagsync";
    // Whole-object bodies of up to 8 MiB come and go: each one over 256 KiB is mapped and
    // unmapped on its own, so the 64 MiB container limit holds whatever the object sizes.
    const ALLOCATOR: Allocator = Allocator::ReturnLargeBuffers(256 << 10);
    // One async thread: dagsync's work is I/O-bound and a sidecar should be cheap. A
    // multi-threaded scheduler cost ~13 futex calls per downloaded file in cross-thread
    // wake-ups. Blocking file work runs on the blocking pool, which idles back to zero.
    const RUNTIME: Runtime = Runtime::CurrentThread {
        max_blocking_threads: 32,
    };
    type Cli = Cli;
    type Config = Config;
    type Deps = Source;
    type Error = Error;

    fn config(args: SyncArgs) -> Result<Config, String> {
        Config::from_args(args)
    }

    async fn connect(config: &Config) -> Result<Source, Error> {
        Ok(connect(&config.source, config.direct_get)
            .await?
            .with_memory_budget(config.memory_budget))
    }

    async fn run(config: Config, source: Source, shutdown: Shutdown) -> Result<(), Error> {
        run_with(config, source, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_check_removes_what_only_a_sigkill_leaves() {
        let dest = tempfile::tempdir().unwrap();
        let own = dest.path().join(keys::OWN_DIR);
        std::fs::create_dir_all(own.join("dagsync-staging")).unwrap();
        for f in [
            ".probe-4242",
            "status.json.tmp-777",
            lease::STATUS_FILE,
            "state.json",
        ] {
            std::fs::write(own.join(f), b"x").unwrap();
        }
        check_destination(dest.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&own)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["dagsync-staging", "state.json", lease::STATUS_FILE]);
    }
}
