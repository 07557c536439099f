//! The one start-up skeleton every daemon's `main` runs, in one order:
//!
//! 1. parse the command line and environment (clap),
//! 2. answer `healthcheck` if that is the subcommand,
//! 3. validate the flags into the daemon's typed `Config`; a usage error is printed to
//!    stderr and ends the process with exit 2 before tracing starts (it is the operator's
//!    first line to read, not one JSON field among many),
//! 4. start tracing,
//! 5. set the allocator up and turn fault-around off ([`crate::memory`]), before any
//!    thread but `main` exists,
//! 6. build the async runtime (a runtime that cannot start exits 1 with a message),
//! 7. build the daemon's dependencies (AWS clients) and call its `run(config, deps,
//!    shutdown)`; the result maps to an exit code through [`HasExitCode`].
//!
//! A daemon's `main.rs` is then one line: `airside_core::daemon::main::<Dagsync>()`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use crate::config::LogFormat;
use crate::exit::{ExitCode, HasExitCode};
use crate::shutdown::Shutdown;

/// How the daemon's allocator is set up (see [`crate::memory`]).
#[derive(Debug, Clone, Copy)]
pub enum Allocator {
    /// glibc's defaults.
    Default,
    /// [`crate::memory::keep_freed_buffers`] with this many bytes.
    KeepFreedBuffers(usize),
    /// [`crate::memory::return_large_buffers`] with this threshold.
    ReturnLargeBuffers(usize),
}

/// The shape of the tokio runtime.
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    /// One async thread; blocking work on a pool of at most this many threads.
    CurrentThread {
        /// Upper bound of the blocking pool.
        max_blocking_threads: usize,
    },
    /// A multi-threaded scheduler with this many workers.
    MultiThread {
        /// Worker threads.
        workers: usize,
    },
}

/// What `main` is asked to do.
#[derive(Debug)]
pub enum Invocation<A> {
    /// The `healthcheck` subcommand.
    Healthcheck(HealthcheckArgs),
    /// Run the daemon with these flags.
    Run(A),
}

/// The flags of the `healthcheck` subcommand, the same in every daemon (each daemon's
/// [`daemon_cli!`](crate::daemon_cli) gives them its own environment variables).
#[derive(Debug, Clone)]
pub struct HealthcheckArgs {
    /// The running daemon's admin address.
    pub admin_addr: SocketAddr,
    /// How long to wait for an answer.
    pub timeout: Duration,
}

/// The parsed command line of a daemon, as [`daemon_cli!`](crate::daemon_cli) defines it.
pub trait DaemonCli: CommandFactory + FromArgMatches {
    /// The daemon's own flags.
    type Args;
    /// The environment-variable prefix, for example `DAGSYNC`.
    const ENV_PREFIX: &'static str;
    /// The logging flags.
    fn log(&self) -> (LogFormat, &str);
    /// Splits the command line into what to do.
    fn into_invocation(self) -> Invocation<Self::Args>;
}

/// A daemon: its command line, its validated configuration, and how it runs.
pub trait Daemon {
    /// The binary's name, which prefixes usage errors.
    const NAME: &'static str;
    /// Allocator settings.
    const ALLOCATOR: Allocator;
    /// Runtime shape.
    const RUNTIME: Runtime;
    /// The command line.
    type Cli: DaemonCli;
    /// The validated configuration.
    type Config;
    /// What `run` is handed besides its config: AWS clients, in production built by
    /// [`Daemon::connect`], in tests by the test.
    type Deps;
    /// Why the daemon stopped.
    type Error: HasExitCode + fmt::Display + fmt::Debug;

    /// Validates the flags. The message reads as an instruction to the operator.
    fn config(args: <Self::Cli as DaemonCli>::Args) -> Result<Self::Config, String>;

    /// Builds the production dependencies (AWS clients) for `config`.
    fn connect(config: &Self::Config) -> impl Future<Output = Result<Self::Deps, Self::Error>>;

