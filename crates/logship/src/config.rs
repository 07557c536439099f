//! Command-line and environment configuration.
//!
//! Every flag also reads a `LOGSHIP_*` environment variable (ECS passes
//! configuration as environment). List flags (`--path`, `--output`) accept
//! several values, or one comma-separated value from the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airside_core::config::{parse_bytes, parse_duration};
use clap::Args;

use crate::output;

/// The S3 key template used when `--s3-key-template` is not given.
pub const DEFAULT_KEY_TEMPLATE: &str =
    "dag_id={dag_id}/{yyyy}/{mm}/{dd}/{host}-{hh}{mi}{ss}-{uuid}.ndjson.gz";

airside_core::daemon_cli! {
    name: "logship",
    prefix: "LOGSHIP",
    about: "Tails Airflow task logs and ships them to Kinesis Data Firehose and S3 without losing lines",
    admin: "127.0.0.1:9401",
    drain: "25s",
    args: ShipArgs,
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
    /// Where records go: firehose:STREAM, s3://BUCKET/PREFIX, airflow-s3://BUCKET/PREFIX
    /// (Airflow's remote-log layout; the API server's remote_base_log_folder) or stdout.
    /// Repeatable.
    /// Outputs named by a FireLens configuration (--firelens-config) come on top.
    #[arg(long = "output", env = "LOGSHIP_OUTPUT", value_delimiter = ',', value_parser = parse_output)]
    pub outputs: Vec<OutputSpec>,
    /// Directory of the checkpoint file; must outlive the container (a task or EFS volume).
    #[arg(long, env = "LOGSHIP_STATE_DIR", default_value = "/var/lib/logship")]
    pub state_dir: PathBuf,
    /// Admin address and drain bound (every file is read to where it ended at SIGTERM,
    /// delivered and checkpointed within it).
    #[command(flatten)]
    pub lifecycle: Lifecycle,
    /// How often folders that send no change events (EFS/NFS, `--no-watch`) are walked for
    /// new files; watched folders are walked on events, and every 30 s as a safety net.
    #[arg(long, env = "LOGSHIP_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How often followed files are looked at (one fstat each) and read if they grew.
    /// Writes are not watched: on a busy worker, one event per write cost more than the
    /// reading (bench/logship/RESULTS.md). This is the longest a line waits to be read;
    /// longer costs less CPU. Default 250ms; when every output is airflow-s3, the
    /// files are read when that output uploads (once per flush interval) and this
    /// defaults to the flush interval, as a safety net only.
    #[arg(long, env = "LOGSHIP_READ_INTERVAL", value_parser = parse_duration)]
    pub read_interval: Option<Duration>,
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
    #[arg(long, env = "LOGSHIP_FIREHOSE_RECORD_SIZE", default_value = "256KiB", value_parser = parse_bytes)]
    pub firehose_record_size: u64,
    /// S3 object key template below the output's prefix.
    #[arg(long, env = "LOGSHIP_S3_KEY_TEMPLATE", default_value = DEFAULT_KEY_TEMPLATE)]
    pub s3_key_template: String,
    /// Roll an S3 object when its compressed size reaches this.
    #[arg(long, env = "LOGSHIP_S3_MAX_OBJECT_SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    pub s3_max_object_size: u64,
    /// Roll an S3 object when it is this old.
    #[arg(long, env = "LOGSHIP_S3_MAX_OBJECT_AGE", default_value = "60s", value_parser = parse_duration)]
    pub s3_max_object_age: Duration,
    /// Upper bound of the memory all open S3 objects hold together; beyond it the oldest
    /// is rolled early (a per-task key template opens one object per task).
    #[arg(long, env = "LOGSHIP_S3_MAX_BUFFERED", default_value = "16MiB", value_parser = parse_bytes)]
    pub s3_max_buffered: u64,
    /// Multipart part size for large S3 objects (at least 5MiB).
    #[arg(long, env = "LOGSHIP_S3_PART_SIZE", default_value = "8MiB", value_parser = parse_bytes)]
    pub s3_part_size: u64,
    /// Airflow's base_log_folder: an airflow-s3 output keys each file by its path
    /// relative to it.
    #[arg(
        long,
        env = "LOGSHIP_AIRFLOW_LOG_FOLDER",
        default_value = "/opt/airflow/logs"
    )]
    pub airflow_log_folder: PathBuf,
    /// How often an airflow-s3 output uploads what a growing log file gained (the live
    /// view's delay).
    #[arg(long, env = "LOGSHIP_AIRFLOW_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub airflow_flush_interval: Duration,
    /// How long a log file stays quiet before an airflow-s3 output compacts its objects
    /// into one.
    #[arg(long, env = "LOGSHIP_AIRFLOW_COMPACT_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub airflow_compact_after: Duration,
    /// What log bytes waiting for an airflow-s3 upload may hold in memory; beyond it
    /// they are uploaded before the flush interval.
    #[arg(long, env = "LOGSHIP_AIRFLOW_MAX_BUFFERED", default_value = "8MiB", value_parser = parse_bytes)]
    pub airflow_max_buffered: u64,
    /// Receive container output over the Fluentd forward protocol: logship as the task's
    /// FireLens log router (the socket, the TCP port and the health check port below).
    #[arg(long, env = "LOGSHIP_FORWARD", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub forward: bool,
    /// The forward protocol's unix socket (FireLens' log driver writes here); empty: none.
    #[arg(
        long,
        env = "LOGSHIP_FORWARD_SOCKET",
        default_value = "/var/run/fluent.sock"
    )]
    pub forward_socket: String,
    /// The forward protocol's TCP address (fluent loggers in the task, UDP heartbeats on
    /// the same port); empty: none.
    #[arg(
        long,
        env = "LOGSHIP_FORWARD_LISTEN",
        default_value = "127.0.0.1:24224"
    )]
    pub forward_listen: String,
    /// The TCP port the router's health check connects to; empty: none.
    #[arg(long, env = "LOGSHIP_FORWARD_HEALTH", default_value = "127.0.0.1:8877")]
    pub forward_health: String,
    /// The configuration file the ECS agent generates for the log router; read when it
    /// exists, so containers' awsfirelens log options route their records.
    #[arg(
        long,
        env = "LOGSHIP_FIRELENS_CONFIG",
        default_value = "/fluent-bit/etc/fluent-bit.conf"
    )]
    pub firelens_config: PathBuf,
    /// Disk buffer of the forward input: received records are written here before they
    /// are acknowledged, and replayed after a restart.
    #[arg(
        long,
        env = "LOGSHIP_BUFFER_DIR",
        default_value = "/var/lib/logship/buffer"
    )]
    pub buffer_dir: PathBuf,
    /// Cap of the disk buffer; when it is full, connections are not read (backpressure).
    #[arg(long, env = "LOGSHIP_BUFFER_MAX_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub buffer_max_bytes: u64,
    /// After SIGTERM the forward input stays open until nothing arrived for this long
    /// (the application containers' last lines come after the router's SIGTERM), or
    /// until half of --drain-timeout is gone.
    #[arg(long, env = "LOGSHIP_FORWARD_QUIET", default_value = "2s", value_parser = parse_duration)]
    pub forward_quiet: Duration,
    /// Forward-protocol connections served at once (each holds at most one frame).
    #[arg(long, env = "LOGSHIP_FORWARD_MAX_CONNECTIONS", default_value_t = 64)]
    pub forward_max_connections: usize,
}

