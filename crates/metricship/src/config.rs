//! metricship's configuration: every flag also reads a `METRICSHIP_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airside_core::config::{parse_bytes, parse_duration, parse_socket_addr};
use clap::{Args, Parser, Subcommand};

use crate::ingest::{Listen, parse_listen};

airside_core::log_args!(LogArgs, "METRICSHIP_LOG_FORMAT", "METRICSHIP_LOG");

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

/// Receives Airflow's StatsD, serves Prometheus, publishes an allowlisted set to
/// CloudWatch and computes the signal that scales Celery workers.
#[derive(Debug, Parser)]
#[command(
    name = "metricship",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: run the daemon).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Daemon settings.
    #[command(flatten)]
    pub config: Config,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 when the running daemon's /readyz answers 200 (for ECS health checks).
    Healthcheck {
        /// The daemon's admin address.
        #[arg(long, env = "METRICSHIP_ADMIN_ADDR", default_value = "127.0.0.1:9402", value_parser = parse_socket_addr)]
        admin_addr: SocketAddr,
        /// How long to wait for an answer.
        #[arg(long, env = "METRICSHIP_HEALTHCHECK_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// How the daemon runs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Where StatsD arrives: IP:PORT (UDP) or unix:///path (a unix datagram socket).
    #[arg(long, env = "METRICSHIP_STATSD_ADDR", default_value = "127.0.0.1:8125", value_parser = parse_listen)]
    pub statsd_addr: Listen,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "METRICSHIP_ADMIN_ADDR", default_value = "127.0.0.1:9402", value_parser = parse_socket_addr)]
    pub admin_addr: SocketAddr,

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

    /// On SIGTERM, how long to keep sending the backlog (keep it below the task's stopTimeout).
    #[arg(long, env = "METRICSHIP_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
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

impl Config {
    /// The allowlist in force.
    pub fn allowlist(&self) -> Vec<String> {
        if self.cloudwatch_allow.is_empty() {
            DEFAULT_ALLOWLIST.iter().map(|s| s.to_string()).collect()
        } else {
            self.cloudwatch_allow.clone()
        }
    }

    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Self {
        Cli::parse_from(["metricship"]).config
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
        let c = Cli::try_parse_from([
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
        .unwrap()
        .config;
        assert_eq!(
            c.dimensions,
            vec![
                ("Cluster".into(), "prod".into()),
                ("Env".into(), "dev".into())
            ]
        );
        assert_eq!(c.flush_interval, Duration::from_secs(2));
        assert_eq!(c.allowlist(), vec!["airflow_*".to_string()]);
        assert!(Cli::try_parse_from(["metricship", "--dimension", "nope"]).is_err());
        assert!(Cli::try_parse_from(["metricship", "--worker-concurrency", "0"]).is_err());
        let h = Cli::try_parse_from(["metricship", "healthcheck", "--admin-addr", "127.0.0.1:1"])
            .unwrap();
        assert!(matches!(h.command, Some(Command::Healthcheck { .. })));
    }
}
