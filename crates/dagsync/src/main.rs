//! The dagsync binary: the core's daemon skeleton around [`dagsync::Dagsync`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    airside_core::daemon::main::<dagsync::Dagsync>()
}
