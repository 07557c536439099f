//! Reads asked for by an output: the airflow-s3 output uploads each growing file once
//! per `--airflow-flush-interval`, so reading the files any more often than that only
//! costs wake-ups (on a worker with 200 running tasks, four reads a second of each file
//! were most of logship's CPU). Before each upload round the output asks the tailer for
//! one pass over every followed file and waits for its chunks; the upload then holds
//! every byte written before the round began, and a line waits at most one flush
//! interval, as before.
//!
//! Requests flow output → tailer; answers tailer → output. A ticket orders them: a pass
//! answers every request made before it started, never one made while it ran.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

/// The shared request and answer counters.
#[derive(Debug)]
pub struct ReadRequests {
    asked: AtomicU64,
    wake: Notify,
    answered: watch::Sender<u64>,
}

impl Default for ReadRequests {
    fn default() -> Self {
        Self {
            asked: AtomicU64::new(0),
            wake: Notify::new(),
            answered: watch::Sender::new(0),
        }
    }
}

impl ReadRequests {
    /// Output side: asks for a pass; the ticket to wait for with [`Self::answered`].
    pub fn ask(&self) -> u64 {
        let ticket = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        // A permit is kept when the tailer is not waiting (in the middle of a pass).
        self.wake.notify_one();
        ticket
    }

    /// Output side: resolves once a pass that started after `ticket` was asked for has
    /// handed over its chunks (they are in the output's channel by then).
    pub async fn answered(&self, ticket: u64) {
        let mut rx = self.answered.subscribe();
        // Err only when the sender is gone, which it cannot be while `self` lives.
        let _ = rx.wait_for(|done| *done >= ticket).await;
    }

    /// Tailer side: resolves when a pass is asked for.
    pub async fn asked(&self) {
        self.wake.notified().await
    }

    /// Tailer side: the ticket a pass starting now answers.
    pub fn starting(&self) -> u64 {
        self.asked.load(Ordering::Acquire)
    }

    /// Tailer side: a pass that started with `ticket` has sent its chunks.
    pub fn answer(&self, ticket: u64) {
        self.answered.send_if_modified(|done| {
            let newer = ticket > *done;
            if newer {
                *done = ticket;
            }
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_pass_answers_only_requests_made_before_it_started() {
        let r = Arc::new(ReadRequests::default());
        let started = r.starting();
        let ticket = r.ask();
        // The pass that started before the request does not answer it.
        r.answer(started);
        let early = tokio::time::timeout(Duration::from_millis(50), r.answered(ticket)).await;
        assert!(
            early.is_err(),
            "answered by a pass that began before the request"
        );
        // The tailer is woken by the request (the permit was kept) and its next pass does.
        tokio::time::timeout(Duration::from_secs(1), r.asked())
            .await
            .expect("the request wakes the tailer");
        let next = r.starting();
        assert_eq!(next, ticket);
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.answered(ticket).await }
        });
        r.answer(next);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("answered")
            .expect("joined");
        // An older answer never moves the counter back.
        r.answer(0);
        tokio::time::timeout(Duration::from_millis(50), r.answered(ticket))
            .await
            .expect("still answered");
    }
}
