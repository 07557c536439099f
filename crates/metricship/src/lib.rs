//! metricship: Airflow's StatsD in, Prometheus and CloudWatch out, plus the
//! queue-depth signal that scales Celery workers.
//!
//! Data flows one way:
//!
//! 1. [`ingest`] receives datagrams (UDP or a unix datagram socket) on one
//!    thread, batched with `recvmmsg`, and hands each line to the
//!    [`aggregate::Aggregator`] — [`statsd`] parses, [`mapping`] (the user's
//!    rules, then the built-in [`catalogue`]) names the series, and
//!    [`signal`] picks out the autoscaling inputs.
//! 2. Prometheus scrapes render the cumulative state ([`prometheus`]).
//! 3. Every flush interval the aggregator's interval state becomes datums: the
//!    allowlisted series plus QueueDepth, TaskDemand, DesiredWorkers and the
//!    `celery.queue_depth` alias (withheld while the scheduler is silent). They
//!    go to CloudWatch through a bounded backlog ([`cloudwatch`]), or as EMF
//!    lines on stdout ([`emf`]).
//!
//! [`Daemon::start`] binds and spawns everything and returns the bound
//! addresses (tests use port 0); [`run`] is start + wait, used by `main`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod catalogue;
pub mod cloudwatch;
pub mod config;
pub mod emf;
pub mod ingest;
pub mod mapping;
pub mod prometheus;
pub mod rules;
pub mod signal;
pub mod statsd;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airside_core::ExitCode;
use airside_core::admin::{AdminServer, Readiness};
use airside_core::aws::ErrorClass;
use airside_core::backoff::Backoff;
use airside_core::exit::HasExitCode;
use airside_core::shutdown::{Shutdown, drain};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::aggregate::{Aggregator, AggregatorSettings, Allowlist, Datum, DatumValue, Unit};
use crate::cloudwatch::{Backlog, BatchKind, PublishError, Publisher, batches};
pub use crate::config::Config;
use crate::ingest::{Listen, ReceiveCounters, StatsdSocket};
use crate::signal::{Input, Signal, SignalSettings};

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or file is wrong.
    #[error("{0}")]
    Config(String),
    /// The StatsD socket could not be bound.
    #[error("cannot bind the StatsD socket {listen}: {source} (choose another --statsd-addr)")]
    BindStatsd {
        /// What was asked for.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The admin server could not be bound.
    #[error(transparent)]
    BindAdmin(#[from] airside_core::admin::BindError),
    /// CloudWatch refused at the start check.
    #[error("CloudWatch check of namespace {namespace:?} failed: {message}")]
    CloudWatchCheck {
        /// The namespace.
        namespace: String,
        /// The error class.
        class: ErrorClass,
        /// The error.
        message: String,
    },
    /// Publishing failed for good.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// AWS setup failed.
    #[error(transparent)]
    Aws(#[from] airside_core::aws::AwsSetupError),
    /// A task of the daemon failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl HasExitCode for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) | Error::BindStatsd { .. } | Error::BindAdmin(_) => ExitCode::Usage,
            Error::CloudWatchCheck { class, .. } => class.exit_code(),
            Error::Publish(PublishError::AccessDenied { .. }) => ExitCode::AccessDenied,
            Error::Aws(airside_core::aws::AwsSetupError::NoRegion) => ExitCode::Usage,
            Error::Aws(_) | Error::Internal(_) => ExitCode::Other,
        }
    }
}

/// Where interval datums go.
#[derive(Clone)]
pub enum Output {
    /// PutMetricData with this client.
    CloudWatch(aws_sdk_cloudwatch::Client),
    /// EMF lines on stdout.
    Emf,
    /// Nowhere (Prometheus only).
    None,
}

