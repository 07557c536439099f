//! Publishing interval datums to CloudWatch with PutMetricData.
//!
//! * Batches stay within the API limits: at most 1,000 datums and 1 MB per
//!   request (sizes are estimated conservatively, above every wire encoding).
//! * Batches wait in a bounded [`Backlog`] while CloudWatch is unreachable:
//!   when it is full the **oldest** batches are dropped and counted, so memory
//!   stays bounded and the newest data (what alarms look at) survives.
//! * Throttling, 5xx and dropped connections are retried with full-jitter
//!   backoff ([`airside_core::backoff::Backoff`]) on top of the SDK's own
//!   retries, keeping the batch at the head of the backlog; a batch CloudWatch
//!   rejects as invalid is dropped and counted; access denied that persists
//!   ends the daemon with exit code 3.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airside_core::aws::{ErrorClass, classify, describe};
use airside_core::backoff::Backoff;
use airside_core::retry::{ACCESS_DENIED_ATTEMPTS, Retry, Verdict};
use airside_core::shutdown::Shutdown;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use tokio::sync::Notify;

use crate::datum::{Datum, DatumValue};

/// PutMetricData's limit of datums per request.
pub const MAX_DATUMS_PER_REQUEST: usize = 1000;
/// PutMetricData's payload limit (1 MB), with room for the envelope.
pub const MAX_REQUEST_BYTES: usize = 1_000_000 - 16 * 1024;

/// A generous upper estimate of a datum's encoded size. The query encoding
/// (`MetricData.member.N.Dimensions.member.M.Name=...`) is the largest of the
/// protocols CloudWatch accepts, so this is sized for it.
pub fn estimated_size(d: &Datum) -> usize {
    let dims: usize = d
        .dimensions
        .iter()
        .map(|(k, v)| 3 * (k.len() + v.len()) + 110)
        .sum();
    let values = match &d.value {
        DatumValue::Single(_) => 60,
        DatumValue::Values { values, .. } => values.len() * 100,
        DatumValue::Stats { .. } => 240,
    };
    200 + 3 * d.name.len() + dims + values
}

/// Splits datums into request-sized batches, keeping their order. (The signal is
/// batched apart by the caller: it never shares a request with other series.)
pub fn batches(datums: Vec<Datum>) -> Vec<Vec<Datum>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for d in datums {
        let size = estimated_size(&d);
        if !current.is_empty()
            && (current.len() >= MAX_DATUMS_PER_REQUEST || bytes + size > MAX_REQUEST_BYTES)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(d);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a queued batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// The autoscaling signal (QueueDepth, TaskDemand, DesiredWorkers, the alias): sent
    /// in a request of its own, first, and dropped last when the backlog is full.
    Signal,
    /// Allowlisted series.
    Series,
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    kind: BatchKind,
    datums: Vec<Datum>,
}

/// Batches waiting to be sent, bounded by a total number of datums.
#[derive(Debug)]
pub struct Backlog {
    queue: VecDeque<Queued>,
    next_seq: u64,
    datums: usize,
    max_datums: usize,
    /// Datums dropped because the backlog was full.
    pub dropped: u64,
}

