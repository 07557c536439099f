//! Command-line and environment configuration.
//!
//! Every flag also reads a `LOGSHIP_*` environment variable (ECS passes
//! configuration as environment). List flags (`--path`, `--output`) accept
//! several values, or one comma-separated value from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airside_core::config::{parse_duration, parse_socket_addr};
use clap::{Args, Parser, Subcommand};

airside_core::log_args!(LogArgs, "LOGSHIP_LOG_FORMAT", "LOGSHIP_LOG");

/// The S3 key template used when `--s3-key-template` is not given.
pub const DEFAULT_KEY_TEMPLATE: &str =
    "dag_id={dag_id}/{yyyy}/{mm}/{dd}/{host}-{hh}{mi}{ss}-{uuid}.ndjson.gz";

/// `logship`: tails Airflow task logs and ships them to Firehose, S3 or stdout.
#[derive(Debug, Parser)]
#[command(
    name = "logship",
    version,
    about = "Tails Airflow task logs and ships them to Kinesis Data Firehose and S3 without losing lines",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// A subcommand; without one, logship ships logs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Shipping flags.
    #[command(flatten)]
    pub ship: ShipArgs,
    /// Logging flags.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 when the running logship's /readyz answers 200 (for ECS container health checks).
    Healthcheck {
        /// The admin address of the running logship.
        #[arg(long, env = "LOGSHIP_ADMIN_ADDR", default_value = "127.0.0.1:9401", value_parser = parse_socket_addr)]
        admin_addr: SocketAddr,
        /// How long to wait for an answer.
        #[arg(long, env = "LOGSHIP_HEALTHCHECK_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Flags of the shipping daemon.
#[derive(Debug, Clone, Args)]
pub struct ShipArgs {
    /// Globs of log files to follow (`**` crosses directories).
    #[arg(
        long = "path",
        env = "LOGSHIP_PATH",
        value_delimiter = ',',
        default_value = "/opt/airflow/logs/**/*.log"
    )]
    pub paths: Vec<String>,
    /// Where records go: firehose:STREAM, s3://BUCKET/PREFIX or stdout. Repeatable.
    #[arg(long = "output", env = "LOGSHIP_OUTPUT", value_delimiter = ',', required = true, value_parser = parse_output)]
    pub outputs: Vec<OutputSpec>,
    /// Directory of the checkpoint file; must outlive the container (a task or EFS volume).
    #[arg(long, env = "LOGSHIP_STATE_DIR", default_value = "/var/lib/logship")]
    pub state_dir: PathBuf,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "LOGSHIP_ADMIN_ADDR", default_value = "127.0.0.1:9401", value_parser = parse_socket_addr)]
    pub admin_addr: SocketAddr,
    /// Longest drain after SIGTERM; keep it below the task definition's stopTimeout.
    #[arg(long, env = "LOGSHIP_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How often files are looked for and read without a change event (the EFS/NFS fallback).
    #[arg(long, env = "LOGSHIP_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Directories never watched for change events, only polled (mount points of EFS/NFS).
    #[arg(long = "no-watch", env = "LOGSHIP_NO_WATCH", value_delimiter = ',')]
    pub no_watch: Vec<PathBuf>,
    /// How long a traceback may wait for its next line before it is sent as it is.
    #[arg(long, env = "LOGSHIP_MULTILINE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub multiline_timeout: Duration,
    /// Longest time a record waits in a Firehose batch before the batch is sent.
    #[arg(long, env = "LOGSHIP_LINGER", default_value = "1s", value_parser = parse_duration)]
    pub linger: Duration,
    /// Pack NDJSON lines into one Firehose record up to this size (at most 1000KiB).
    #[arg(long, env = "LOGSHIP_FIREHOSE_RECORD_SIZE", default_value = "256KiB", value_parser = parse_size)]
    pub firehose_record_size: u64,
    /// S3 object key template below the output's prefix.
    #[arg(long, env = "LOGSHIP_S3_KEY_TEMPLATE", default_value = DEFAULT_KEY_TEMPLATE)]
    pub s3_key_template: String,
    /// Roll an S3 object when its compressed size reaches this.
    #[arg(long, env = "LOGSHIP_S3_MAX_OBJECT_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub s3_max_object_size: u64,
    /// Roll an S3 object when it is this old.
    #[arg(long, env = "LOGSHIP_S3_MAX_OBJECT_AGE", default_value = "60s", value_parser = parse_duration)]
    pub s3_max_object_age: Duration,
    /// Upper bound of the memory all open S3 objects hold together; beyond it the oldest
    /// is rolled early (a per-task key template opens one object per task).
    #[arg(long, env = "LOGSHIP_S3_MAX_BUFFERED", default_value = "16MiB", value_parser = parse_size)]
    pub s3_max_buffered: u64,
    /// Multipart part size for large S3 objects (at least 5MiB).
    #[arg(long, env = "LOGSHIP_S3_PART_SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub s3_part_size: u64,
}

