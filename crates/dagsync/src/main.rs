//! The dagsync binary: parse, build, run.
#![forbid(unsafe_code)]

use clap::Parser;
use dagsync::{Cli, Command, Config};

fn main() -> std::process::ExitCode {
    // Whole-object bodies of up to 8 MiB come and go: each one over 256 KiB is mapped and
    // unmapped on its own, so the 64 MiB container limit holds whatever the object sizes.
    airside_core::memory::return_large_buffers(256 << 10);
    let cli = Cli::parse();
    cli.log.init_tracing();
    airside_core::memory::init();
    // One async thread: dagsync's work is I/O-bound and a sidecar should be cheap. A
    // multi-threaded scheduler cost ~13 futex calls per downloaded file in cross-thread
    // wake-ups. Blocking file work runs on the blocking pool, which idles back to zero.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(32)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(Command::Healthcheck {
        admin_addr,
        timeout,
    }) = cli.command
    {
        return runtime
            .block_on(airside_core::healthcheck::probe(admin_addr, timeout))
            .into();
    }
    let config = match Config::from_args(cli.sync) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dagsync: {e}");
            return airside_core::ExitCode::Usage.into();
        }
    };
    runtime.block_on(async move {
        let shutdown = airside_core::shutdown::on_signals();
        airside_core::exit::finish(dagsync::run(config, shutdown).await)
    })
}
