//! One shutdown signal for the whole daemon, and a bounded drain.
//!
//! ECS sends SIGTERM, waits `stopTimeout` (30 s by default, at most 120 s on
//! Fargate) and then SIGKILLs. Every daemon therefore turns SIGTERM and SIGINT
//! into one [`Shutdown`] token, stops taking new work, and drains with
//! [`drain`] under a grace period kept below the task definition's stopTimeout.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown token: cancelled once, observed everywhere.
pub type Shutdown = CancellationToken;

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
///
/// A second signal while draining ends the process at once with the usual
/// 128+signal convention, for an operator who really means it.
/// Must be called inside a tokio runtime.
pub fn on_signals() -> Shutdown {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::info!(signal = name, "shutdown requested; draining");
        trigger.cancel();
        let name = wait_for_signal().await;
        tracing::warn!(signal = name, "second signal; exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Why a drain ended early.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("drain did not finish within {0:?}")]
pub struct DrainTimedOut(pub Duration);

/// Runs `work` for at most `grace`. Returns its output, or [`DrainTimedOut`].
pub async fn drain<F: Future>(grace: Duration, work: F) -> Result<F::Output, DrainTimedOut> {
    tokio::time::timeout(grace, work)
        .await
        .map_err(|_| DrainTimedOut(grace))
}

/// Sleeps for `d` unless shutdown comes first. Returns `true` if shutdown was requested.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_is_bounded() {
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(
            drain(Duration::from_secs(5), slow).await,
            Err(DrainTimedOut(Duration::from_secs(5)))
        );
        assert_eq!(drain(Duration::from_secs(5), async { 7 }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_wakes_on_shutdown() {
        let token = Shutdown::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            t2.cancel();
        });
        let start = tokio::time::Instant::now();
        assert!(sleep_or_shutdown(Duration::from_secs(3600), &token).await);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!sleep_or_shutdown(Duration::from_secs(1), &Shutdown::new()).await);
    }
}
