//! Kinesis Data Firehose: PutRecordBatch within the service limits.
//!
//! Several NDJSON lines are packed into one Firehose record (Firehose bills each
//! record rounded up to 5 KB, so packing small lines cuts cost); a batch holds at
//! most 500 records and 1 MB and is sent when full or when its oldest line has
//! waited `--linger`. When `FailedPutCount > 0` only the failed records are sent
//! again, after a full-jitter backoff — records that were accepted are never
//! re-sent, so a partial failure cannot duplicate them. Chunks are acknowledged
//! only after every record holding their lines was accepted.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use airside_core::aws::{ErrorClass, classified, classify, describe};
use airside_core::shutdown::Shutdown;
use aws_sdk_firehose::Client;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Acker, OutputError, Retrier, check_destination};
use crate::chunk::Chunk;

/// Most records in one PutRecordBatch call.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes of record data in one call. The service allows 4 MiB per request; a
/// quarter of that keeps a sidecar's memory bounded: while a call is in flight logship
/// holds the batch, its copy for re-sending failed records, and the SDK's base64 JSON
/// body (4/3 of the data, built in a buffer grown by doubling, so that the old and the
/// new buffer are both alive at its last growth). With 4 MB batches that peaked at 35
/// MiB RSS under a full-speed file backlog; 2 MB batches peaked at 24.3 MiB there and at
/// 31.4–33.8 MiB with the forward input's 8 connections, 1 MB at 20.4 and 27.9 MiB, at
/// about 8 % more CPU per byte (bench/logship/RESULTS.md, session 15). A Firehose
/// stream's own throughput quota (1–5 MiB/s per stream by default) is far below what
/// even 1 MB calls carry.
pub const MAX_BATCH_BYTES: usize = 1_000_000;
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

/// One PutRecordBatch call being filled. Record bytes are not copied into the batch:
/// it keeps the chunks its records come from, and each Firehose record is a range of
/// the output's byte stream (every chunk's data, one after the other). The bytes are
/// copied once per attempt, straight into the request; a partial failure rebuilds only
/// the failed records from the same chunks.
#[derive(Default)]
struct Batch {
    /// Chunks the records draw on, each with where its data starts in the stream.
    chunks: Vec<(u64, Arc<Chunk>)>,
    /// Where the next chunk's data starts in the stream (kept across batches).
    stream_end: u64,
    /// Closed records.
    records: Vec<Range<u64>>,
    /// NDJSON lines in each record (for metrics).
    lines: Vec<u32>,
    /// The record being packed (empty when none).
    current: Range<u64>,
    current_lines: u32,
    bytes: usize,
    acks: Vec<(u64, u64)>,
    first_at: Option<Instant>,
}

impl Batch {
    /// Makes `chunk`'s data part of the stream; returns where it starts.
    fn attach(&mut self, chunk: Arc<Chunk>) -> u64 {
        let base = self.stream_end;
        self.stream_end += chunk.data.len() as u64;
        self.chunks.push((base, chunk));
        base
    }

    fn current_len(&self) -> usize {
        (self.current.end - self.current.start) as usize
    }