/// State shared by the daemon's tasks.
struct Shared {
    config: Config,
    aggregator: Arc<Mutex<Aggregator>>,
    signal_settings: SignalSettings,
    allowlist: Allowlist,
    last_signal: Mutex<Option<Signal>>,
    missing_inputs: Mutex<Vec<Input>>,
    backlog: Arc<Mutex<Backlog>>,
    wake: Arc<Notify>,
    output: Output,
    counters: Arc<ReceiveCounters>,
}

/// A started daemon.
pub struct Daemon {
    statsd: Listen,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    stop_receiver: Arc<AtomicBool>,
    receiver: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    publisher: Option<(JoinHandle<Result<(), PublishError>>, Shutdown)>,
    fatal: tokio::sync::mpsc::Receiver<Error>,
    admin_stop: Shutdown,
    admin_task: JoinHandle<()>,
}

/// Runs the daemon until `shutdown`, then flushes the last interval and drains.
pub async fn run(config: Config, output: Output, shutdown: Shutdown) -> Result<(), Error> {
    Daemon::start(config, output, shutdown).await?.wait().await
}

/// Builds the output `config` asks for, loading AWS settings when CloudWatch is used.
pub async fn output_for(config: &Config) -> Result<Output, Error> {
    if config.no_cloudwatch {
        return Ok(Output::None);
    }
    if config.emf {
        return Ok(Output::Emf);
    }
    let sdk = airside_core::aws::load(&airside_core::aws::AwsSettings {
        max_attempts: 3,
        ..Default::default()
    })
    .await?;
    Ok(Output::CloudWatch(aws_sdk_cloudwatch::Client::new(&sdk)))
}

impl Daemon {
    /// Binds the sockets, checks CloudWatch in the background, and spawns the tasks.
    pub async fn start(config: Config, output: Output, shutdown: Shutdown) -> Result<Self, Error> {
        if config.flush_interval < Duration::from_millis(100) {
            return Err(Error::Config(
                "--flush-interval must be at least 100ms".into(),
            ));
        }
        if config.min_workers > config.max_workers {
            return Err(Error::Config(format!(
                "--min-workers ({}) is above --max-workers ({})",
                config.min_workers, config.max_workers
            )));
        }
        if config.namespace.is_empty() || config.namespace.starts_with("AWS/") {
            return Err(Error::Config(format!(
                "--namespace {:?} is not usable for custom metrics",
                config.namespace
            )));
        }
        let mut mapper = match &config.mapping {
            Some(path) => {
                mapping::Mapper::from_file(path).map_err(|e| Error::Config(e.to_string()))?
            }
            None => mapping::Mapper::default(),
        };
        let user_rules = mapper.len();
        mapper = mapper.then(
            catalogue::airflow(&config.statsd_prefix).map_err(|e| Error::Config(e.to_string()))?,
        );
        let allowlist = Allowlist::new(&config.allowlist())
            .map_err(|e| Error::Config(format!("invalid --cloudwatch-allow pattern: {e}")))?;
        let aggregator = Arc::new(Mutex::new(Aggregator::new(
            Arc::new(mapper),
            AggregatorSettings {
                max_series: config.max_series,
                ttl: config.series_ttl,
                prefix: config.statsd_prefix.clone(),
                // Prometheus only: no series needs CloudWatch's interval values.
                allowlist: if matches!(output, Output::None) {
                    Allowlist::new(&[]).expect("an empty allowlist is valid")
                } else {
                    allowlist.clone()
                },
                max_bytes: config.memory_budget as usize,
            },
        )));

        let socket =
            StatsdSocket::bind(&config.statsd_addr, config.recv_buffer).map_err(|source| {
                Error::BindStatsd {
                    listen: config.statsd_addr.to_string(),
                    source,
                }
            })?;
        let statsd = socket.local().clone();
        let kernel_drops = socket.kernel_drops();
        tracing::info!(
            statsd = %statsd,
            recv_buffer = socket.recv_buffer(),
            mapping_rules = user_rules,
            allowlist = ?allowlist.patterns(),
            "StatsD socket bound"
        );

        let shared = Arc::new(Shared {
            signal_settings: SignalSettings {
                freshness: config.freshness_window,
                worker_concurrency: config.worker_concurrency,
                min_workers: config.min_workers,
                max_workers: config.max_workers,
            },
            backlog: Arc::new(Mutex::new(Backlog::new(config.backlog_datums))),
            wake: Arc::new(Notify::new()),
            last_signal: Mutex::new(None),
            // Nothing is known to be missing before the first flush.
            missing_inputs: Mutex::new(Vec::new()),
            allowlist,
            aggregator: aggregator.clone(),
            output: output.clone(),
            counters: Arc::new(ReceiveCounters::default()),
            config,
        });

        let stop_receiver = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (agg, counters, stop) = (
                aggregator.clone(),
                shared.counters.clone(),
                stop_receiver.clone(),
            );
            std::thread::Builder::new()
                .name("statsd-receive".into())
                .spawn(move || ingest::receive_loop(socket, agg, counters, stop))
                .map_err(|e| Error::Internal(format!("cannot start the receive thread: {e}")))?
        };

