//! metricship's configuration: every flag also reads a `METRICSHIP_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airside_core::config::{parse_bytes, parse_duration};

use crate::ingest::{Listen, parse_listen};

/// The CloudWatch allowlist used when none is given: the autoscaling signal and
/// a few scheduler health metrics.
pub const DEFAULT_ALLOWLIST: &[&str] = &[
    "QueueDepth",
    "TaskDemand",
    "DesiredWorkers",
    "celery.queue_depth",
    "airflow_scheduler_heartbeat",
    "airflow_executor_open_slots",
    "airflow_executor_queued_tasks",
    "airflow_executor_running_tasks",
    "airflow_pool_queued_slots",
    "airflow_pool_open_slots",
    "airflow_scheduler_tasks_starving",
    "airflow_dag_processing_import_errors",
];

airside_core::daemon_cli! {
    name: "metricship",
    prefix: "METRICSHIP",
    about: "Receives Airflow's StatsD, serves Prometheus, publishes an allowlisted set to CloudWatch and computes the signal that scales Celery workers.",
    admin: "127.0.0.1:9402",
    drain: "20s",
    args: Args,
}

/// The daemon's flags, as parsed; [`Config::from_args`] validates them.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where StatsD arrives: IP:PORT (UDP) or unix:///path (a unix datagram socket).
    #[arg(long, env = "METRICSHIP_STATSD_ADDR", default_value = "127.0.0.1:8125", value_parser = parse_listen)]
    pub statsd_addr: Listen,

    /// Admin address and drain bound (on SIGTERM, how long to keep sending the backlog).
    #[command(flatten)]
    pub lifecycle: Lifecycle,

    /// CloudWatch namespace.
    #[arg(long, env = "METRICSHIP_NAMESPACE", default_value = "Airflow")]
    pub namespace: String,

    /// How often interval values go to CloudWatch (or EMF) and the signal is computed.
    #[arg(long, env = "METRICSHIP_FLUSH_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// A dimension added to every CloudWatch datum, NAME=VALUE (repeatable; comma-separated in the variable).
    #[arg(long = "dimension", env = "METRICSHIP_DIMENSIONS", value_delimiter = ',', value_parser = parse_dimension)]
    pub dimensions: Vec<(String, String)>,

    /// A statsd_exporter-style mapping file; its rules come before the built-in Airflow catalogue.
    #[arg(long, env = "METRICSHIP_MAPPING")]
    pub mapping: Option<PathBuf>,

    /// Do not publish to CloudWatch at all (Prometheus only).
    #[arg(long, env = "METRICSHIP_NO_CLOUDWATCH")]
    pub no_cloudwatch: bool,

    /// Write CloudWatch Embedded Metric Format lines on stdout instead of calling PutMetricData.
    #[arg(long, env = "METRICSHIP_EMF", conflicts_with = "no_cloudwatch")]
    pub emf: bool,

    /// Tasks one Celery worker runs at once (worker_concurrency).
    #[arg(long, env = "METRICSHIP_WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub worker_concurrency: u32,

    /// Lower bound of DesiredWorkers.
    #[arg(long, env = "METRICSHIP_MIN_WORKERS", default_value_t = 0)]
    pub min_workers: u32,

    /// Upper bound of DesiredWorkers.
    #[arg(long, env = "METRICSHIP_MAX_WORKERS", default_value_t = 10)]
    pub max_workers: u32,

    /// Send the signal at 1-second storage resolution (high-resolution custom metrics).
    #[arg(long, env = "METRICSHIP_HIGH_RESOLUTION")]
    pub high_resolution: bool,

    /// CloudWatch allowlist: glob on metric names (repeatable; comma-separated in the
    /// variable). Default: the autoscaling signal and scheduler health metrics.
    #[arg(
        long = "cloudwatch-allow",
        env = "METRICSHIP_CLOUDWATCH_ALLOW",
        value_delimiter = ','
    )]
    pub cloudwatch_allow: Vec<String>,

    /// The signal is withheld when the scheduler has been silent this long.
    #[arg(long, env = "METRICSHIP_FRESHNESS_WINDOW", default_value = "90s", value_parser = parse_duration)]
    pub freshness_window: Duration,

    /// Upper bound of live series; new series beyond it are dropped and counted.
    #[arg(long, env = "METRICSHIP_MAX_SERIES", default_value_t = 100_000)]
    pub max_series: usize,

    /// Upper bound of the state any sender can make metricship keep (raw-name cache,
    /// series, set members), estimated in bytes: new series and set members beyond it are
    /// refused and counted. The default leaves half of the 128 MiB the task definitions
    /// give the container for the rest (receive buffers, a scrape, the backlog).
    #[arg(long, env = "METRICSHIP_MEMORY_BUDGET", default_value = "48MiB", value_parser = parse_bytes)]
    pub memory_budget: u64,

    /// Series without samples for this long are forgotten.
    #[arg(long, env = "METRICSHIP_SERIES_TTL", default_value = "15m", value_parser = parse_duration)]
    pub series_ttl: Duration,

    /// Airflow's statsd_prefix (empty for none): where the catalogue and the signal look.
    #[arg(long, env = "METRICSHIP_STATSD_PREFIX", default_value = "airflow")]
    pub statsd_prefix: String,

    /// Socket receive buffer in bytes (the kernel may cap it at net.core.rmem_max).
    #[arg(long, env = "METRICSHIP_RECV_BUFFER", default_value_t = 8 * 1024 * 1024)]
    pub recv_buffer: usize,

    /// Datums kept while CloudWatch is unreachable; beyond it the oldest are dropped.
    #[arg(long, env = "METRICSHIP_BACKLOG_DATUMS", default_value_t = 20_000)]
    pub backlog_datums: usize,
}