/// One output destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// A Kinesis Data Firehose delivery stream.
    Firehose {
        /// The delivery stream name.
        stream: String,
    },
    /// Gzip NDJSON objects in an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty; no leading slash).
        prefix: String,
    },
    /// NDJSON on standard output.
    Stdout,
}

impl std::fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputSpec::Firehose { stream } => write!(f, "firehose:{stream}"),
            OutputSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            OutputSpec::Stdout => f.write_str("stdout"),
        }
    }
}

/// Parses `firehose:STREAM`, `s3://BUCKET/PREFIX` or `stdout`.
pub fn parse_output(text: &str) -> Result<OutputSpec, String> {
    let text = text.trim();
    if text == "stdout" || text == "-" {
        return Ok(OutputSpec::Stdout);
    }
    if let Some(stream) = text.strip_prefix("firehose:") {
        if stream.is_empty() || stream.len() > 64 {
            return Err(format!(
                "invalid output {text:?}: a delivery stream name has 1 to 64 characters"
            ));
        }
        return Ok(OutputSpec::Firehose {
            stream: stream.to_string(),
        });
    }
    if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 || bucket.len() > 63 {
            return Err(format!(
                "invalid output {text:?}: a bucket name has 3 to 63 characters"
            ));
        }
        return Ok(OutputSpec::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    Err(format!(
        "invalid output {text:?}: use firehose:STREAM_NAME, s3://BUCKET/PREFIX or stdout"
    ))
}

/// Parses a size such as `256KiB`, `8MiB`, `1000KiB`, `4096` (bytes) or `5MB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {text:?}: use a number with a unit, e.g. 256KiB, 8MiB")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "KB" | "kB" => 1000,
        "MiB" | "M" => 1024 * 1024,
        "MB" => 1_000_000,
        "GiB" | "G" => 1024 * 1024 * 1024,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_an_environment_variable() {
        use clap::CommandFactory;
        // ECS passes configuration as environment (the README's promise).
        airside_core::config::assert_every_flag_has_env(&Cli::command(), "LOGSHIP_");
    }

    #[test]
    fn outputs_parse() {
        assert_eq!(
            parse_output("firehose:logs").unwrap(),
            OutputSpec::Firehose {
                stream: "logs".into()
            }
        );
        assert_eq!(
            parse_output("s3://my-bucket/airflow/logs/").unwrap(),
            OutputSpec::S3 {
                bucket: "my-bucket".into(),
                prefix: "airflow/logs".into()
            }
        );
        assert_eq!(
            parse_output("s3://my-bucket").unwrap(),
            OutputSpec::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(parse_output("stdout").unwrap(), OutputSpec::Stdout);
        assert!(parse_output("kafka:x").is_err());
        assert!(parse_output("firehose:").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256KiB").unwrap(), 256 * 1024);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn healthcheck_needs_no_output() {
        let cli = Cli::try_parse_from(["logship", "healthcheck"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Healthcheck { .. })));
        assert!(Cli::try_parse_from(["logship"]).is_err());
        let cli = Cli::try_parse_from(["logship", "--output", "stdout"]).unwrap();
        assert_eq!(cli.ship.paths, vec!["/opt/airflow/logs/**/*.log"]);
        assert_eq!(cli.ship.shutdown_timeout, Duration::from_secs(25));
    }
}