        let readiness = Readiness::new("starting");
        let render_shared = shared.clone();
        let admin = AdminServer::bind(shared.config.admin_addr, readiness.clone())
            .await?
            .with_streamed_metrics(move || {
                Box::new(Exposition {
                    shared: render_shared.clone(),
                    cursor: aggregate::SeriesCursor::default(),
                    series_left: true,
                    done: false,
                })
            });
        let admin_addr = admin.local_addr();
        let admin_stop = Shutdown::new();
        let admin_task = tokio::spawn(admin.serve(admin_stop.clone()));

        let (fatal_tx, fatal) = tokio::sync::mpsc::channel::<Error>(4);
        let mut tasks = Vec::new();
        let mut publisher = None;
        match &output {
            Output::CloudWatch(client) => {
                let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(20))
                    .expect("static backoff bounds are valid");
                let p = Publisher::new(
                    client.clone(),
                    shared.config.namespace.clone(),
                    shared.backlog.clone(),
                    shared.wake.clone(),
                    backoff,
                );
                readiness.set_not_ready("checking CloudWatch");
                tasks.push(tokio::spawn(check_cloudwatch(
                    p.clone(),
                    shared.config.namespace.clone(),
                    readiness.clone(),
                    fatal_tx.clone(),
                    shutdown.clone(),
                    backoff,
                )));
                let stop = Shutdown::new();
                let stop2 = stop.clone();
                publisher = Some((tokio::spawn(async move { p.run(stop2).await }), stop));
            }
            Output::Emf | Output::None => readiness.set_ready(),
        }

        let flusher = tokio::spawn(flush_loop(shared.clone(), shutdown.clone()));
        tasks.push(tokio::spawn(export_health(
            shared.clone(),
            kernel_drops,
            shutdown.clone(),
        )));

        Ok(Self {
            statsd,
            admin_addr,
            shared,
            shutdown,
            stop_receiver,
            receiver: Some(receiver),
            tasks,
            flusher: Some(flusher),
            publisher,
            fatal,
            admin_stop,
            admin_task,
        })
    }

    /// Where StatsD is received.
    pub fn statsd(&self) -> &Listen {
        &self.statsd
    }

    /// The bound UDP address (panics for a unix socket).
    pub fn statsd_udp_addr(&self) -> SocketAddr {
        match &self.statsd {
            Listen::Udp(a) => *a,
            Listen::Unix(p) => panic!("listening on unix socket {}", p.display()),
        }
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Waits for shutdown (or a fatal error), then flushes the last interval and
    /// drains the backlog within `--drain-timeout`.
    pub async fn wait(mut self) -> Result<(), Error> {
        let mut publisher = self.publisher.take();
        let mut flusher = self.flusher.take();
        let fatal = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            // The flush loop only returns at shutdown: anything else is fatal, or the
            // daemon would keep answering /readyz while publishing nothing.
            r = async {
                match &mut flusher {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                flusher = None;
                Some(Error::Internal(match r {
                    Ok(()) => "the flush task ended".to_string(),
                    Err(e) => format!("the flush task failed: {e}"),
                }))
            }
            // All senders gone (the start check finished) disables this branch.
            Some(e) = self.fatal.recv() => Some(e),
            r = async {
                match &mut publisher {
                    Some((task, _)) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                publisher = None;
                match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(Error::Publish(e)),
                    Err(e) => Some(Error::Internal(format!("publisher task: {e}"))),
                }
            }
        };
        // Stop receiving (the thread reads what the kernel still holds), then flush.
        self.stop_receiver.store(true, Ordering::Relaxed);
        if let Some(t) = self.receiver.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.shutdown.cancel();
        for t in self.tasks.drain(..).chain(flusher) {
            let _ = t.await;
        }
        if fatal.is_none() {
            flush_once(&self.shared, Instant::now());
        }
        let mut result = fatal.map_or(Ok(()), Err);
        if let Some((task, stop)) = publisher {
            stop.cancel();
            let grace = self.shared.config.drain_timeout;
            match drain(grace, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    if result.is_ok() {
                        result = Err(Error::Publish(e));
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "publisher task failed"),
                Err(timeout) => {
                    let left = self.shared.backlog.lock().expect("backlog").datums();
                    metrics::counter!("metricship_cloudwatch_datums_dropped_total", "reason" => "shutdown")
                        .increment(left as u64);
                    tracing::error!(datums_lost = left, %timeout, "backlog not drained before the drain timeout");
                }
            }
        }
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
        tracing::info!("metricship stopped");
        result
    }
}

