//! The logship binary: parse flags, set up logging, run, map errors to exit codes.

use clap::Parser;
use logship::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init_tracing();
    airside_core::memory::init();
    // Every Firehose call builds a body of up to 2.7 MB (base64 JSON): reuse the
    // buffers rather than fault in fresh pages for each call.
    airside_core::memory::keep_freed_buffers(8 << 20);
    match cli.command {
        Some(Command::Healthcheck {
            admin_addr,
            timeout,
        }) => airside_core::healthcheck::probe(admin_addr, timeout)
            .await
            .into(),
        None => {
            let shutdown = airside_core::shutdown::on_signals();
            airside_core::exit::finish(logship::run(cli.ship, shutdown).await)
        }
    }
}