    fn close_current(&mut self) {
        if !self.current.is_empty() {
            self.bytes += self.current_len();
            let end = self.current.end;
            self.records
                .push(std::mem::replace(&mut self.current, end..end));
            self.lines.push(std::mem::take(&mut self.current_lines));
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.current.is_empty() && self.acks.is_empty()
    }

    /// Whether a line of `len` bytes cannot join this batch without breaking a
    /// PutRecordBatch limit, so the batch must be sent first.
    fn is_full_for(&self, len: usize, record_size: usize) -> bool {
        let current = self.current_len();
        let joins_current = current == 0 || current + len <= record_size;
        let records_after = self.records.len() + if joins_current { 1 } else { 2 };
        records_after > MAX_BATCH_RECORDS || self.bytes + current + len > MAX_BATCH_BYTES
    }

    /// Adds the NDJSON line at `at..at + len` of the stream (lines come in stream
    /// order), packing it into the current Firehose record when it fits.
    fn push(&mut self, at: u64, len: usize, record_size: usize) {
        if !self.current.is_empty() && self.current_len() + len > record_size {
            self.close_current();
        }
        if self.current.is_empty() {
            self.current = at..at;
        }
        debug_assert_eq!(self.current.end, at, "lines arrive in stream order");
        self.current.end = at + len as u64;
        self.current_lines += 1;
    }
}

/// The bytes of `range` of the stream, from the chunks that hold them.
fn record_bytes(chunks: &[(u64, Arc<Chunk>)], range: &Range<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for (base, chunk) in chunks {
        let from = range.start.max(*base);
        let to = range.end.min(base + chunk.data.len() as u64);
        if from < to {
            out.extend_from_slice(&chunk.data[(from - base) as usize..(to - base) as usize]);
        }
    }
    out
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
                let call = client
                    .describe_delivery_stream()
                    .delivery_stream_name(stream);
                classified(call.send().await).map(|_| ())
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
                _ = crate::sleep_until_some(deadline), if deadline.is_some() => {
                    self.flush(&mut batch, &mut retrier).await?;
                }
            }
        }
    }

    async fn add(
        &self,
        batch: &mut Batch,
        chunk: &Arc<Chunk>,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        batch.first_at.get_or_insert_with(Instant::now);
        let base = batch.attach(chunk.clone());
        let mut start = 0u32;
        for &end in &chunk.ends {
            let len = (end - start) as usize;
            if batch.is_full_for(len, self.record_size) {
                self.flush(batch, retrier).await?;
                // The rest of this chunk goes into the next batch.
                batch.chunks.push((base, chunk.clone()));
                batch.first_at = Some(Instant::now());
            }
            batch.push(base + u64::from(start), len, self.record_size);
            start = end;
        }
        batch.acks.push((chunk.file, chunk.end));
        Ok(())
    }

    async fn flush(&self, batch: &mut Batch, retrier: &mut Retrier) -> Result<(), OutputError> {
        batch.close_current();
        let chunks = std::mem::take(&mut batch.chunks);
        if batch.is_empty() {
            batch.first_at = None;
            return Ok(());
        }
        let records = std::mem::take(&mut batch.records);
        let lines: u64 = batch.lines.drain(..).map(u64::from).sum();
        let bytes = std::mem::take(&mut batch.bytes);
        if !records.is_empty() {
            self.put_batch(&chunks, records, retrier).await?;
            crate::telemetry::batch_delivered(&self.name, lines, bytes as u64);
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
        chunks: &[(u64, Arc<Chunk>)],
        mut pending: Vec<Range<u64>>,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        loop {
            let records: Vec<Record> = pending
                .iter()
                .map(|range| {
                    Record::builder()
                        .data(Blob::new(record_bytes(chunks, range)))
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
                    let failed: Vec<Range<u64>> = pending
                        .into_iter()
                        .zip(responses)
                        .filter_map(|(range, r)| {
                            let code = r.error_code()?;
                            throttled |=
                                code == "ServiceUnavailableException" || code.contains("Throttl");
                            if first_error.is_empty() {
                                first_error =
                                    format!("{code}: {}", r.error_message().unwrap_or(""));
                            }
                            Some(range)
                        })
                        .collect();
                    crate::telemetry::records_failed(&self.name, failed.len(), &first_error);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Packs lines the way the output does (all in one chunk), sending (collecting) batches
    /// when full.
    fn pack(lines: &[Vec<u8>], record_size: usize) -> Vec<Vec<Vec<u8>>> {
        let mut ends = Vec::new();
        for l in lines {
            ends.push(ends.last().copied().unwrap_or(0) + l.len() as u32);
        }
        let chunk = Arc::new(Chunk {
            forwarded: false,
            data: lines.concat(),
            ends,
            file: 1,
            start: 0,
            end: 0,
            raw: Vec::new(),
            meta: Arc::new(crate::record::FileMeta::new("/x.log", 1, None)),
        });
        let mut batch = Batch::default();
        let base = batch.attach(chunk.clone());
        let mut sent = Vec::new();
        let mut send = |batch: &mut Batch| {
            batch.close_current();
            let records = std::mem::take(&mut batch.records);
            sent.push(
                records
                    .iter()
                    .map(|r| record_bytes(&batch.chunks, r))
                    .collect::<Vec<_>>(),
            );
            batch.bytes = 0;
        };
        let mut start = 0u32;
        for &end in &chunk.ends {
            let len = (end - start) as usize;
            if batch.is_full_for(len, record_size) {
                send(&mut batch);
            }
            batch.push(base + u64::from(start), len, record_size);
            start = end;
        }
        if !batch.current.is_empty() {
            send(&mut batch);
        }
        sent
    }

    #[test]
    fn small_lines_share_records_and_batches_cap_at_500_records() {
        let lines: Vec<Vec<u8>> = (0..4000)
            .map(|i| format!("{{\"n\":{i}}}\n").into_bytes())
            .collect();
        let batches = pack(&lines, 24);
        assert!(batches.len() >= 3, "{} batches", batches.len());
        assert!(batches.iter().all(|b| b.len() <= MAX_BATCH_RECORDS));
        assert_eq!(batches[0].len(), MAX_BATCH_RECORDS);
        assert!(
            batches[0]
                .iter()
                .all(|r| r.len() <= 24 && r.ends_with(b"\n"))
        );
        assert!(
            batches[0]
                .iter()
                .any(|r| r.iter().filter(|&&c| c == b'\n').count() == 2)
        );
        let one = pack(&lines, 1_000_000);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].len(), 1, "everything fits one packed record");
    }

    proptest! {
        #[test]
        fn batches_respect_every_putrecordbatch_limit(
            sizes in proptest::collection::vec(1usize..200_000, 1..300),
            record_size in 1usize..=MAX_RECORD_BYTES,
        ) {
            let lines: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut l = vec![b'a' + (i % 26) as u8; *n - 1];
                    l.push(b'\n');
                    l
                })
                .collect();
            let batches = pack(&lines, record_size);
            let mut rebuilt = Vec::new();
            for b in &batches {
                prop_assert!(!b.is_empty());
                prop_assert!(b.len() <= MAX_BATCH_RECORDS);
                prop_assert!(b.iter().map(Vec::len).sum::<usize>() <= MAX_BATCH_BYTES);
                for r in b {
                    // A record over the packing size holds exactly one line.
                    prop_assert!(r.len() <= record_size.max(200_000));
                    prop_assert!(r.len() <= MAX_RECORD_BYTES);
                    if r.len() > record_size {
                        prop_assert_eq!(r.iter().filter(|&&c| c == b'\n').count(), 1);
                    }
                    rebuilt.extend_from_slice(r);
                }
            }
            prop_assert_eq!(rebuilt, lines.concat());
        }
    }
}