fn parse_dimension(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!(
            "invalid dimension {text:?} (use NAME=VALUE, for example Cluster=prod)"
        )),
    }
}

/// A validated configuration: what [`crate::run`] runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of /healthz, /readyz and /metrics.
    pub admin_addr: SocketAddr,
    /// On SIGTERM, how long to keep sending the backlog.
    pub drain_timeout: Duration,
    /// See `--statsd-addr`.
    pub statsd_addr: Listen,
    /// See `--namespace`.
    pub namespace: String,
    /// See `--flush-interval`.
    pub flush_interval: Duration,
    /// See `--dimension`.
    pub dimensions: Vec<(String, String)>,
    /// See `--mapping`.
    pub mapping: Option<PathBuf>,
    /// See `--no-cloudwatch`.
    pub no_cloudwatch: bool,
    /// See `--emf`.
    pub emf: bool,
    /// See `--worker-concurrency`.
    pub worker_concurrency: u32,
    /// See `--min-workers`.
    pub min_workers: u32,
    /// See `--max-workers`.
    pub max_workers: u32,
    /// See `--high-resolution`.
    pub high_resolution: bool,
    /// See `--cloudwatch-allow`.
    pub cloudwatch_allow: Vec<String>,
    /// See `--freshness-window`.
    pub freshness_window: Duration,
    /// See `--max-series`.
    pub max_series: usize,
    /// See `--memory-budget`.
    pub memory_budget: u64,
    /// See `--series-ttl`.
    pub series_ttl: Duration,
    /// See `--statsd-prefix`.
    pub statsd_prefix: String,
    /// See `--recv-buffer`.
    pub recv_buffer: usize,
    /// See `--backlog-datums`.
    pub backlog_datums: usize,
}

