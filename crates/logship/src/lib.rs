//! logship: an Airflow-aware log forwarder to Kinesis Data Firehose and S3 that loses nothing.
//!
//! Layout, in the order data flows: inputs → records → chunks → outputs, with the
//! checkpoint ledger beside them.
//!
//! * [`config`]: flags and `LOGSHIP_*` environment variables.
//! * [`input`]: where records come from. [`input::files`] finds files by glob (change
//!   events plus polling), identifies them by device, inode and a fingerprint of the
//!   first line, follows appends and rotation, and cuts lines. The FireLens forward
//!   protocol is the next input, a sibling of `files`.
//! * [`record`]: joins tracebacks, reads Airflow 2 text and Airflow 3 JSON lines
//!   and writes one JSON record per logical line, with Airflow and ECS fields.
//! * [`chunk`]: the run of encoded records an input hands to every output.
//! * [`output`]: Firehose, S3 and stdout; each acknowledges what its destination accepted.
//! * [`checkpoint`]: per-file checkpoints that advance only on acknowledgement,
//!   persisted atomically — the log file itself is the buffer.
//!
//! [`run`] wires these together under one shutdown token: on SIGTERM discovery
//! stops, every file is read to where it ended when the signal came, outputs
//! deliver, checkpoints are committed, all within `--drain-timeout`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod input;
pub mod output;
pub mod read_request;
pub mod record;
pub mod telemetry;

use std::sync::Arc;
use std::time::Instant;

use airside_core::ExitCode;
use airside_core::admin::{AdminServer, BindError, Readiness};
use airside_core::aws::{AwsSettings, AwsSetupError};
use airside_core::ecs::TaskMetadata;
use airside_core::exit::HasExitCode;
use airside_core::shutdown::{DrainTimedOut, Shutdown, drain};
use tokio::sync::mpsc;

use crate::checkpoint::{Ledger, StateError};
pub use crate::config::Config;
use crate::config::{OutputSpec, ShipArgs};
use crate::input::files::{TailError, TailSettings, Tailer};
use crate::output::{Acker, Output, OutputError};
use airside_core::daemon::{Allocator, Daemon, Runtime};