/// The forward input, when on.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The unix socket.
    pub socket: Option<PathBuf>,
    /// The TCP address.
    pub listen: Option<SocketAddr>,
    /// The health check address.
    pub health: Option<SocketAddr>,
    /// The disk buffer.
    pub buffer_dir: PathBuf,
    /// Its cap.
    pub buffer_max_bytes: u64,
    /// Quiet time that ends the linger after SIGTERM.
    pub quiet: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// The FireLens configuration, when the file exists.
    pub firelens: Option<crate::input::forward::firelens::Firelens>,
}

fn optional_addr(flag: &str, text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    airside_core::config::parse_socket_addr(text)
        .map(Some)
        .map_err(|e| format!("--{flag} {text:?}: {e}"))
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
    /// Task log files, unchanged, in Airflow's remote-log layout under
    /// `s3://BUCKET/PREFIX` (the API server's `remote_base_log_folder`).
    AirflowS3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty; no leading or trailing slash).
        prefix: String,
    },
}

impl std::fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputSpec::Firehose { stream } => write!(f, "firehose:{stream}"),
            OutputSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            OutputSpec::Stdout => f.write_str("stdout"),
            OutputSpec::AirflowS3 { bucket, prefix } => write!(f, "airflow-s3://{bucket}/{prefix}"),
        }
    }
}