async fn check_cloudwatch(
    publisher: Publisher,
    namespace: String,
    readiness: Readiness,
    fatal: tokio::sync::mpsc::Sender<Error>,
    shutdown: Shutdown,
    backoff: Backoff,
) {
    let mut attempt = 0u32;
    loop {
        match publisher.check().await {
            Ok(()) => {
                tracing::info!(%namespace, "CloudWatch reachable");
                readiness.set_ready();
                return;
            }
            Err((class, message)) => {
                readiness.set_not_ready(format!("CloudWatch check failed: {message}"));
                if !class.is_retryable() && (class != ErrorClass::AccessDenied || attempt >= 4) {
                    let _ = fatal
                        .send(Error::CloudWatchCheck {
                            namespace,
                            class,
                            message,
                        })
                        .await;
                    return;
                }
                tracing::warn!(error = %message, class = class.as_str(), "CloudWatch check failed; retrying");
                if airside_core::shutdown::sleep_or_shutdown(backoff.delay(attempt), &shutdown)
                    .await
                {
                    return;
                }
                attempt += 1;
            }
        }
    }
}

async fn flush_loop(shared: Arc<Shared>, shutdown: Shutdown) {
    let period = shared.config.flush_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let shared = shared.clone();
        // Flushing walks every series: off the async workers.
        if let Err(e) =
            tokio::task::spawn_blocking(move || flush_once(&shared, Instant::now())).await
        {
            // A panic in one flush is a bug; the next interval starts afresh (the
            // aggregator's lock is taken poison-tolerantly), and it is counted and logged.
            metrics::counter!("metricship_flush_failures_total").increment(1);
            tracing::error!(error = %e, "flushing an interval failed; its datums are lost");
        }
    }
}

