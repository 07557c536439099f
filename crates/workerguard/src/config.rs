//! workerguard's configuration: every flag also reads a `WORKERGUARD_*` variable, except
//! the agent's address, which is the `ECS_AGENT_URI` that ECS sets in every container.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airside_core::config::parse_duration;

airside_core::daemon_cli! {
    name: "workerguard",
    prefix: "WORKERGUARD",
    about: "Protects an Airflow worker's ECS task from scale-in exactly while Airflow tasks run in it.",
    admin: "127.0.0.1:9403",
    drain: "5s",
    args: Args,
}

/// The agent's documented bounds of `ExpiresInMinutes`.
pub const PROTECTION_MINUTES: std::ops::RangeInclusive<i64> = 1..=2880;

/// The daemon's flags, as parsed; [`Config::from_args`] validates them.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The ECS agent's endpoint for this task. ECS sets ECS_AGENT_URI in every container
    /// (Fargate platform 1.4.0 and later, EC2 agent 1.65.0 and later).
    #[arg(long, env = "ECS_AGENT_URI")]
    pub agent_uri: Option<String>,

    /// Admin address and drain bound.
    #[command(flatten)]
    pub lifecycle: Lifecycle,

    /// The process table to read: the worker's processes must be visible in it
    /// (pidMode "task").
    #[arg(long, env = "WORKERGUARD_PROC_DIR", default_value = "/proc")]
    pub proc_dir: PathBuf,

    /// How often the process table is read.
    #[arg(long, env = "WORKERGUARD_CHECK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub check_interval: Duration,

    /// How long the worker stays protected after its last task ended (so that a worker
    /// that just finished is not churned at once).
    #[arg(long, env = "WORKERGUARD_IDLE_GRACE", default_value = "2m", value_parser = parse_duration)]
    pub idle_grace: Duration,

    /// ExpiresInMinutes of each protection (1 to 2880); it is renewed halfway, so a
    /// workerguard that died leaves the task protected at most this long.
    #[arg(long, env = "WORKERGUARD_PROTECTION_MINUTES", default_value_t = 15, value_parser = clap::value_parser!(u32).range(PROTECTION_MINUTES))]
    pub protection_minutes: u32,

    /// How long one call to the agent may take.
    #[arg(long, env = "WORKERGUARD_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest wait between retries of a failed call (full-jitter backoff from 250 ms).
    #[arg(long, env = "WORKERGUARD_RETRY_MAX", default_value = "10s", value_parser = parse_duration)]
    pub retry_max: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ECS_AGENT_URI`.
    pub agent_uri: String,
    /// Admin server address.
    pub admin_addr: SocketAddr,
    /// Drain bound (workerguard has nothing to drain; it exits at once).
    pub drain_timeout: Duration,
    /// The process table.
    pub proc_dir: PathBuf,
    /// Scan interval.
    pub check_interval: Duration,
    /// Idle grace.
    pub idle_grace: Duration,
    /// ExpiresInMinutes.
    pub protection_minutes: u32,
    /// Per-call timeout.
    pub request_timeout: Duration,
    /// Retry cap.
    pub retry_max: Duration,
}

impl Config {
    /// Validates the flags; the message says what to change.
    pub fn from_args(args: Args) -> Result<Self, String> {
        let agent_uri = args.agent_uri.filter(|u| !u.is_empty()).ok_or_else(|| {
            "ECS_AGENT_URI is not set: workerguard protects the ECS task it runs in, through \
             that task's agent, and ECS sets this variable in every container of a task \
             (Fargate platform 1.4.0+, EC2 agent 1.65.0+). Outside ECS there is nothing to \
             protect; in tests pass --agent-uri"
                .to_string()
        })?;
        if !agent_uri.starts_with("http://") {
            return Err(format!(
                "--agent-uri {agent_uri:?} must be an http:// URL (the agent's endpoint, as ECS_AGENT_URI gives it)"
            ));
        }
        if args.check_interval.is_zero() {
            return Err("--check-interval must be greater than zero".into());
        }
        if args.request_timeout.is_zero() {
            return Err("--request-timeout must be greater than zero".into());
        }
        if args.retry_max < Duration::from_millis(250) {
            return Err("--retry-max must be at least 250ms (the first retry's bound)".into());
        }
        let lifetime = Duration::from_secs(u64::from(args.protection_minutes) * 60);
        if args.check_interval >= lifetime / 2 {
            return Err(format!(
                "--check-interval {:?} must be well below half of --protection-minutes {} (renewals happen halfway)",
                args.check_interval, args.protection_minutes
            ));
        }
        Ok(Self {
            agent_uri,
            admin_addr: args.lifecycle.admin_addr,
            drain_timeout: args.lifecycle.drain_timeout,
            proc_dir: args.proc_dir,
            check_interval: args.check_interval,
            idle_grace: args.idle_grace,
            protection_minutes: args.protection_minutes,
            request_timeout: args.request_timeout,
            retry_max: args.retry_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airside_core::daemon::parse_without_env;
    use clap::CommandFactory;

    fn config(argv: &[&str]) -> Result<Config, String> {
        let cli: Cli = parse_without_env(argv).map_err(|e| e.to_string())?;
        Config::from_args(cli.args)
    }

    #[test]
    fn every_flag_reads_an_environment_variable() {
        airside_core::config::assert_every_flag_has_env(&Cli::command(), "WORKERGUARD");
    }

    #[test]
    fn defaults_fit_the_worker_sidecar() {
        let c = config(&["workerguard", "--agent-uri", "http://169.254.170.2/api/x"]).unwrap();
        assert_eq!(c.admin_addr, "127.0.0.1:9403".parse().unwrap());
        assert_eq!(c.idle_grace, Duration::from_secs(120));
        assert_eq!(c.check_interval, Duration::from_secs(1));
        assert_eq!(c.protection_minutes, 15);
        assert_eq!(c.proc_dir, PathBuf::from("/proc"));
    }

    #[test]
    fn outside_ecs_the_message_says_so() {
        let err = config(&["workerguard"]).unwrap_err();
        assert!(err.contains("ECS_AGENT_URI is not set"), "{err}");
        for bad in [
            &[
                "workerguard",
                "--agent-uri",
                "x",
                "--protection-minutes",
                "0",
            ][..],
            &[
                "workerguard",
                "--agent-uri",
                "http://a",
                "--protection-minutes",
                "2881",
            ],
            &["workerguard", "--agent-uri", "https://a"],
            &[
                "workerguard",
                "--agent-uri",
                "http://a",
                "--check-interval",
                "0s",
            ],
            &[
                "workerguard",
                "--agent-uri",
                "http://a",
                "--protection-minutes",
                "1",
                "--check-interval",
                "30s",
            ],
        ] {
            assert!(config(bad).is_err(), "{bad:?}");
        }
    }
}
