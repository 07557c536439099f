//! The shared core of the airside sidecar daemons.
//!
//! Everything that every daemon needs lives here exactly once, so that dagsync,
//! logship and metricship behave alike in production: configuration helpers
//! ([`config`]), structured logging ([`telemetry`]), the admin HTTP server with
//! `/healthz`, `/readyz` and `/metrics` ([`admin`]), one shutdown signal with a
//! bounded drain ([`shutdown`]), full-jitter backoff ([`backoff`]), AWS client
//! setup with a pure-Rust resolver and error classification ([`aws`]), ECS task
//! metadata ([`ecs`]), the `healthcheck` subcommand ([`healthcheck`]), idle memory
//! ([`memory`]), durable atomic file replacement ([`atomic_file`]) and the exit-code
//! contract ([`exit`]).
//!
//! Every daemon starts through [`daemon::main`], which runs the one skeleton (parse,
//! validate, tracing, memory, runtime, `run(config, deps, shutdown)`); its command line
//! comes from [`daemon_cli!`], its retries follow [`retry`], and its `run` returns an
//! error that maps to an [`exit::ExitCode`].
// `deny`, not `forbid`: [`memory`] is the one module allowed two libc calls.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod atomic_file;
pub mod aws;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod ecs;
pub mod exit;
pub mod healthcheck;
#[allow(unsafe_code)]
pub mod memory;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use exit::ExitCode;
