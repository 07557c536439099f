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
use airside_core::retry::{Retry, Verdict};
use airside_core::shutdown::Shutdown;
use tokio::sync::mpsc;

use crate::checkpoint::Ledger;
use crate::chunk::Chunk;

pub mod airflow;
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
    /// The forward input's disk buffer ledger: chunks cut from its segments
    /// ([`crate::input::forward::buffer::SEGMENT_ID_BIT`]) are acknowledged there.
    buffer: Option<Arc<Ledger>>,
    index: usize,
}

impl Acker {
    /// The acker of output number `index`.
    pub fn new(ledger: Arc<Ledger>, index: usize) -> Self {
        Self {
            ledger,
            buffer: None,
            index,
        }
    }

    /// Also acknowledges chunks of the forward input's buffer, into `buffer`.
    pub fn with_buffer(mut self, buffer: Option<Arc<Ledger>>) -> Self {
        self.buffer = buffer;
        self
    }

    /// Everything of `file` (a file, or a segment of the forward input's buffer) before
    /// `end` was delivered by this output.
    pub fn ack(&self, file: u64, end: u64) {
        // Segment ids and file ids are both 64-bit numbers; the buffer ledger knows its
        // segments (a file id equal to one is a 2^-64 chance).
        match &self.buffer {
            Some(b) if b.knows(file) => b.ack(self.index, file, end),
            _ => self.ledger.ack(self.index, file, end),
        }
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
    /// Airflow's remote-log layout in S3.
    Airflow(Box<airflow::AirflowOutput>),
}

impl Output {
    /// Delivers chunks until the channel closes (the tailer finished), then flushes.
    pub async fn run(self, rx: mpsc::Receiver<Arc<Chunk>>) -> Result<(), OutputError> {
        match self {
            Output::Firehose(o) => o.run(rx).await,
            Output::S3(o) => o.run(rx).await,
            Output::Stdout(o) => o.run(rx).await,
            Output::Airflow(o) => o.run(rx).await,
        }
    }
}

/// Retry bookkeeping shared by the outputs: the core's policy ([`Retry::daemon`]: transient
/// and throttled failures are retried with full-jitter backoff, access denied five times in
/// a row, a missing or invalid destination not at all) plus the outputs' metrics.
#[derive(Debug)]
pub(crate) struct Retrier {
    name: String,
    retry: Retry,
}

impl Retrier {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            retry: Retry::daemon(
                Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                    .expect("static backoff bounds are valid"),
            ),
        }
    }

    /// After a call the destination accepted.
    pub(crate) fn succeeded(&mut self) {
        self.retry.succeeded();
        crate::telemetry::delivery_succeeded(&self.name);
    }

    /// After a failed call: waits, or gives up with an error.
    pub(crate) async fn failed(
        &mut self,
        class: ErrorClass,
        message: String,
    ) -> Result<(), OutputError> {
        let delay = match self.retry.failed(class) {
            Verdict::RetryAfter(delay) => delay,
            Verdict::GiveUp => {
                crate::telemetry::delivery_failed(&self.name, class, &message, None);
                return Err(OutputError {
                    output: self.name.clone(),
                    class,
                    message,
                });
            }
        };
        crate::telemetry::delivery_failed(&self.name, class, &message, Some(delay));
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
            // The shared policy decides: a missing destination fails at once, access
            // denied after a few attempts, transient errors until shutdown.
            Err((class, message)) => {
                tokio::select! {
                    r = retrier.failed(class, message) => r?,
                    _ = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    }
}
