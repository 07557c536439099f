//! Kinesis Data Firehose: PutRecordBatch within the service limits.
//!
//! Several NDJSON lines are packed into one Firehose record (Firehose bills each
//! record rounded up to 5 KB, so packing small lines cuts cost); a batch holds at
//! most 500 records and 4 MB and is sent when full or when its oldest line has
//! waited `--linger`. When `FailedPutCount > 0` only the failed records are sent
//! again, after a full-jitter backoff — records that were accepted are never
//! re-sent, so a partial failure cannot duplicate them. Chunks are acknowledged
//! only after every record holding their lines was accepted.

use std::sync::Arc;
use std::time::Duration;

use airside_core::aws::{ErrorClass, classify, describe};
use airside_core::shutdown::Shutdown;
use aws_sdk_firehose::Client;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Acker, OutputError, Retrier, check_destination};
use crate::tail::Chunk;

/// Most records in one PutRecordBatch call.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes of record data in one call (the service limit is 4 MiB per request).
pub const MAX_BATCH_BYTES: usize = 4_000_000;
/// Largest Firehose record (1,000 KiB before base64).
pub const MAX_RECORD_BYTES: usize = 1_000 * 1024;

/// The Firehose output.
pub struct FirehoseOutput {
    client: Client,
    stream: String,
    name: String,
    record_size: usize,
    linger: Duration,
    acker: Acker,
}

#[derive(Default)]
struct Batch {
    records: Vec<Vec<u8>>,
    /// NDJSON lines in each record (for metrics).
    lines: Vec<u32>,
    current: Vec<u8>,
    current_lines: u32,
    bytes: usize,
    acks: Vec<(u64, u64)>,
    first_at: Option<Instant>,
}

impl Batch {
    fn close_current(&mut self) {
        if !self.current.is_empty() {
            self.bytes += self.current.len();
            self.records.push(std::mem::take(&mut self.current));
            self.lines.push(std::mem::take(&mut self.current_lines));
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.current.is_empty() && self.acks.is_empty()
    }
}

impl FirehoseOutput {
    /// Checks that the delivery stream exists (DescribeDeliveryStream), then returns the
    /// output. `Ok(None)` when shutdown came first.
    pub async fn connect(
        client: Client,
        stream: &str,
        record_size: usize,
        linger: Duration,
        acker: Acker,
        shutdown: &Shutdown,
    ) -> Result<Option<Self>, OutputError> {
        let name = format!("firehose:{stream}");
        let ok = check_destination(&name, shutdown, || {
            let client = client.clone();
            async move {
                client
                    .describe_delivery_stream()
                    .delivery_stream_name(stream)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| (classify(&e), describe(&e)))
            }
        })
        .await?;
        Ok(ok.then(|| Self {
            client,
            stream: stream.to_string(),
            name,
            record_size: record_size.clamp(1, MAX_RECORD_BYTES),
            linger,
            acker,
        }))
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Arc<Chunk>>) -> Result<(), OutputError> {
        let mut batch = Batch::default();
        let mut retrier = Retrier::new(&self.name);
        loop {
            let deadline = batch.first_at.map(|t| t + self.linger);
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(chunk) => self.add(&mut batch, &chunk, &mut retrier).await?,
                    None => {
                        self.flush(&mut batch, &mut retrier).await?;
                        return Ok(());
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.flush(&mut batch, &mut retrier).await?;
                }
            }
        }
    }

    async fn add(
        &self,
        batch: &mut Batch,
        chunk: &Chunk,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        batch.first_at.get_or_insert_with(Instant::now);
        for rec in chunk.records() {
            if !batch.current.is_empty() && batch.current.len() + rec.len() > self.record_size {
                batch.close_current();
            }
            let starts_record = batch.current.is_empty();
            if (starts_record && batch.records.len() >= MAX_BATCH_RECORDS)
                || batch.bytes + batch.current.len() + rec.len() > MAX_BATCH_BYTES
            {
                self.flush(batch, retrier).await?;
                batch.first_at = Some(Instant::now());
            }
            batch.current.extend_from_slice(rec);
            batch.current_lines += 1;
        }
        batch.acks.push((chunk.file, chunk.end));
        Ok(())
    }

    async fn flush(&self, batch: &mut Batch, retrier: &mut Retrier) -> Result<(), OutputError> {
        batch.close_current();
        if batch.is_empty() {
            batch.first_at = None;
            return Ok(());
        }
        let records = std::mem::take(&mut batch.records);
        let lines: u64 = batch.lines.drain(..).map(u64::from).sum();
        let bytes = std::mem::take(&mut batch.bytes);
        if !records.is_empty() {
            self.put_batch(records, retrier).await?;
            metrics::counter!("logship_records_sent_total", "output" => self.name.clone())
                .increment(lines);
            metrics::counter!("logship_bytes_sent_total", "output" => self.name.clone())
                .increment(bytes as u64);
            metrics::counter!("logship_batches_total", "output" => self.name.clone()).increment(1);
            metrics::gauge!("logship_last_batch_records", "output" => self.name.clone())
                .set(lines as f64);
            metrics::gauge!("logship_last_batch_bytes", "output" => self.name.clone())
                .set(bytes as f64);
        }
        for (file, end) in batch.acks.drain(..) {
            self.acker.ack(file, end);
        }
        batch.first_at = None;
        Ok(())
    }

    /// Sends records until every one was accepted, re-sending only the failed ones.
    async fn put_batch(
        &self,
        mut pending: Vec<Vec<u8>>,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        loop {
            let records: Vec<Record> = pending
                .iter()
                .map(|data| {
                    Record::builder()
                        .data(Blob::new(data.clone()))
                        .build()
                        .expect("data is set")
                })
                .collect();
            let sent = self
                .client
                .put_record_batch()
                .delivery_stream_name(&self.stream)
                .set_records(Some(records))
                .send()
                .await;
            match sent {
                Ok(out) if out.failed_put_count() == 0 => {
                    retrier.succeeded();
                    return Ok(());
                }
                Ok(out) => {
                    let responses = out.request_responses();
                    if responses.len() != pending.len() {
                        // Cannot tell which failed: send them all again (at-least-once).
                        retrier
                            .failed(
                                ErrorClass::Transient,
                                format!(
                                    "{} answers for {} records",
                                    responses.len(),
                                    pending.len()
                                ),
                            )
                            .await?;
                        continue;
                    }
                    let mut throttled = false;
                    let mut first_error = String::new();
                    let failed: Vec<Vec<u8>> = pending
                        .into_iter()
                        .zip(responses)
                        .filter_map(|(data, r)| {
                            let code = r.error_code()?;
                            throttled |=
                                code == "ServiceUnavailableException" || code.contains("Throttl");
                            if first_error.is_empty() {
                                first_error =
                                    format!("{code}: {}", r.error_message().unwrap_or(""));
                            }
                            Some(data)
                        })
                        .collect();
                    metrics::counter!("logship_records_failed_total", "output" => self.name.clone())
                        .increment(failed.len() as u64);
                    tracing::warn!(output = %self.name, failed = failed.len(), error = %first_error, "partial batch failure; re-sending only the failed records");
                    pending = failed;
                    if pending.is_empty() {
                        // FailedPutCount disagreed with the answers: nothing left to send.
                        return Ok(());
                    }
                    let class = if throttled {
                        ErrorClass::Throttled
                    } else {
                        ErrorClass::Transient
                    };
                    retrier.failed(class, first_error).await?;
                }
                Err(e) => retrier.failed(classify(&e), describe(&e)).await?,
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