/// Why logship stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has a value logship cannot use.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The state directory is not usable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The admin address could not be bound.
    #[error(transparent)]
    Admin(#[from] BindError),
    /// AWS could not be set up.
    #[error(transparent)]
    Aws(#[from] AwsSetupError),
    /// An output gave up (missing destination, access denied).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The tailer stopped.
    #[error(transparent)]
    Tail(#[from] TailError),
    /// The forward input could not start (its listeners, its buffer).
    #[error(transparent)]
    Forward(#[from] input::forward::ForwardError),
    /// The drain after SIGTERM did not finish in time.
    #[error("{0}; what was not delivered will be sent again from the checkpoint at the next start")]
    Drain(#[from] DrainTimedOut),
    /// A task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl HasExitCode for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Usage,
            Error::Admin(e) => e.exit_code(),
            Error::Aws(e) => e.exit_code(),
            Error::Tail(TailError::Glob { .. }) => ExitCode::Usage,
            Error::State(_) => ExitCode::Destination,
            Error::Forward(input::forward::ForwardError::Listen(_)) => ExitCode::Usage,
            Error::Forward(input::forward::ForwardError::Buffer(_)) => ExitCode::Destination,
            Error::Output(e) => e.class.exit_code(),
            Error::Tail(_) | Error::Drain(_) | Error::Internal(_) => ExitCode::Other,
        }
    }
}

fn host_name(ecs: Option<&TaskMetadata>) -> String {
    if let Some(md) = ecs
        && !md.task_id().is_empty()
    {
        return md.task_id().to_string();
    }
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "logship".into())
}

/// The AWS clients logship's outputs use; `None` where no output needs one. Tests hand
/// in clients of their own (a fault proxy, the emulator).
#[derive(Clone, Default)]
pub struct Clients {
    /// For `firehose:` outputs.
    pub firehose: Option<aws_sdk_firehose::Client>,
    /// For `s3://` outputs.
    pub s3: Option<aws_sdk_s3::Client>,
}

impl Clients {
    /// Builds the clients `config`'s outputs need from the environment's AWS settings.
    pub async fn from_env(config: &Config) -> Result<Self, AwsSetupError> {
        let all = config.all_outputs();
        let wants = |f: fn(&OutputSpec) -> bool| all.iter().any(|(o, _)| f(o));
        let wants_firehose = wants(|o| matches!(o, OutputSpec::Firehose { .. }));
        let wants_s3 = wants(|o| matches!(o, OutputSpec::S3 { .. } | OutputSpec::AirflowS3 { .. }));
        if !wants_firehose && !wants_s3 {
            return Ok(Self::default());
        }
        let sdk = airside_core::aws::load(&AwsSettings::default()).await?;
        Ok(Self {
            firehose: wants_firehose.then(|| aws_sdk_firehose::Client::new(&sdk)),
            s3: wants_s3.then(|| {
                let conf = aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(airside_core::aws::use_path_style(&sdk))
                    .build();
                aws_sdk_s3::Client::from_conf(conf)
            }),
        })
    }
}

/// logship as the core's [`Daemon`]: `main` is `airside_core::daemon::main::<Logship>()`.
pub struct Logship;

impl Daemon for Logship {
    const NAME: &'static str = "logship";
    // Every Firehose call builds a body of up to 2.7 MB (base64 JSON): reuse those
    // buffers rather than fault in fresh pages for each call.
    const ALLOCATOR: Allocator = Allocator::KeepFreedBuffers(8 << 20);
    const RUNTIME: Runtime = Runtime::MultiThread { workers: 2 };
    type Cli = config::Cli;
    type Config = Config;
    type Deps = Clients;
    type Error = Error;

    fn config(args: ShipArgs) -> Result<Config, String> {
        Config::from_args(args)
    }

    async fn connect(config: &Config) -> Result<Clients, Error> {
        Ok(Clients::from_env(config).await?)
    }

    async fn run(config: Config, clients: Clients, shutdown: Shutdown) -> Result<(), Error> {
        run(config, clients, shutdown).await
    }
}

/// Runs logship until `shutdown`, then drains within `--drain-timeout`. The admin server
/// answers until the drain is over.
pub async fn run(config: Config, clients: Clients, shutdown: Shutdown) -> Result<(), Error> {
    // Opening the buffer counts what it finds (a torn tail): the recorder must exist.
    airside_core::admin::install_metrics();
    let (ledger, restored) = Ledger::open(&config.state_dir, config.outputs.len())?;
    let ledger = Arc::new(ledger);
    let forward = match &config.forward {
        Some(f) => Some(
            input::forward::Bound::open(
                &f.buffer_dir,
                config.all_outputs().len(),
                f.buffer_max_bytes,
                f.socket.as_deref(),
                f.listen,
                f.health,
            )
            .await?,
        ),
        None => None,
    };
    let buffer_ledger = forward.as_ref().map(|f| f.ledger.clone());
    let unreadable = input::files::Unreadable::default();
    let report = unreadable.clone();
    let readiness = Readiness::new("checking outputs").with_detail(move || report.describe());
    let admin = AdminServer::bind(config.admin_addr, readiness.clone()).await?;
    let result = admin
        .serve_during(run_inner(
            config,
            clients,
            shutdown,
            ledger.clone(),
            restored,
            readiness,
            unreadable,
            forward,
        ))
        .await;
    // Whatever happened, keep what was acknowledged.
    for l in std::iter::once(&ledger).chain(buffer_ledger.as_ref()) {
        if let Err(e) = l.persist() {
            tracing::error!(error = %e, "cannot write the final checkpoint");
        }
    }
    result
}

// One call site; the arguments are the pieces run() set up before the admin server.
#[allow(clippy::too_many_arguments)]
async fn run_inner(
    args: Config,
    clients: Clients,
    shutdown: Shutdown,
    ledger: Arc<Ledger>,
    restored: Vec<checkpoint::Entry>,
    readiness: Readiness,
    unreadable: input::files::Unreadable,
    forward: Option<input::forward::Bound>,
) -> Result<(), Error> {
    let ecs = match TaskMetadata::from_env().await {
        Some(Ok(md)) => Some(md),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no ECS task metadata; records go without ECS fields");
            None
        }
        None => None,
    };
    let missing = |what: &str| {
        Error::Config(format!(
            "an {what} output is configured but no {what} client was given"
        ))
    };
    let buffer_ledger = forward.as_ref().map(|f| f.ledger.clone());
    let all_outputs = args.all_outputs();
    // Task log files feeding an airflow-s3 output are read when it uploads.
    let read_requests = (!args.paths.is_empty()
        && args
            .outputs
            .iter()
            .any(|o| matches!(o, OutputSpec::AirflowS3 { .. })))
    .then(|| Arc::new(read_request::ReadRequests::default()));
    let mut outputs = Vec::new();
    for (index, (spec, region)) in all_outputs.iter().enumerate() {
        let acker = Acker::new(ledger.clone(), index).with_buffer(buffer_ledger.clone());
        let out = match spec {
            OutputSpec::Stdout => Some(Output::Stdout(output::stdout::StdoutOutput::new(acker))),
            OutputSpec::Firehose { stream } => {
                let mut client = clients
                    .firehose
                    .clone()
                    .ok_or_else(|| missing("firehose"))?;
                if let Some(region) = region {
                    // A FireLens output's own region (its log option `region`).
                    let conf = client
                        .config()
                        .to_builder()
                        .region(aws_config::Region::new(region.clone()))
                        .build();
                    client = aws_sdk_firehose::Client::from_conf(conf);
                }
                output::firehose::FirehoseOutput::connect(
                    client,
                    stream,
                    args.firehose_record_size,
                    args.linger,
                    acker,
                    &shutdown,
                )
                .await?
                .map(Output::Firehose)
            }
            OutputSpec::S3 { bucket, prefix } => {
                let mut client = clients.s3.clone().ok_or_else(|| missing("s3"))?;
                if let Some(region) = region {
                    let conf = client
                        .config()
                        .to_builder()
                        .region(aws_config::Region::new(region.clone()))
                        .build();
                    client = aws_sdk_s3::Client::from_conf(conf);
                }
                let settings = output::s3::S3Settings {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    template: args.s3_key_template.clone(),
                    max_object_size: args.s3_max_object_size,
                    max_object_age: args.s3_max_object_age,
                    part_size: args.s3_part_size,
                    host: host_name(ecs.as_ref()),
                    max_buffered: args.s3_max_buffered,
                };
                output::s3::S3Output::connect(client, settings, acker, &shutdown)
                    .await?
                    .map(Output::S3)
            }
            OutputSpec::AirflowS3 { bucket, prefix } => {
                let client = clients.s3.clone().ok_or_else(|| missing("s3"))?;
                let settings = output::airflow::AirflowSettings {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    folder: args.airflow_log_folder.clone(),
                    flush_interval: args.airflow_flush_interval,
                    compact_after: args.airflow_compact_after,
                    max_buffered: args.airflow_max_buffered,
                    state_dir: args.state_dir.clone(),
                    index,
                    reads: read_requests.clone(),
                };
                output::airflow::AirflowOutput::connect(client, settings, acker, &shutdown)
                    .await?
                    .map(|o| Output::Airflow(Box::new(o)))
            }
        };
        match out {
            Some(o) => outputs.push(o),
            None => {
                tracing::info!("shutdown before the outputs were checked; nothing to do");
                return Ok(());
            }
        }
    }
    readiness.set_ready();
    tracing::info!(outputs = outputs.len(), paths = ?args.paths, forward = forward.is_some(), "ready; following logs");

    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for out in outputs {
        let (tx, rx) = mpsc::channel(output::CHANNEL_CAPACITY);
        senders.push(tx);
        tasks.push(tokio::spawn(out.run(rx)));
    }
    // The forward input feeds every output; files only the flags' outputs (FireLens
    // outputs take container output only).
    let forwarding = match (forward, &args.forward) {
        (Some(bound), Some(fc)) => {
            let settings = forward_settings(&args, fc, ecs.as_ref());
            let router = router(&args, fc);
            let buffer_checkpointer_stop = Shutdown::new();
            let buffer_checkpointer = tokio::spawn(checkpoint::write_loop(
                bound.ledger.clone(),
                buffer_checkpointer_stop.clone(),
            ));
            let task = tokio::spawn(input::forward::run(
                settings,
                bound.listeners,
                bound.buffer,
                router,
                senders.clone(),
                shutdown.clone(),
            ));
            Some((task, buffer_checkpointer, buffer_checkpointer_stop))
        }
        _ => None,
    };
    senders.truncate(args.outputs.len());
    if args.paths.is_empty() {
        senders.clear();
    }
    let tailer = Tailer::new(
        TailSettings {
            globs: args.paths.clone(),
            poll_interval: args.poll_interval,
            read_interval: args.read_interval,
            no_watch: args.no_watch.clone(),
            multiline_timeout: args.multiline_timeout,
            unreadable,
            keep_raw: args
                .outputs
                .iter()
                .any(|o| matches!(o, OutputSpec::AirflowS3 { .. })),
            records: args
                .outputs
                .iter()
                .any(|o| !matches!(o, OutputSpec::AirflowS3 { .. })),
            requests: read_requests,
        },
        ledger.clone(),
        restored,
        senders,
        ecs,
    )?;

    let checkpointer_stop = Shutdown::new();
    let checkpointer = tokio::spawn(checkpoint::write_loop(
        ledger.clone(),
        checkpointer_stop.clone(),
    ));

    let tail_token = shutdown.clone();
    let files_on = !args.paths.is_empty();
    let work = async move {
        let tailed = if files_on {
            tailer.run(tail_token).await
        } else {
            drop(tailer);
            Ok(())
        };
        let mut forward_err = None;
        if let Some((task, checkpointer, stop)) = forwarding {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => forward_err = Some(Error::Forward(e.into())),
                Err(e) => forward_err = Some(Error::Internal(e.to_string())),
            }
            // The outputs' last acknowledgements are persisted at the end of run().
            stop.cancel();
            let _ = checkpointer.await;
        }
        // The tailer dropped its senders: outputs flush and end. Their errors say more
        // than the tailer's "an output stopped".
        let mut first_err: Option<Error> = None;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(Error::Output(e));
                }
                Err(e) => {
                    first_err.get_or_insert(Error::Internal(e.to_string()));
                }
            }
        }
        if let Some(e) = forward_err {
            first_err.get_or_insert(e);
        }
        match (first_err, tailed) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(Error::Tail(e)),
            (None, Ok(())) => Ok(()),
        }
    };
    tokio::pin!(work);
    let result = tokio::select! {
        r = &mut work => r,
        _ = shutdown.cancelled() => {
            let started = Instant::now();
            let r = match drain(args.drain_timeout, &mut work).await {
                Ok(r) => r,
                Err(t) => Err(Error::Drain(t)),
            };
            tracing::info!(took = ?started.elapsed(), ok = r.is_ok(), "drain finished");
            r
        }
    };
    checkpointer_stop.cancel();
    let _ = checkpointer.await;
    result
}

