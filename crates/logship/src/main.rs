//! The logship binary: the core's daemon skeleton around [`logship::Logship`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    airside_core::daemon::main::<logship::Logship>()
}