/// Ends one interval: drains the aggregator, computes the signal, checks every datum
/// against CloudWatch's rules and hands the datums to the output.
fn flush_once(shared: &Shared, now: Instant) {
    let at = SystemTime::now();
    let (series, (signal, missing), live) = {
        let mut agg = shared.aggregator.lock().unwrap_or_else(|p| p.into_inner());
        let datums = agg.flush(now, at);
        let signal = agg.signal.compute(&shared.signal_settings, now);
        (datums, signal, agg.live_series())
    };
    *shared.last_signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
    report_missing_inputs(shared, &missing);
    let high_resolution = shared.config.high_resolution;
    let mut signal_datums = Vec::new();
    for (name, value) in [
        ("QueueDepth", signal.queue_depth),
        ("celery.queue_depth", signal.queue_depth),
        ("TaskDemand", signal.task_demand),
        ("DesiredWorkers", signal.desired_workers),
    ] {
        if !shared.allowlist.allows(name) {
            continue;
        }
        let Some(value) = value else {
            metrics::counter!("metricship_signal_withheld_total", "metric" => name).increment(1);
            continue;
        };
        signal_datums.push(Datum {
            name: name.into(),
            dimensions: Vec::new(),
            value: DatumValue::Single(value),
            unit: Unit::Count,
            high_resolution,
            timestamp: at,
        });
    }
    let mut invalid: Vec<(rules::DropReason, Arc<str>)> = Vec::new();
    let mut checked = |datums: Vec<Datum>| -> Vec<Datum> {
        datums
            .into_iter()
            .filter_map(|mut d| {
                for (k, v) in &shared.config.dimensions {
                    if !d.dimensions.iter().any(|(dk, _)| dk == k) {
                        d.dimensions.push((k.clone(), v.clone()));
                    }
                }
                match rules::check(&mut d, at) {
                    Ok(()) => Some(d),
                    Err(reason) => {
                        invalid.push((reason, d.name.clone()));
                        None
                    }
                }
            })
            .collect()
    };
    let signal_datums = checked(signal_datums);
    let series = checked(series);
    report_invalid(&invalid);
    let count = signal_datums.len() + series.len();
    tracing::info!(
        datums = count,
        invalid = invalid.len(),
        live_series = live,
        queue_depth = signal.queue_depth,
        task_demand = signal.task_demand,
        desired_workers = signal.desired_workers,
        "flushed interval"
    );
    metrics::counter!("metricship_flushes_total").increment(1);
    match &shared.output {
        Output::CloudWatch(_) => {
            if count == 0 {
                return;
            }
            let mut backlog = shared.backlog.lock().expect("backlog lock");
            let mut dropped = 0;
            // The signal goes in a request of its own: a datum CloudWatch rejects
            // costs its whole request, and no series may cost us the signal.
            if !signal_datums.is_empty() {
                dropped += backlog.push(signal_datums, BatchKind::Signal);
            }
            for b in batches(series) {
                dropped += backlog.push(b, BatchKind::Series);
            }
            if dropped > 0 {
                metrics::counter!("metricship_cloudwatch_datums_dropped_total", "reason" => "backlog_full")
                    .increment(dropped);
                tracing::warn!(
                    dropped,
                    backlog = backlog.datums(),
                    "CloudWatch backlog full: dropped the oldest datums"
                );
            }
            drop(backlog);
            shared.wake.notify_one();
        }
        Output::Emf => {
            let written = write_emf(
                &shared.config.namespace,
                signal_datums.iter().chain(&series),
                &mut std::io::stdout().lock(),
            );
            match written {
                Ok(lines) => {
                    metrics::counter!("metricship_emf_lines_total").increment(lines);
                }
                Err(e) => {
                    metrics::counter!("metricship_emf_write_errors_total").increment(1);
                    tracing::error!(error = %e, datums = count, "cannot write EMF lines to stdout; this interval's datums are lost");
                }
            }
        }
        Output::None => {}
    }
}

/// Writes one EMF line per datum and flushes; returns the lines written.
fn write_emf<'a>(
    namespace: &str,
    datums: impl Iterator<Item = &'a Datum>,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let mut lines = 0;
    for d in datums {
        writeln!(out, "{}", emf::line(namespace, d))?;
        lines += 1;
    }
    out.flush()?;
    Ok(lines)
}

