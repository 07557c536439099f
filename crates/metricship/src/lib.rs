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
//! 2. Prometheus scrapes render the cumulative state ([`prometheus`]); `health.rs`
//!    copies metricship's own counters into the registry once a second.
//! 3. Every flush interval (`flush.rs`) the aggregator's interval state becomes
//!    [`datum::Datum`]s: the allowlisted series plus QueueDepth, TaskDemand,
//!    DesiredWorkers and the `celery.queue_depth` alias (withheld while the scheduler
//!    is silent), checked against CloudWatch's [`rules`]. They go to CloudWatch
//!    through a bounded backlog ([`cloudwatch`]), or as EMF lines on stdout ([`emf`]).
//!
//! [`Running::start`] binds and spawns everything and returns the bound
//! addresses (tests use port 0); [`run`] is start + wait, used by `main`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
pub mod aggregate;
pub mod catalogue;
pub mod cloudwatch;
pub mod config;
pub mod datum;
pub mod emf;
mod flush;
mod health;
pub mod ingest;
pub mod mapping;
pub mod pipeline;
pub mod prometheus;
pub mod rules;
pub mod signal;
pub mod statsd;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airside_core::ExitCode;
use airside_core::admin::{AdminServer, Readiness};
use airside_core::aws::ErrorClass;
use airside_core::backoff::Backoff;
use airside_core::daemon::{Allocator, Daemon, Runtime};
use airside_core::exit::HasExitCode;
use airside_core::retry::{Retry, Verdict};
use airside_core::shutdown::{Shutdown, drain};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::aggregate::{Aggregator, AggregatorSettings};
use crate::cloudwatch::{Backlog, PublishError, Publisher};
pub use crate::config::Config;
use crate::datum::Allowlist;
use crate::flush::{flush_loop, flush_once};
use crate::health::export_health;
use crate::ingest::{Listen, ReceiveCounters, StatsdSocket};
pub use crate::pipeline::Output;
use crate::pipeline::Shared;
use crate::prometheus::Exposition;
use crate::signal::SignalSettings;

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
            Error::Config(_) | Error::BindStatsd { .. } => ExitCode::Usage,
            Error::BindAdmin(e) => e.exit_code(),
            Error::CloudWatchCheck { class, .. } => class.exit_code(),
            Error::Publish(PublishError::AccessDenied { .. }) => ExitCode::AccessDenied,
            Error::Aws(e) => e.exit_code(),
            Error::Internal(_) => ExitCode::Other,
        }
    }
}

/// A started daemon.
pub struct Running {
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
    Running::start(config, output, shutdown).await?.wait().await
}

/// metricship as the core's [`Daemon`]: `main` is `airside_core::daemon::main::<Metricship>()`.
pub struct Metricship;

impl Daemon for Metricship {
    const NAME: &'static str = "metricship";
    const ALLOCATOR: Allocator = Allocator::Default;
    // The receive thread is separate; two workers serve admin, flush and publish.
    const RUNTIME: Runtime = Runtime::MultiThread { workers: 2 };
    type Cli = config::Cli;
    type Config = Config;
    type Deps = Output;
    type Error = Error;

    fn config(args: config::Args) -> Result<Config, String> {
        Config::from_args(args)
    }

    async fn connect(config: &Config) -> Result<Output, Error> {
        output_for(config).await
    }

    async fn run(config: Config, output: Output, shutdown: Shutdown) -> Result<(), Error> {
        run(config, output, shutdown).await
    }
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

impl Running {
    /// Binds the sockets, checks CloudWatch in the background, and spawns the tasks.
    pub async fn start(config: Config, output: Output, shutdown: Shutdown) -> Result<Self, Error> {
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
            // Shutdown first: the flush loop also ends at shutdown, and when both are
            // ready an unbiased select could take that for a fatal end.
            biased;
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
                match r {
                    Ok(()) if self.shutdown.is_cancelled() => None,
                    Ok(()) => Some(Error::Internal("the flush task ended".to_string())),
                    Err(e) => Some(Error::Internal(format!("the flush task failed: {e}"))),
                }
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
                    telemetry::backlog_lost_at_shutdown(left, &timeout);
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
    let mut retry = Retry::daemon(backoff);
    loop {
        match publisher.check().await {
            Ok(()) => {
                tracing::info!(%namespace, "CloudWatch reachable");
                readiness.set_ready();
                return;
            }
            Err((class, message)) => {
                readiness.set_not_ready(format!("CloudWatch check failed: {message}"));
                let delay = match retry.failed(class) {
                    Verdict::RetryAfter(delay) => delay,
                    Verdict::GiveUp => {
                        let _ = fatal
                            .send(Error::CloudWatchCheck {
                                namespace,
                                class,
                                message,
                            })
                            .await;
                        return;
                    }
                };
                tracing::warn!(error = %message, class = class.as_str(), retry_in = ?delay, "CloudWatch check failed; retrying");
                if airside_core::shutdown::sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}
