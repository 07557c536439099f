//! Outputs: where records go, and when they count as delivered.
//!
//! Every output runs as its own task reading [`Chunk`]s from a bounded channel
//! (a full channel pauses the tailer: backpressure with bounded memory) and
//! acknowledges a chunk to the [`Ledger`] only once the destination has accepted
//! every record in it.

use std::sync::Arc;
use std::time::Duration;

use airside_core::aws::ErrorClass;
use airside_core::backoff::Backoff;
use airside_core::shutdown::Shutdown;
use tokio::sync::mpsc;

use crate::checkpoint::Ledger;
use crate::chunk::Chunk;

pub mod firehose;
pub mod s3;
pub mod stdout;

/// Chunks waiting for one output. With chunks of at most 256 KiB of input this
/// bounds what waits in memory per output to a few MiB.
pub const CHANNEL_CAPACITY: usize = 4;

/// An output gave up.
#[derive(Debug, thiserror::Error)]
#[error("output {output}: {message}")]
pub struct OutputError {
    /// The output, as configured.
    pub output: String,
    /// What kind of failure.
    pub class: ErrorClass,
    /// What happened.
    pub message: String,
}

/// Acknowledges delivered chunks for one output.
#[derive(Debug, Clone)]
pub struct Acker {
    ledger: Arc<Ledger>,
    index: usize,
}

impl Acker {
    /// The acker of output number `index`.
    pub fn new(ledger: Arc<Ledger>, index: usize) -> Self {
        Self { ledger, index }
    }

    /// Everything of `file` before `end` was delivered by this output.
    pub fn ack(&self, file: u64, end: u64) {
        self.ledger.ack(self.index, file, end);
    }
}

/// One configured output, ready to run.
pub enum Output {
    /// Kinesis Data Firehose.
    Firehose(firehose::FirehoseOutput),
    /// S3.
    S3(s3::S3Output),
    /// Standard output.
    Stdout(stdout::StdoutOutput),
}

impl Output {
    /// Delivers chunks until the channel closes (the tailer finished), then flushes.
    pub async fn run(self, rx: mpsc::Receiver<Arc<Chunk>>) -> Result<(), OutputError> {
        match self {
            Output::Firehose(o) => o.run(rx).await,
            Output::S3(o) => o.run(rx).await,
            Output::Stdout(o) => o.run(rx).await,
        }
    }
}

/// Retry bookkeeping shared by the outputs: full-jitter backoff, metrics, and
/// giving up on errors that retrying does not fix (access denied, not found).
#[derive(Debug)]
pub(crate) struct Retrier {
    name: String,
    backoff: Backoff,
    attempt: u32,
    hard_failures: u32,
}

/// Consecutive non-retryable failures before an output gives up.
const HARD_FAILURE_LIMIT: u32 = 5;

impl Retrier {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                .expect("static backoff bounds are valid"),
            attempt: 0,
            hard_failures: 0,
        }
    }

    pub(crate) fn succeeded(&mut self) {
        self.attempt = 0;
        self.hard_failures = 0;
    }

    /// After a failed call: waits, or gives up with an error.
    pub(crate) async fn failed(
        &mut self,
        class: ErrorClass,
        message: String,
    ) -> Result<(), OutputError> {
        metrics::counter!(crate::telemetry::RETRIES_TOTAL, "output" => self.name.clone())
            .increment(1);
        if class == ErrorClass::Throttled {
            metrics::counter!(crate::telemetry::THROTTLES_TOTAL, "output" => self.name.clone())
                .increment(1);
        }
        if !class.is_retryable() {
            self.hard_failures += 1;
            if self.hard_failures >= HARD_FAILURE_LIMIT {
                return Err(OutputError {
                    output: self.name.clone(),
                    class,
                    message,
                });
            }
        }
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        tracing::warn!(output = %self.name, class = class.as_str(), error = %message, retry_in = ?delay, "delivery failed; retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Runs a destination check (DescribeDeliveryStream, HeadBucket) until it passes.
/// A missing destination fails at once; access denied after a few attempts;
/// transient errors are retried until `shutdown` (returns `Ok(false)` then).
pub(crate) async fn check_destination<F, Fut>(
    name: &str,
    shutdown: &Shutdown,
    mut check: F,
) -> Result<bool, OutputError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), (ErrorClass, String)>>,
{
    let mut retrier = Retrier::new(name);
    loop {
        if shutdown.is_cancelled() {
            return Ok(false);
        }
        match check().await {
            Ok(()) => {
                tracing::info!(output = %name, "destination checked");
                return Ok(true);
            }
            Err((class @ (ErrorClass::NotFound | ErrorClass::Invalid), message)) => {
                return Err(OutputError {
                    output: name.to_string(),
                    class,
                    message,
                });
            }
            Err((class, message)) => {
                tokio::select! {
                    r = retrier.failed(class, message) => r?,
                    _ = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    }
}