/// Parses `firehose:STREAM`, `s3://BUCKET/PREFIX`, `airflow-s3://BUCKET/PREFIX` or `stdout`.
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
    for (scheme, airflow) in [("s3://", false), ("airflow-s3://", true)] {
        let Some(rest) = text.strip_prefix(scheme) else {
            continue;
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 || bucket.len() > 63 {
            return Err(format!(
                "invalid output {text:?}: a bucket name has 3 to 63 characters"
            ));
        }
        let (bucket, prefix) = (bucket.to_string(), prefix.trim_matches('/').to_string());
        return Ok(if airflow {
            OutputSpec::AirflowS3 { bucket, prefix }
        } else {
            OutputSpec::S3 { bucket, prefix }
        });
    }
    Err(format!(
        "invalid output {text:?}: use firehose:STREAM_NAME, s3://BUCKET/PREFIX, airflow-s3://BUCKET/PREFIX or stdout"
    ))
}

/// `--read-interval` unless every output is airflow-s3.
pub const DEFAULT_READ_INTERVAL: Duration = Duration::from_millis(250);

/// A validated configuration: what [`crate::run`] runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Globs of log files to follow.
    pub paths: Vec<String>,
    /// Where records go, in order (a record is checkpointed once every output has it).
    pub outputs: Vec<OutputSpec>,
    /// Directory of the checkpoint file.
    pub state_dir: PathBuf,
    /// Address of the admin server.
    pub admin_addr: SocketAddr,
    /// Longest drain after SIGTERM.
    pub drain_timeout: Duration,
    /// Poll cadence without change events.
    pub poll_interval: Duration,
    /// Cadence of looking at followed files for new bytes.
    pub read_interval: Duration,
    /// Directories only polled.
    pub no_watch: Vec<PathBuf>,
    /// Longest wait of a traceback (or unterminated line) for its next line.
    pub multiline_timeout: Duration,
    /// Longest wait of a record in a Firehose batch.
    pub linger: Duration,
    /// Firehose record size in bytes.
    pub firehose_record_size: usize,
    /// S3 key template.
    pub s3_key_template: String,
    /// S3 object roll size.
    pub s3_max_object_size: u64,
    /// S3 object roll age.
    pub s3_max_object_age: Duration,
    /// Memory bound of all open S3 objects.
    pub s3_max_buffered: u64,
    /// S3 multipart part size.
    pub s3_part_size: u64,
    /// Airflow's `base_log_folder`.
    pub airflow_log_folder: PathBuf,
    /// Upload cadence of the Airflow layout.
    pub airflow_flush_interval: Duration,
    /// Quiet time before an Airflow-layout attempt is compacted.
    pub airflow_compact_after: Duration,
    /// Memory bound of the Airflow layout's waiting bytes.
    pub airflow_max_buffered: u64,
    /// The forward input, when on.
    pub forward: Option<ForwardConfig>,
}

impl Config {
    /// Every output: the flags' first (in order; files go to these), then those a FireLens
    /// configuration names that the flags do not, each with its own region if it has one.
    pub fn all_outputs(&self) -> Vec<(OutputSpec, Option<String>)> {
        let mut all: Vec<(OutputSpec, Option<String>)> =
            self.outputs.iter().map(|o| (o.clone(), None)).collect();
        if let Some(f) = self.forward.as_ref().and_then(|f| f.firelens.as_ref()) {
            for t in f.routes.iter().filter_map(|r| r.target.as_ref()) {
                let known = all
                    .iter()
                    .any(|(o, region)| *o == t.spec && (region.is_none() || *region == t.region));
                if !known {
                    all.push((t.spec.clone(), t.region.clone()));
                }
            }
        }
        all
    }