impl Config {
    /// Validates the flags. Errors read as instructions.
    pub fn from_args(args: Args) -> Result<Self, String> {
        if args.flush_interval < Duration::from_millis(100) {
            return Err("--flush-interval must be at least 100ms".into());
        }
        if args.min_workers > args.max_workers {
            return Err(format!(
                "--min-workers ({}) is above --max-workers ({})",
                args.min_workers, args.max_workers
            ));
        }
        if args.namespace.is_empty() || args.namespace.starts_with("AWS/") {
            return Err(format!(
                "--namespace {:?} is not usable for custom metrics",
                args.namespace
            ));
        }
        if args.lifecycle.drain_timeout.is_zero() {
            return Err("--drain-timeout must be above zero".into());
        }
        Ok(Self {
            admin_addr: args.lifecycle.admin_addr,
            drain_timeout: args.lifecycle.drain_timeout,
            statsd_addr: args.statsd_addr,
            namespace: args.namespace,
            flush_interval: args.flush_interval,
            dimensions: args.dimensions,
            mapping: args.mapping,
            no_cloudwatch: args.no_cloudwatch,
            emf: args.emf,
            worker_concurrency: args.worker_concurrency,
            min_workers: args.min_workers,
            max_workers: args.max_workers,
            high_resolution: args.high_resolution,
            cloudwatch_allow: args.cloudwatch_allow,
            freshness_window: args.freshness_window,
            max_series: args.max_series,
            memory_budget: args.memory_budget,
            series_ttl: args.series_ttl,
            statsd_prefix: args.statsd_prefix,
            recv_buffer: args.recv_buffer,
            backlog_datums: args.backlog_datums,
        })
    }

    /// The allowlist in force.
    pub fn allowlist(&self) -> Vec<String> {
        if self.cloudwatch_allow.is_empty() {
            DEFAULT_ALLOWLIST.iter().map(|s| s.to_string()).collect()
        } else {
            self.cloudwatch_allow.clone()
        }
    }

    /// A configuration with every default (whatever `METRICSHIP_*` variables are set),
    /// for tests and embedding.
    pub fn defaults() -> Self {
        let cli: Cli =
            airside_core::daemon::parse_without_env(&["metricship"]).expect("the defaults parse");
        Self::from_args(cli.args).expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_environment_variable() {
        // ECS passes configuration as environment (the README's promise).
        airside_core::config::assert_every_flag_has_env(&Cli::command(), "METRICSHIP_");
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = Config::defaults();
        assert_eq!(
            c.statsd_addr,
            Listen::Udp("127.0.0.1:8125".parse().unwrap())
        );
        assert_eq!(c.admin_addr, "127.0.0.1:9402".parse().unwrap());
        assert_eq!(c.namespace, "Airflow");
        assert_eq!(c.flush_interval, Duration::from_secs(60));
        assert_eq!(
            (c.worker_concurrency, c.min_workers, c.max_workers),
            (16, 0, 10)
        );
        assert!(!c.no_cloudwatch && !c.emf && !c.high_resolution);
        assert!(c.allowlist().contains(&"celery.queue_depth".to_string()));
    }

    #[test]
    fn flags_parse() {
        let cli: Cli = airside_core::daemon::parse_without_env(&[
            "metricship",
            "--dimension",
            "Cluster=prod",
            "--dimension",
            "Env=dev",
            "--flush-interval",
            "2s",
            "--cloudwatch-allow",
            "airflow_*",
            "--statsd-addr",
            "unix:///run/statsd.sock",
        ])
        .unwrap();
        let c = Config::from_args(cli.args).unwrap();
        assert_eq!(
            c.dimensions,
            vec![
                ("Cluster".into(), "prod".into()),
                ("Env".into(), "dev".into())
            ]
        );
        assert_eq!(c.flush_interval, Duration::from_secs(2));
        assert_eq!(c.allowlist(), vec!["airflow_*".to_string()]);
        let parse = airside_core::daemon::parse_without_env::<Cli>;
        assert!(parse(&["metricship", "--dimension", "nope"]).is_err());
        assert!(parse(&["metricship", "--worker-concurrency", "0"]).is_err());
        let h = parse(&["metricship", "healthcheck", "--admin-addr", "127.0.0.1:1"]).unwrap();
        assert!(matches!(h.command, Some(Command::Healthcheck { .. })));
    }
}
