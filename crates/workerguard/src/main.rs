//! The workerguard binary: the core's daemon skeleton around [`workerguard::Workerguard`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    airside_core::daemon::main::<workerguard::Workerguard>()
}
