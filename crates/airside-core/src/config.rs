//! Configuration helpers shared by the daemons' clap definitions.
//!
//! Every flag of every daemon also reads an environment variable (ECS passes
//! configuration as environment); the helpers here keep value syntax identical
//! across daemons: durations are humantime (`30s`, `1m30s`, `250ms`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;

/// Parses a human duration such as `30s`, `5m` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "invalid duration {text:?}: {e} (use a number with a unit, for example 30s, 5m, 250ms)"
        )
    })
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// JSON lines when stdout is not a terminal, human text when it is.
    #[default]
    Auto,
    /// Always one JSON object per line.
    Json,
    /// Always human-readable text.
    Text,
}

/// Defines a daemon's logging flags with that daemon's environment variable names,
/// so that every flag of `dagsync` reads `DAGSYNC_*`, of `logship` `LOGSHIP_*`, and so on.
///
/// ```
/// use clap::Parser;
/// // dagsync passes "DAGSYNC_LOG_FORMAT" and "DAGSYNC_LOG".
/// airside_core::log_args!(LogArgs, "AIRSIDE_DOCTEST_LOG_FORMAT", "AIRSIDE_DOCTEST_LOG");
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     log: LogArgs,
/// }
///
/// let cli = Cli::parse_from(["dagsync", "--log-level", "debug"]);
/// assert_eq!(cli.log.log_level, "debug");
/// assert_eq!(cli.log.log_format, airside_core::config::LogFormat::Auto);
/// ```
#[macro_export]
macro_rules! log_args {
    ($name:ident, $format_env:expr, $level_env:expr) => {
        /// Logging flags.
        #[derive(Debug, Clone, ::clap::Args)]
        pub struct $name {
            /// Log format: auto (JSON unless stderr is a terminal), json or text.
            #[arg(long, env = $format_env, value_enum, default_value_t = $crate::config::LogFormat::Auto, global = true)]
            pub log_format: $crate::config::LogFormat,
            /// Log filter in tracing's EnvFilter syntax, for example `info` or `debug,aws_smithy_runtime=info`.
            #[arg(long = "log-level", env = $level_env, default_value = "info", global = true)]
            pub log_level: String,
        }

        impl $name {
            /// Installs the global tracing subscriber for these flags.
            pub fn init_tracing(&self) {
                $crate::telemetry::init(self.log_format, &self.log_level);
            }
        }
    };
}

/// The flags of `command` (and of its subcommands) that read no environment variable,
/// as `subcommand --flag`. ECS passes configuration as environment, so every flag must
/// have one; each daemon's tests assert this list is empty. `--help` and `--version`
/// are not configuration.
pub fn flags_without_env(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    let mut walk = vec![(String::new(), command.clone())];
    while let Some((path, cmd)) = walk.pop() {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_positional() || id == "help" || id == "version" {
                continue;
            }
            if arg.get_env().is_none() {
                missing.push(format!("{path}--{}", arg.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            walk.push((format!("{path}{} ", sub.get_name()), sub.clone()));
        }
    }
    missing.sort();
    missing
}

/// Variables the platform sets that a flag may read instead of a `<DAEMON>_` one: the
/// user never writes them, ECS does (`ECS_AGENT_URI`, the task's agent endpoint).
pub const PLATFORM_VARIABLES: &[&str] = &["ECS_AGENT_URI"];

/// Panics unless every flag of `command` reads an environment variable named with
/// `prefix` (for example `DAGSYNC_`), or one of [`PLATFORM_VARIABLES`]: each daemon's
/// tests call it.
pub fn assert_every_flag_has_env(command: &clap::Command, prefix: &str) {
    let missing = flags_without_env(command);
    assert!(missing.is_empty(), "flags without an env var: {missing:?}");
    let mut commands = vec![command.clone()];
    while let Some(cmd) = commands.pop() {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(
                    env.starts_with(prefix) || PLATFORM_VARIABLES.contains(&env.as_ref()),
                    "{env:?} (--{}) lacks the {prefix} prefix",
                    arg.get_id()
                );
            }
        }
        commands.extend(cmd.get_subcommands().cloned());
    }
}

/// Parses a size in bytes: `1048576`, `512KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB`
/// and `k`/`M`/`G`, all powers of 1,024, as memory limits are).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (write for example 16MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a `host:port` admin address, with a helpful message.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|e| {
        format!("invalid address {text:?}: {e} (use IP:PORT, for example 127.0.0.1:9400)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_bytes("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert!(parse_bytes("16 parsecs").unwrap_err().contains("unit"));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999GiB").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("30s"), "{err}");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_socket_addr("127.0.0.1:9400").unwrap(),
            "127.0.0.1:9400".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_socket_addr("localhost").is_err());
    }
}
