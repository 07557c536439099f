//! The logship binary: parse flags, set up logging, run, map errors to exit codes.

use clap::Parser;
use logship::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init_tracing();
    airside_core::memory::init();
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