/// Counts the datums that broke a CloudWatch rule, and says once per interval which.
fn report_invalid(invalid: &[(rules::DropReason, Arc<str>)]) {
    if invalid.is_empty() {
        return;
    }
    let mut by_reason: std::collections::BTreeMap<&str, (u64, &str)> = Default::default();
    for (reason, name) in invalid {
        let e = by_reason.entry(reason.as_str()).or_insert((0, name));
        e.0 += 1;
    }
    for (reason, (n, _)) in &by_reason {
        metrics::counter!("metricship_datums_invalid_total", "reason" => *reason).increment(*n);
    }
    tracing::warn!(
        dropped = invalid.len(),
        reasons = ?by_reason,
        "datums that CloudWatch would reject were not sent (reason: (count, an example metric))"
    );
}

/// Exports which signal inputs are missing, and logs each change once.
fn report_missing_inputs(shared: &Shared, missing: &[Input]) {
    let mut last = shared
        .missing_inputs
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for input in Input::ALL {
        metrics::gauge!("metricship_signal_input_missing", "input" => input.as_str())
            .set(if missing.contains(&input) { 1.0 } else { 0.0 });
    }
    if last.as_slice() == missing {
        return;
    }
    let names: Vec<&str> = missing.iter().map(|i| i.as_str()).collect();
    if missing.is_empty() {
        tracing::info!("every autoscaling signal input is fresh again");
    } else {
        let withheld: Vec<&str> = [
            (
                missing.contains(&Input::PoolQueuedSlots),
                "QueueDepth, celery.queue_depth",
            ),
            (
                missing.contains(&Input::ExecutorQueuedTasks)
                    || missing.contains(&Input::ExecutorRunningTasks),
                "TaskDemand, DesiredWorkers",
            ),
        ]
        .into_iter()
        .filter_map(|(w, m)| w.then_some(m))
        .collect();
        tracing::warn!(
            missing = ?names,
            withheld = ?withheld,
            freshness_seconds = shared.signal_settings.freshness.as_secs_f64(),
            "autoscaling signal inputs stale or never received: the metrics computed from them are withheld (check Airflow's metrics_allow_list and statsd settings)"
        );
    }
    *last = missing.to_vec();
}