    /// Runs until `shutdown` (and the bounded drain after it), or until a fatal error.
    fn run(
        config: Self::Config,
        deps: Self::Deps,
        shutdown: Shutdown,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Parses `argv` for `C`, the way [`main`] does: the old name of the drain flag's
/// environment variable (`<PREFIX>_SHUTDOWN_TIMEOUT`) is read when the new one is unset.
pub fn parse<C: DaemonCli>(
    argv: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<C, clap::Error> {
    let mut command = C::command();
    let old = format!("{}_SHUTDOWN_TIMEOUT", C::ENV_PREFIX);
    let new = format!("{}_DRAIN_TIMEOUT", C::ENV_PREFIX);
    let has_drain_flag = command
        .get_arguments()
        .any(|a| a.get_id() == "drain_timeout");
    if has_drain_flag
        && std::env::var_os(&new).is_none()
        && let Some(value) = std::env::var_os(&old).and_then(|v| v.into_string().ok())
    {
        // Leaked once at start: clap's defaults are `&'static str` without its `string` feature.
        let value: &'static str = Box::leak(value.into_boxed_str());
        command = command.mut_arg("drain_timeout", |a| a.default_value(value));
    }
    let matches = command.try_get_matches_from(argv)?;
    C::from_arg_matches(&matches)
}

/// Parses `argv` for `C` with every environment variable ignored: for tests, whose
/// results must not depend on the developer's `DAGSYNC_*` or `METRICSHIP_*` settings.
pub fn parse_without_env<C: DaemonCli>(argv: &[&str]) -> Result<C, clap::Error> {
    let mut command = C::command();
    let ids: Vec<_> = command
        .get_arguments()
        .map(|a| a.get_id().clone())
        .collect();
    for id in ids {
        command = command.mut_arg(id, |a| a.env(None));
    }
    let matches = command.try_get_matches_from(argv)?;
    C::from_arg_matches(&matches)
}

/// The whole of a daemon's `main`: see the module documentation for the order.
pub fn main<D: Daemon>() -> std::process::ExitCode {
    let cli: D::Cli = match parse(std::env::args_os()) {
        Ok(cli) => cli,
        // Prints help, version or the usage error; exit 0 or 2 as clap decides.
        Err(e) => e.exit(),
    };
    let (format, level) = cli.log();
    let (format, level) = (format, level.to_string());
    let args = match cli.into_invocation() {
        Invocation::Healthcheck(h) => {
            return match runtime(Runtime::CurrentThread {
                max_blocking_threads: 1,
            }) {
                Ok(rt) => rt
                    .block_on(crate::healthcheck::probe(h.admin_addr, h.timeout))
                    .into(),
                Err(code) => code.into(),
            };
        }
        Invocation::Run(args) => args,
    };
    let config = match D::config(args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("{}: {message}", D::NAME);
            return ExitCode::Usage.into();
        }
    };
    crate::telemetry::init(format, &level);
    match D::ALLOCATOR {
        Allocator::Default => {}
        Allocator::KeepFreedBuffers(n) => crate::memory::keep_freed_buffers(n),
        Allocator::ReturnLargeBuffers(n) => crate::memory::return_large_buffers(n),
    }
    crate::memory::init();
    let rt = match runtime(D::RUNTIME) {
        Ok(rt) => rt,
        Err(code) => return code.into(),
    };
    crate::exit::finish(rt.block_on(async move {
        let shutdown = crate::shutdown::on_signals();
        let deps = D::connect(&config).await?;
        D::run(config, deps, shutdown).await
    }))
}

fn runtime(shape: Runtime) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = match shape {
        Runtime::CurrentThread {
            max_blocking_threads,
        } => {
            let mut b = tokio::runtime::Builder::new_current_thread();
            b.max_blocking_threads(max_blocking_threads);
            b
        }
        Runtime::MultiThread { workers } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(workers);
            b
        }
    };
    // Idle blocking threads go away soon: a sidecar's RSS is paid on every task.
    builder
        .thread_keep_alive(Duration::from_secs(5))
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::Other
        })
}

