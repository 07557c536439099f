//! metricship: parse the flags, start logging, run until SIGTERM, map the outcome to an exit code.

use airside_core::exit::finish;
use clap::Parser;
use metricship::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // The receive thread is separate; two workers serve admin, flush and publish.
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return airside_core::ExitCode::Other.into();
        }
    };
    if let Some(Command::Healthcheck {
        admin_addr,
        timeout,
    }) = cli.command
    {
        return runtime
            .block_on(airside_core::healthcheck::probe(admin_addr, timeout))
            .into();
    }
    cli.log.init_tracing();
    airside_core::memory::init();
    finish(runtime.block_on(async move {
        let shutdown = airside_core::shutdown::on_signals();
        let output = metricship::output_for(&cli.config).await?;
        metricship::run(cli.config, output, shutdown).await
    }))
}