/// Publishes the receive counters and ingest statistics to the metrics registry once a second.
async fn export_health(
    shared: Arc<Shared>,
    kernel_drops: Option<ingest::KernelDrops>,
    shutdown: Shutdown,
) {
    let packets = metrics::counter!("metricship_packets_received_total");
    let bytes = metrics::counter!("metricship_bytes_received_total");
    let truncated = metrics::counter!("metricship_packets_truncated_total");
    let recv_errors = metrics::counter!("metricship_receive_errors_total");
    let lines = metrics::counter!("metricship_lines_parsed_total");
    let malformed = metrics::counter!("metricship_lines_malformed_total");
    let dropped_mapping =
        metrics::counter!("metricship_lines_dropped_total", "reason" => "mapping");
    let dropped_ambiguous =
        metrics::counter!("metricship_lines_dropped_total", "reason" => "ambiguous");
    let dropped_conflict =
        metrics::counter!("metricship_lines_dropped_total", "reason" => "type_conflict");
    let dropped_cap = metrics::counter!("metricship_lines_dropped_total", "reason" => "series_cap");
    let dropped_budget =
        metrics::counter!("metricship_lines_dropped_total", "reason" => "memory_budget");
    let series_refused_budget = metrics::counter!("metricship_series_refused_budget_total");
    let set_members_refused = metrics::counter!("metricship_set_members_refused_total");
    let cache_clears = metrics::counter!("metricship_name_cache_clears_total");
    let state_cache = metrics::gauge!("metricship_state_bytes", "part" => "cache");
    let state_series = metrics::gauge!("metricship_state_bytes", "part" => "series");
    let state_sets = metrics::gauge!("metricship_state_bytes", "part" => "sets");
    let state_limit = metrics::gauge!("metricship_state_bytes_limit");
    for reason in rules::DropReason::ALL {
        // Zeroes from the start, so that a rate() over them exists before the first drop.
        metrics::counter!("metricship_datums_invalid_total", "reason" => reason.as_str())
            .increment(0);
    }
    let series_dropped = metrics::counter!("metricship_series_dropped_total");
    let series_expired = metrics::counter!("metricship_series_expired_total");
    let live = metrics::gauge!("metricship_live_series");
    let backlog = metrics::gauge!("metricship_cloudwatch_backlog_datums");
    let kernel = metrics::counter!("metricship_kernel_receive_drops_total");
    loop {
        let c = &shared.counters;
        packets.absolute(c.packets.load(Ordering::Relaxed));
        bytes.absolute(c.bytes.load(Ordering::Relaxed));
        truncated.absolute(c.truncated.load(Ordering::Relaxed));
        recv_errors.absolute(c.errors.load(Ordering::Relaxed));
        let (stats, n, bytes, limit) = {
            let agg = shared.aggregator.lock().unwrap_or_else(|p| p.into_inner());
            (
                agg.stats,
                agg.live_series(),
                agg.state_bytes(),
                agg.max_bytes(),
            )
        };
        dropped_budget.absolute(stats.over_budget);
        series_refused_budget.absolute(stats.series_refused_budget);
        set_members_refused.absolute(stats.set_members_refused);
        cache_clears.absolute(stats.cache_clears);
        state_cache.set(bytes.cache as f64);
        state_series.set(bytes.series as f64);
        state_sets.set(bytes.sets as f64);
        state_limit.set(limit as f64);
        lines.absolute(stats.lines);
        malformed.absolute(stats.malformed);
        dropped_mapping.absolute(stats.mapped_drop);
        dropped_ambiguous.absolute(stats.ambiguous);
        dropped_conflict.absolute(stats.type_conflict);
        dropped_cap.absolute(stats.over_cap);
        series_dropped.absolute(stats.series_refused);
        series_expired.absolute(stats.series_expired);
        live.set(n as f64);
        backlog.set(shared.backlog.lock().expect("backlog lock").datums() as f64);
        if let Some(d) = kernel_drops.as_ref().and_then(|k| k.read()) {
            kernel.absolute(d);
        }
        if airside_core::shutdown::sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
            return;
        }
    }
}

/// Text of a chunk of the StatsD series on `/metrics`: enough to keep a write going,
/// small next to the series themselves (100,000 series are ~40 MB of text).
const EXPOSITION_CHUNK: usize = 64 * 1024;

/// One scrape's StatsD series and signal, rendered a chunk at a time as the client reads
/// (see [`prometheus::render_series_chunk`]).
struct Exposition {
    shared: Arc<Shared>,
    cursor: aggregate::SeriesCursor,
    series_left: bool,
    done: bool,
}

impl Iterator for Exposition {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        // Room for the last series of the chunk too (a histogram is ~1 KiB of text).
        let mut out = String::with_capacity(EXPOSITION_CHUNK + 8 * 1024);
        if self.series_left {
            let agg = self
                .shared
                .aggregator
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.series_left =
                prometheus::render_series_chunk(&agg, &mut self.cursor, EXPOSITION_CHUNK, &mut out);
            return Some(out);
        }
        self.done = true;
        let source_age = self
            .shared
            .aggregator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .signal
            .source_age(Instant::now());
        let signal = *self
            .shared
            .last_signal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The signal stays on /metrics only while the source is fresh.
        let signal = signal
            .filter(|_| source_age.is_some_and(|a| a <= self.shared.signal_settings.freshness));
        prometheus::render_signal(signal, source_age, &mut out);
        Some(out)
    }
}
