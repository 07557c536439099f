//! The exit-code contract shared by every daemon (documented in the README).
//!
//! ECS shows a stopped container's exit code next to the task; a stable code
//! tells the operator which knob to turn without reading logs first.

use std::fmt;

/// Process exit codes. The numbers are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitCode {
    /// Done, or a clean shutdown after SIGTERM/SIGINT.
    Ok = 0,
    /// Anything not covered by a more specific code.
    Other = 1,
    /// Bad usage or configuration, including a bucket or stream that does not exist.
    Usage = 2,
    /// Access denied or invalid credentials (after retries).
    AccessDenied = 3,
    /// The destination is missing or not writable.
    Destination = 4,
    /// A safety guard refused to act (one-shot modes only).
    Guard = 5,
    /// Part of the work could not be done and was reported item by item; the rest was
    /// done (one-shot modes only; a daemon keeps retrying those items).
    Partial = 6,
}

impl ExitCode {
    /// The numeric code handed to the operating system.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ExitCode::Ok => "ok",
            ExitCode::Other => "error",
            ExitCode::Usage => "usage or configuration error",
            ExitCode::AccessDenied => "access denied",
            ExitCode::Destination => "destination missing or not writable",
            ExitCode::Guard => "safety guard refused",
            ExitCode::Partial => "some items failed, the rest was done",
        };
        write!(f, "{} ({text})", self.code())
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

/// Implemented by each daemon's top-level error so `main` can pick the code.
pub trait HasExitCode {
    /// The exit code this error should end the process with.
    fn exit_code(&self) -> ExitCode;
}

/// Ends a daemon's `main`: logs the error (if any) and converts it to a process exit code.
///
/// Errors are logged through tracing (so they are JSON in ECS) and also printed
/// to stderr with their whole cause chain when stderr is a terminal.
pub fn finish<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: HasExitCode + fmt::Display + fmt::Debug,
{
    match result {
        Ok(()) => ExitCode::Ok.into(),
        Err(err) => {
            let code = err.exit_code();
            tracing::error!(exit_code = code.code(), error = %err, "exiting: {err}");
            code.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_readme_table() {
        assert_eq!(ExitCode::Ok.code(), 0);
        assert_eq!(ExitCode::Other.code(), 1);
        assert_eq!(ExitCode::Usage.code(), 2);
        assert_eq!(ExitCode::AccessDenied.code(), 3);
        assert_eq!(ExitCode::Destination.code(), 4);
        assert_eq!(ExitCode::Guard.code(), 5);
    }
}