impl Backlog {
    /// An empty backlog holding at most `max_datums`.
    pub fn new(max_datums: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            next_seq: 0,
            datums: 0,
            max_datums: max_datums.max(1),
            dropped: 0,
        }
    }

    /// Adds a batch at the tail, dropping the oldest batches if it does not fit (series
    /// batches before signal batches). Returns the number of datums dropped.
    pub fn push(&mut self, mut batch: Vec<Datum>, kind: BatchKind) -> u64 {
        let mut dropped = 0;
        if batch.len() > self.max_datums {
            let excess = batch.len() - self.max_datums;
            batch.drain(..excess);
            dropped += excess as u64;
        }
        while self.datums + batch.len() > self.max_datums {
            let victim = self
                .queue
                .iter()
                .position(|q| q.kind == BatchKind::Series)
                .or(if self.queue.is_empty() { None } else { Some(0) });
            match victim.and_then(|i| self.queue.remove(i)) {
                Some(old) => {
                    self.datums -= old.datums.len();
                    dropped += old.datums.len() as u64;
                }
                None => break,
            }
        }
        self.datums += batch.len();
        self.queue.push_back(Queued {
            seq: self.next_seq,
            kind,
            datums: batch,
        });
        self.next_seq += 1;
        self.dropped += dropped;
        dropped
    }

    /// A copy of the batch to send next with its sequence number: the oldest signal
    /// batch if any (autoscaling must not wait behind a backlog of series), else the
    /// oldest batch. It stays queued until [`Backlog::pop_sent`].
    pub fn front(&self) -> Option<(u64, Vec<Datum>)> {
        let q = self
            .queue
            .iter()
            .find(|q| q.kind == BatchKind::Signal)
            .or_else(|| self.queue.front())?;
        Some((q.seq, q.datums.clone()))
    }

    /// Removes batch `seq` after it was sent (or given up on). A no-op when that batch
    /// was already dropped to make room while it was in flight.
    pub fn pop_sent(&mut self, seq: u64) -> Option<usize> {
        let i = self.queue.iter().position(|q| q.seq == seq)?;
        let q = self.queue.remove(i)?;
        self.datums -= q.datums.len();
        Some(q.datums.len())
    }

    /// Replaces batch `seq` by its two halves, in place, so that a request CloudWatch
    /// rejected as invalid can be narrowed down to the datums it rejects. Returns false
    /// when the batch is gone or has a single datum.
    pub fn split(&mut self, seq: u64) -> bool {
        let Some(i) = self.queue.iter().position(|q| q.seq == seq) else {
            return false;
        };
        if self.queue[i].datums.len() < 2 {
            return false;
        }
        let kind = self.queue[i].kind;
        let mut first = std::mem::take(&mut self.queue[i].datums);
        let second = first.split_off(first.len() / 2);
        self.queue[i].datums = first;
        self.queue[i].seq = self.next_seq;
        self.queue.insert(
            i + 1,
            Queued {
                seq: self.next_seq + 1,
                kind,
                datums: second,
            },
        );
        self.next_seq += 2;
        true
    }

    /// Datums queued.
    pub fn datums(&self) -> usize {
        self.datums
    }

    /// Batches queued.
    pub fn batches(&self) -> usize {
        self.queue.len()
    }
}

/// Converts a datum to the SDK's type.
pub fn to_sdk(d: &Datum) -> MetricDatum {
    let mut b = MetricDatum::builder()
        .metric_name(&*d.name)
        .timestamp(DateTime::from(d.timestamp))
        .unit(StandardUnit::from(d.unit.as_str()));
    for (k, v) in &d.dimensions {
        b = b.dimensions(Dimension::builder().name(k).value(v).build());
    }
    b = match &d.value {
        DatumValue::Single(v) => b.value(*v),
        DatumValue::Values { values, counts } => b
            .set_values(Some(values.clone()))
            .set_counts(Some(counts.clone())),
        DatumValue::Stats {
            count,
            sum,
            min,
            max,
        } => b.statistic_values(
            StatisticSet::builder()
                .sample_count(*count)
                .sum(*sum)
                .minimum(*min)
                .maximum(*max)
                .build(),
        ),
    };
    if d.high_resolution {
        b = b.storage_resolution(1);
    }
    b.build()
}

/// Why publishing stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Access stayed denied across retries.
    #[error("CloudWatch denied access after {attempts} attempts: {message}")]
    AccessDenied {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        message: String,
    },
}

/// Sends backlog batches to CloudWatch, one request at a time, oldest first.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    namespace: String,
    backlog: Arc<Mutex<Backlog>>,
    wake: Arc<Notify>,
    backoff: Backoff,
}

impl Publisher {
    /// A publisher for `namespace` sending the batches of `backlog`.
    pub fn new(
        client: Client,
        namespace: String,
        backlog: Arc<Mutex<Backlog>>,
        wake: Arc<Notify>,
        backoff: Backoff,
    ) -> Self {
        Self {
            client,
            namespace,
            backlog,
            wake,
            backoff,
        }
    }

