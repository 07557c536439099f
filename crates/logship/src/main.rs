//! The logship binary: parse flags, set up logging, run, map errors to exit codes.

use clap::Parser;
use logship::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    // Before any other thread allocates (see keep_freed_buffers): every Firehose call
    // builds a body of up to 2.7 MB (base64 JSON); reuse those buffers rather than fault
    // in fresh pages for each call.
    airside_core::memory::keep_freed_buffers(8 << 20);
    let cli = Cli::parse();
    cli.log.init_tracing();
    airside_core::memory::init();
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("logship: cannot start the async runtime: {e}");
            std::process::ExitCode::from(airside_core::exit::ExitCode::Other.code())
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
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
