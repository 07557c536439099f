//! Command line and environment (`DAGSYNC_*`), validated into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airside_core::config::{parse_bytes, parse_duration};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::cadence::Cadence;
use crate::plan::DeleteLimit;
use crate::source::SourceSpec;

airside_core::daemon_cli! {
    name: "dagsync",
    prefix: "DAGSYNC",
    about: "Keeps an Airflow DAG folder in step with an S3 prefix (or a local folder).",
    admin: "127.0.0.1:9400",
    drain: "10s",
    args: SyncArgs,
}

/// Flags of the sync itself.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Where DAGs come from: s3://BUCKET/PREFIX/, or a local folder (path or file://DIR).
    #[arg(long, env = "DAGSYNC_SOURCE", required = true)]
    pub source: Option<String>,
    /// The DAG folder to keep in step (for example the EFS mount /opt/airflow/dags).
    #[arg(long, env = "DAGSYNC_DEST", required = true)]
    pub dest: Option<PathBuf>,
    /// Run one cycle and exit (exit 5 if a delete guard refused).
    #[arg(long, env = "DAGSYNC_ONCE")]
    pub once: bool,
    /// With --once: print the plan (+ added, ~ changed, - deleted, ! refused) and change nothing.
    #[arg(long, env = "DAGSYNC_DRY_RUN", requires = "once")]
    pub dry_run: bool,
    /// Time between cycles.
    #[arg(long, env = "DAGSYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Random spread around --interval, so many tasks do not list at the same moment.
    #[arg(long, env = "DAGSYNC_JITTER", default_value = "10s", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Longest time a change may take to arrive; idle slow-down never exceeds it.
    #[arg(long, env = "DAGSYNC_MAX_STALENESS", default_value = "60s", value_parser = parse_duration)]
    pub max_staleness: Duration,
    /// Skip keys matching this glob (relative to the prefix; repeatable, or comma-separated in the env var).
    #[arg(long, env = "DAGSYNC_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Refuse a cycle's deletions beyond this many files, or this share of the synced files.
    #[arg(long, env = "DAGSYNC_MAX_DELETE", default_value = "50%", value_parser = DeleteLimit::parse)]
    pub max_delete: DeleteLimit,
    /// Admin address and drain bound (after SIGTERM, how long a running cycle may take to finish).
    #[command(flatten)]
    pub lifecycle: Lifecycle,
    /// Downloads in flight at once.
    #[arg(long, env = "DAGSYNC_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// /readyz turns not ready when the last successful sync is older than this.
    #[arg(long, env = "DAGSYNC_READY_MAX_AGE", default_value = "5m", value_parser = parse_duration)]
    pub ready_max_age: Duration,
    /// With a local source: sync as soon as the source changes (inotify), besides polling.
    #[arg(long, env = "DAGSYNC_WATCH")]
    pub watch: bool,
    /// Fetch objects with dagsync's own signed GET (same endpoint, credentials and TLS as
    /// the SDK, without its per-request overhead); `false` sends every GetObject through
    /// the AWS SDK. Any failure on the direct path is repeated through the SDK either way.
    #[arg(long, env = "DAGSYNC_DIRECT_GET", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub direct_get: bool,
    /// Bytes that in-flight downloads may hold in memory, all together; a download that
    /// does not fit streams to its staging file instead. The default keeps dagsync well
    /// inside the 64 MiB the task definitions give it, whatever the object sizes.
    #[arg(long, env = "DAGSYNC_MEMORY_BUDGET", default_value = "8MiB", value_parser = parse_bytes)]
    pub memory_budget: u64,
    /// Publish nothing in a cycle where any object could not be fetched or verified (by
    /// default the rest is published and the failing objects are reported and retried).
    #[arg(long, env = "DAGSYNC_ALL_OR_NOTHING")]
    pub all_or_nothing: bool,
    /// Let only one dagsync at a time write a DAG folder that several tasks share (a lock
    /// on DEST/.dagsync/lease); the others stand by and take over when it stops. `false`
    /// makes every instance sync on its own, as before the lease existed.
    #[arg(long, env = "DAGSYNC_LEASE", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub lease: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The source.
    pub source: SourceSpec,
    /// The destination folder.
    pub dest: PathBuf,
    /// One cycle only.
    pub once: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Cycle cadence.
    pub cadence: Cadence,
    /// Exclusions.
    pub exclude: GlobSet,
    /// Deletion cap.
    pub max_delete: DeleteLimit,
    /// Admin server address.
    pub admin_addr: SocketAddr,
    /// Concurrent downloads.
    pub concurrency: usize,
    /// Readiness age limit.
    pub ready_max_age: Duration,
    /// Drain bound.
    pub drain_timeout: Duration,
    /// Watch a local source.
    pub watch: bool,
    /// GetObject through dagsync's direct path first.
    pub direct_get: bool,
    /// Bytes of bodies held in memory at once.
    pub memory_budget: u64,
    /// Publish nothing when any object fails.
    pub all_or_nothing: bool,
    /// One writer per destination.
    pub lease: bool,
}