    /// Validates the flags. Errors read as instructions.
    pub fn from_args(args: ShipArgs) -> Result<Self, String> {
        let mut args = args;
        args.paths.retain(|p| !p.trim().is_empty());
        if args.paths.is_empty() && !args.forward {
            return Err(
                "--path needs at least one glob (or turn on --forward and leave it empty)".into(),
            );
        }
        let forward = match args.forward {
            false => None,
            true => {
                let socket = Some(args.forward_socket.trim())
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from);
                let listen = optional_addr("forward-listen", &args.forward_listen)?;
                let health = optional_addr("forward-health", &args.forward_health)?;
                if socket.is_none() && listen.is_none() {
                    return Err("--forward needs --forward-socket or --forward-listen".into());
                }
                if args.forward_max_connections == 0 {
                    return Err("--forward-max-connections must be above zero".into());
                }
                if args.buffer_max_bytes < crate::input::forward::buffer::SEGMENT_BYTES {
                    return Err(format!(
                        "--buffer-max-bytes must be at least one segment ({} bytes)",
                        crate::input::forward::buffer::SEGMENT_BYTES
                    ));
                }
                let firelens =
                    crate::input::forward::firelens::Firelens::load(&args.firelens_config)
                        .map_err(|e| e.to_string())?;
                Some(ForwardConfig {
                    socket,
                    listen,
                    health,
                    buffer_dir: args.buffer_dir.clone(),
                    buffer_max_bytes: args.buffer_max_bytes,
                    quiet: args.forward_quiet,
                    max_connections: args.forward_max_connections,
                    firelens,
                })
            }
        };
        let firelens_outputs = forward
            .as_ref()
            .and_then(|f| f.firelens.as_ref())
            .is_some_and(|f| f.routes.iter().any(|r| r.target.is_some()));
        if args.outputs.is_empty() && !firelens_outputs {
            return Err("no output: give --output (LOGSHIP_OUTPUT), or run as a FireLens router whose containers' log options name outputs".into());
        }
        if args.firehose_record_size == 0
            || args.firehose_record_size > output::firehose::MAX_RECORD_BYTES as u64
        {
            return Err(format!(
                "--firehose-record-size must be between 1 and {} bytes (1000KiB)",
                output::firehose::MAX_RECORD_BYTES
            ));
        }
        if args.s3_part_size < output::s3::MIN_PART_SIZE {
            return Err("--s3-part-size must be at least 5MiB".into());
        }
        if args
            .outputs
            .iter()
            .any(|o| matches!(o, OutputSpec::S3 { .. }))
        {
            output::s3::check_key_template(&args.s3_key_template)?;
            if args.s3_max_buffered < args.s3_part_size + output::s3::GROUP_OVERHEAD {
                return Err(format!(
                    "--s3-max-buffered ({}) must hold at least one part (--s3-part-size {}) plus a compressor ({} bytes)",
                    args.s3_max_buffered,
                    args.s3_part_size,
                    output::s3::GROUP_OVERHEAD
                ));
            }
        }
        if args.lifecycle.drain_timeout.is_zero() {
            return Err("--drain-timeout must be above zero".into());
        }
        if args
            .outputs
            .iter()
            .any(|o| matches!(o, OutputSpec::AirflowS3 { .. }))
        {
            if !args.airflow_log_folder.is_absolute() {
                return Err(format!(
                    "--airflow-log-folder {:?} must be an absolute path (Airflow's base_log_folder)",
                    args.airflow_log_folder
                ));
            }
            if args.airflow_flush_interval.is_zero() {
                return Err("--airflow-flush-interval must be above zero".into());
            }
            if args.airflow_compact_after < args.airflow_flush_interval {
                return Err(format!(
                    "--airflow-compact-after ({:?}) must be at least --airflow-flush-interval ({:?})",
                    args.airflow_compact_after, args.airflow_flush_interval
                ));
            }
            if args.airflow_max_buffered < 64 * 1024 {
                return Err("--airflow-max-buffered must be at least 64KiB".into());
            }
            let globs_outside: Vec<&String> = args
                .paths
                .iter()
                .filter(|g| !Path::new(g.as_str()).starts_with(&args.airflow_log_folder))
                .collect();
            if !globs_outside.is_empty() {
                return Err(format!(
                    "--path {globs_outside:?} is not below --airflow-log-folder {:?}: an airflow-s3 output keys each file by its path relative to that folder; set --airflow-log-folder to Airflow's base_log_folder",
                    args.airflow_log_folder
                ));
            }
        }
        let only_airflow = !args.outputs.is_empty()
            && args
                .outputs
                .iter()
                .all(|o| matches!(o, OutputSpec::AirflowS3 { .. }));
        let read_interval = args.read_interval.unwrap_or(if only_airflow {
            args.airflow_flush_interval
        } else {
            DEFAULT_READ_INTERVAL
        });
        Ok(Self {
            paths: args.paths,
            outputs: args.outputs,
            state_dir: args.state_dir,
            admin_addr: args.lifecycle.admin_addr,
            drain_timeout: args.lifecycle.drain_timeout,
            poll_interval: args.poll_interval,
            read_interval,
            no_watch: args.no_watch,
            multiline_timeout: args.multiline_timeout,
            linger: args.linger,
            firehose_record_size: args.firehose_record_size as usize,
            s3_key_template: args.s3_key_template,
            s3_max_object_size: args.s3_max_object_size,
            s3_max_object_age: args.s3_max_object_age,
            s3_max_buffered: args.s3_max_buffered,
            s3_part_size: args.s3_part_size,
            airflow_log_folder: args.airflow_log_folder,
            airflow_flush_interval: args.airflow_flush_interval,
            airflow_compact_after: args.airflow_compact_after,
            airflow_max_buffered: args.airflow_max_buffered,
            forward,
        })
    }
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
        assert_eq!(
            parse_output("airflow-s3://logs-bucket/airflow/").unwrap(),
            OutputSpec::AirflowS3 {
                bucket: "logs-bucket".into(),
                prefix: "airflow".into()
            }
        );
        assert!(parse_output("kafka:x").is_err());
        assert!(parse_output("firehose:").is_err());
    }

    #[test]
    fn healthcheck_needs_no_output() {
        use airside_core::daemon::parse_without_env;
        let cli: Cli = parse_without_env(&["logship", "healthcheck"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Healthcheck { .. })));
        let bare: Cli = parse_without_env(&["logship"]).unwrap();
        assert!(
            Config::from_args(bare.args)
                .unwrap_err()
                .contains("no output")
        );
        let cli: Cli = parse_without_env(&["logship", "--output", "stdout"]).unwrap();
        let config = Config::from_args(cli.args).unwrap();
        assert_eq!(config.paths, vec!["/opt/airflow/logs/**/*.log"]);
        assert_eq!(config.drain_timeout, Duration::from_secs(25));
    }

    #[test]
    fn files_are_read_at_upload_pace_when_only_airflow_outputs_take_them() {
        use airside_core::daemon::parse_without_env;
        let read_interval = |argv: &[&str]| {
            let cli: Cli = parse_without_env(argv).unwrap();
            Config::from_args(cli.args).unwrap().read_interval
        };
        let airflow = ["logship", "--output", "airflow-s3://task-logs/airflow"];
        assert_eq!(read_interval(&airflow), Duration::from_secs(5));
        let slower = [&airflow[..], &["--airflow-flush-interval", "9s"]].concat();
        assert_eq!(read_interval(&slower), Duration::from_secs(9));
        // Beside an output of records, lines are read on the usual clock.
        let both = [&airflow[..], &["--output", "firehose:records"]].concat();
        assert_eq!(read_interval(&both), DEFAULT_READ_INTERVAL);
        assert_eq!(
            read_interval(&["logship", "--output", "stdout"]),
            DEFAULT_READ_INTERVAL
        );
        // Set explicitly, it is kept.
        let set = [&airflow[..], &["--read-interval", "1s"]].concat();
        assert_eq!(read_interval(&set), Duration::from_secs(1));
    }
}