/// Defines a daemon's command line: `Cli` with the `healthcheck` subcommand, the
/// daemon's own flags (`$args`, a `clap::Args` struct) and the logging flags, all
/// reading `<PREFIX>_*` environment variables. The shared flags are named alike in every
/// daemon: `--admin-addr`, `--drain-timeout` (alias `--shutdown-timeout`),
/// `healthcheck --timeout`, `--log-format`, `--log-level`.
///
/// ```
/// #[derive(Debug, clap::Args)]
/// pub struct RunArgs {
///     /// Admin address and drain bound.
///     #[command(flatten)]
///     pub lifecycle: Lifecycle,
/// }
/// airside_core::daemon_cli! {
///     name: "demo", prefix: "AIRSIDE_DOCTEST", about: "A demo daemon.",
///     admin: "127.0.0.1:9499", drain: "10s", args: RunArgs,
/// }
/// let cli: Cli = airside_core::daemon::parse_without_env(&["demo", "--drain-timeout", "3s"]).unwrap();
/// assert_eq!(cli.args.lifecycle.drain_timeout, std::time::Duration::from_secs(3));
/// let cli: Cli = airside_core::daemon::parse_without_env(&["demo", "--shutdown-timeout", "4s"]).unwrap();
/// assert_eq!(cli.args.lifecycle.drain_timeout, std::time::Duration::from_secs(4));
/// ```
#[macro_export]
macro_rules! daemon_cli {
    (name: $name:literal, prefix: $prefix:literal, about: $about:literal,
     admin: $admin:literal, drain: $drain:literal, args: $args:ty $(,)?) => {
        $crate::log_args!(LogArgs, concat!($prefix, "_LOG_FORMAT"), concat!($prefix, "_LOG"));

        #[doc = concat!("The `", $name, "` command line.")]
        #[derive(Debug, ::clap::Parser)]
        #[command(
            name = $name,
            version,
            about = $about,
            subcommand_negates_reqs = true,
            args_conflicts_with_subcommands = true
        )]
        pub struct Cli {
            /// A subcommand; without one, the daemon runs.
            #[command(subcommand)]
            pub command: Option<Command>,
            /// The daemon's flags.
            #[command(flatten)]
            pub args: $args,
            /// Logging flags.
            #[command(flatten)]
            pub log: LogArgs,
        }

        /// Subcommands.
        #[derive(Debug, ::clap::Subcommand)]
        pub enum Command {
            /// Exit 0 when the running daemon's /readyz answers 200 (for ECS container health checks).
            Healthcheck {
                /// The running daemon's admin address.
                #[arg(long, env = concat!($prefix, "_ADMIN_ADDR"), default_value = $admin, value_parser = $crate::config::parse_socket_addr)]
                admin_addr: ::std::net::SocketAddr,
                /// How long to wait for an answer.
                #[arg(long, env = concat!($prefix, "_HEALTHCHECK_TIMEOUT"), default_value = "3s", value_parser = $crate::config::parse_duration)]
                timeout: ::std::time::Duration,
            },
        }

        /// The admin server's address and the drain bound, named alike in every daemon.
        #[derive(Debug, Clone, ::clap::Args)]
        pub struct Lifecycle {
            /// Address of the admin server (/healthz, /readyz, /metrics).
            #[arg(long, env = concat!($prefix, "_ADMIN_ADDR"), default_value = $admin, value_parser = $crate::config::parse_socket_addr)]
            pub admin_addr: ::std::net::SocketAddr,
            /// Longest drain after SIGTERM (the admin server answers throughout); keep it
            /// below the task definition's stopTimeout. Also read from the old names
            /// --shutdown-timeout and the _SHUTDOWN_TIMEOUT variable.
            #[arg(long, alias = "shutdown-timeout", env = concat!($prefix, "_DRAIN_TIMEOUT"), default_value = $drain, value_parser = $crate::config::parse_duration)]
            pub drain_timeout: ::std::time::Duration,
        }

        impl $crate::daemon::DaemonCli for Cli {
            type Args = $args;
            const ENV_PREFIX: &'static str = $prefix;
            fn log(&self) -> ($crate::config::LogFormat, &str) {
                (self.log.log_format, &self.log.log_level)
            }
            fn into_invocation(self) -> $crate::daemon::Invocation<$args> {
                match self.command {
                    Some(Command::Healthcheck {
                        admin_addr,
                        timeout,
                    }) => $crate::daemon::Invocation::Healthcheck(
                        $crate::daemon::HealthcheckArgs {
                            admin_addr,
                            timeout,
                        },
                    ),
                    None => $crate::daemon::Invocation::Run(self.args),
                }
            }
        }
    };
}
