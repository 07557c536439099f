//! The metricship binary: the core's daemon skeleton around [`metricship::Metricship`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    airside_core::daemon::main::<metricship::Metricship>()
}