impl Config {
    /// Validates the flags. Errors read as instructions.
    pub fn from_args(args: SyncArgs) -> Result<Self, String> {
        let source = SourceSpec::parse(args.source.as_deref().ok_or("--source is required")?)?;
        let dest = args.dest.ok_or("--dest is required")?;
        let cadence = Cadence::new(args.interval, args.jitter, args.max_staleness)?;
        let mut globs = GlobSetBuilder::new();
        for pattern in args.exclude.iter().filter(|p| !p.trim().is_empty()) {
            let glob = Glob::new(pattern.trim())
                .map_err(|e| format!("invalid --exclude {pattern:?}: {e}"))?;
            globs.add(glob);
        }
        let exclude = globs
            .build()
            .map_err(|e| format!("invalid --exclude: {e}"))?;
        if args.memory_budget < 64 * 1024 {
            return Err(format!(
                "--memory-budget {} is too small: use at least 64KiB (8MiB is the default)",
                args.memory_budget
            ));
        }
        if args.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if args.watch && !matches!(source, SourceSpec::Local(_)) {
            return Err("--watch needs a local --source (S3 has no change events to watch)".into());
        }
        Ok(Self {
            source,
            dest,
            once: args.once,
            dry_run: args.dry_run,
            cadence,
            exclude,
            max_delete: args.max_delete,
            admin_addr: args.lifecycle.admin_addr,
            concurrency: args.concurrency,
            ready_max_age: args.ready_max_age,
            drain_timeout: args.lifecycle.drain_timeout,
            watch: args.watch,
            direct_get: args.direct_get,
            memory_budget: args.memory_budget,
            all_or_nothing: args.all_or_nothing,
            lease: args.lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let argv: Vec<&str> = std::iter::once("dagsync")
            .chain(args.iter().copied())
            .collect();
        let cli: Cli = airside_core::daemon::parse_without_env(&argv).map_err(|e| e.to_string())?;
        Config::from_args(cli.args)
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        use clap::CommandFactory;
        // ECS passes configuration as environment (the README's promise).
        airside_core::config::assert_every_flag_has_env(&Cli::command(), "DAGSYNC_");
    }

    #[test]
    fn defaults_fit_the_sidecar() {
        let c = parse(&["--source", "s3://b/dev/", "--dest", "/opt/airflow/dags"]).unwrap();
        assert_eq!(c.admin_addr.port(), 9400);
        assert_eq!(c.cadence.max_staleness(), Duration::from_secs(60));
        assert_eq!(c.max_delete, DeleteLimit::Percent(50.0));
        assert!(!c.once);
        assert!(c.direct_get);
        assert_eq!(c.memory_budget, crate::source::DEFAULT_MEMORY_BUDGET);
        assert!(!c.all_or_nothing);
        assert!(c.lease);
        let c = parse(&[
            "--source",
            "s3://b/",
            "--dest",
            "/d",
            "--direct-get",
            "false",
        ])
        .unwrap();
        assert!(!c.direct_get);
    }

    #[test]
    fn rejects_bad_values_with_reasons() {
        let e = parse(&["--source", "s3://b/", "--dest", "/d", "--interval", "60s"]).unwrap_err();
        assert!(e.contains("--max-staleness"), "{e}");
        let e = parse(&["--source", "s3://b/", "--dest", "/d", "--exclude", "a/[b"]).unwrap_err();
        assert!(e.contains("--exclude"), "{e}");
        let e = parse(&["--source", "s3://b/", "--dest", "/d", "--watch"]).unwrap_err();
        assert!(e.contains("local"), "{e}");
        assert!(parse(&["--dest", "/d"]).is_err());
        assert!(parse(&["--source", "s3://b/", "--dest", "/d", "--dry-run"]).is_err());
    }

    #[test]
    fn healthcheck_needs_no_source() {
        let cli: Cli = airside_core::daemon::parse_without_env(&[
            "dagsync",
            "healthcheck",
            "--admin-addr",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Healthcheck { .. })));
    }
}