    /// Checks at start that the namespace can be read (credentials, endpoint, permissions).
    pub async fn check(&self) -> Result<(), (ErrorClass, String)> {
        match self
            .client
            .list_metrics()
            .namespace(&self.namespace)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err((classify(&e), describe(&e))),
        }
    }

    /// Sends until the backlog is empty and `stop` is cancelled. While `stop` is not
    /// cancelled, waits for new batches; once it is, returns when the backlog is empty
    /// (the caller bounds that drain with a timeout).
    pub async fn run(&self, stop: Shutdown) -> Result<(), PublishError> {
        let mut retry = Retry::daemon(self.backoff);
        loop {
            let batch = self.backlog.lock().expect("backlog lock").front();
            let Some((seq, batch)) = batch else {
                if stop.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            };
            let datums: Vec<MetricDatum> = batch.iter().map(to_sdk).collect();
            let started = std::time::Instant::now();
            let result = self
                .client
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(datums))
                .send()
                .await;
            crate::telemetry::request_took(started.elapsed());
            match result {
                Ok(_) => {
                    self.backlog.lock().expect("backlog lock").pop_sent(seq);
                    crate::telemetry::request_accepted(batch.len());
                    retry.succeeded();
                }
                Err(e) => {
                    let class = classify(&e);
                    let message = describe(&e);
                    crate::telemetry::request_failed(class.as_str());
                    let delay = match retry.failed(class) {
                        Verdict::RetryAfter(delay) => delay,
                        Verdict::GiveUp if class == ErrorClass::AccessDenied => {
                            return Err(PublishError::AccessDenied {
                                attempts: ACCESS_DENIED_ATTEMPTS,
                                message,
                            });
                        }
                        Verdict::GiveUp => {
                            // CloudWatch rejects the whole request for one bad datum. Every
                            // datum passed the documented rules (`rules`), so this is a rule
                            // we do not know: halve the request until the datum it rejects
                            // is alone, drop that one, and send the rest.
                            let mut backlog = self.backlog.lock().expect("backlog lock");
                            if backlog.split(seq) {
                                drop(backlog);
                                crate::telemetry::request_split(batch.len(), &message);
                                continue;
                            }
                            backlog.pop_sent(seq);
                            drop(backlog);
                            let first = batch.first();
                            crate::telemetry::datums_rejected(
                                batch.len(),
                                first.map(|d| &*d.name),
                                &first.map(|d| &d.dimensions),
                                &message,
                            );
                            continue;
                        }
                    };
                    tracing::warn!(error = %message, class = class.as_str(), retry_in = ?delay, datums = batch.len(), "PutMetricData failed; retrying");
                    if stop.is_cancelled() {
                        // Draining: retry promptly within the caller's grace period.
                        tokio::time::sleep(delay.min(Duration::from_millis(500))).await;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::Unit;
    use std::time::SystemTime;

    fn d(name: &str, value: DatumValue) -> Datum {
        Datum {
            name: name.into(),
            dimensions: vec![("pool_name".into(), "default_pool".into())],
            value,
            unit: Unit::None,
            high_resolution: false,
            timestamp: SystemTime::now(),
        }
    }

    #[test]
    fn batches_respect_count_and_size() {
        let many: Vec<_> = (0..2500)
            .map(|i| d(&format!("m{i}"), DatumValue::Single(1.0)))
            .collect();
        let b = batches(many);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        let big = DatumValue::Values {
            values: (0..150).map(f64::from).collect(),
            counts: vec![1.0; 150],
        };
        let heavy: Vec<_> = (0..200).map(|i| d(&format!("t{i}"), big.clone())).collect();
        let b = batches(heavy);
        assert!(b.len() > 1);
        for batch in &b {
            let bytes: usize = batch.iter().map(estimated_size).sum();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes}");
        }
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 200);
    }

    #[test]
    fn backlog_drops_oldest_first() {
        let mut b = Backlog::new(5);
        assert_eq!(
            b.push(vec![d("a", DatumValue::Single(1.0)); 3], BatchKind::Series),
            0
        );
        assert_eq!(
            b.push(vec![d("b", DatumValue::Single(1.0)); 2], BatchKind::Series),
            0
        );
        assert_eq!(
            b.push(vec![d("c", DatumValue::Single(1.0)); 2], BatchKind::Series),
            3
        );
        assert_eq!(b.datums(), 4);
        let (seq_b, front) = b.front().unwrap();
        assert_eq!(&*front[0].name, "b");
        // "b" is in flight when a push drops it: its success must not pop "c".
        assert_eq!(
            b.push(vec![d("c2", DatumValue::Single(1.0)); 2], BatchKind::Series),
            2
        );
        assert_eq!(b.pop_sent(seq_b), None);
        let (seq_c, front) = b.front().unwrap();
        assert_eq!(&*front[0].name, "c");
        assert_eq!(b.pop_sent(seq_c), Some(2));
        assert_eq!(b.pop_sent(seq_c), None);
        assert_eq!(
            b.push(vec![d("x", DatumValue::Single(1.0)); 9], BatchKind::Series),
            6
        );
        assert_eq!(b.datums(), 5);
        assert_eq!(b.dropped, 11);
    }

    #[test]
    fn signal_batches_go_first_and_are_dropped_last() {
        let one = |n: &str| vec![d(n, DatumValue::Single(1.0))];
        let mut b = Backlog::new(3);
        b.push(one("series1"), BatchKind::Series);
        b.push(one("QueueDepth"), BatchKind::Signal);
        b.push(one("series2"), BatchKind::Series);
        let (seq, front) = b.front().unwrap();
        assert_eq!(&*front[0].name, "QueueDepth", "the signal is sent first");
        // Full: the next signal pushes out the oldest series, not the older signal.
        assert_eq!(b.push(one("DesiredWorkers"), BatchKind::Signal), 1);
        assert_eq!(b.pop_sent(seq), Some(1));
        let names: Vec<String> = std::iter::from_fn(|| {
            let (seq, f) = b.front()?;
            b.pop_sent(seq);
            Some(f[0].name.to_string())
        })
        .collect();
        assert_eq!(names, ["DesiredWorkers", "series2"]);
    }

    #[test]
    fn a_rejected_batch_splits_down_to_single_datums() {
        let mut b = Backlog::new(100);
        let batch: Vec<_> = (0..5)
            .map(|i| d(&format!("m{i}"), DatumValue::Single(1.0)))
            .collect();
        b.push(batch, BatchKind::Series);
        let (seq, _) = b.front().unwrap();
        assert!(b.split(seq));
        assert!(!b.split(seq), "the old sequence number is gone");
        let (seq, half) = b.front().unwrap();
        assert_eq!(half.len(), 2);
        assert!(b.split(seq));
        let (seq, single) = b.front().unwrap();
        assert_eq!(single.len(), 1);
        assert!(!b.split(seq), "a single datum cannot be split");
        assert_eq!(b.datums(), 5, "splitting loses nothing");
        assert_eq!(b.batches(), 3);
    }

    #[test]
    fn sdk_datums_carry_every_shape() {
        let s = to_sdk(&d(
            "t",
            DatumValue::Values {
                values: vec![1.0, 2.0],
                counts: vec![3.0, 1.0],
            },
        ));
        assert_eq!(s.values(), &[1.0, 2.0]);
        assert_eq!(s.counts(), &[3.0, 1.0]);
        assert_eq!(s.dimensions().len(), 1);
        let s = to_sdk(&d(
            "t",
            DatumValue::Stats {
                count: 4.0,
                sum: 10.0,
                min: 1.0,
                max: 4.0,
            },
        ));
        assert_eq!(s.statistic_values().unwrap().maximum(), Some(4.0));
        let mut hr = d("q", DatumValue::Single(3.0));
        hr.high_resolution = true;
        assert_eq!(to_sdk(&hr).storage_resolution(), Some(1));
    }
}