fn forward_settings(
    args: &Config,
    fc: &config::ForwardConfig,
    ecs: Option<&TaskMetadata>,
) -> input::forward::ForwardSettings {
    // The task's fields: as FireLens' record_modifier adds them when its file says so,
    // else from the task metadata endpoint under logship's usual names.
    let fields = match &fc.firelens {
        Some(f) if !f.fields.is_empty() => f.fields.clone(),
        _ => ecs
            .map(|md| {
                [
                    ("ecs_cluster", &md.cluster),
                    ("ecs_task_arn", &md.task_arn),
                    ("ecs_family", &md.family),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
            })
            .unwrap_or_default(),
    };
    input::forward::ForwardSettings {
        limits: input::forward::frame::Limits::default(),
        multiline_timeout: args.multiline_timeout,
        quiet: fc.quiet,
        linger_max: args.drain_timeout / 2,
        max_connections: fc.max_connections,
        fields,
    }
}

fn router(args: &Config, fc: &config::ForwardConfig) -> input::forward::Router {
    let all = args.all_outputs();
    // Without a FireLens route, container records go to the flags' outputs that take
    // records (airflow-s3 takes task log files only).
    let default = all
        .iter()
        .enumerate()
        .map(|(i, (o, _))| i < args.outputs.len() && !matches!(o, OutputSpec::AirflowS3 { .. }))
        .collect();
    let firelens = fc.firelens.as_ref().map(|f| {
        let targets = f
            .routes
            .iter()
            .map(|r| {
                r.target.as_ref().and_then(|t| {
                    all.iter().position(|(o, region)| {
                        *o == t.spec && (region.is_none() || *region == t.region)
                    })
                })
            })
            .collect();
        (f.clone(), targets)
    });
    input::forward::Router::new(all.len(), default, firelens)
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that
/// only fires when something is due).
pub(crate) async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
