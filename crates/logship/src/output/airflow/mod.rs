//! Airflow's remote-log layout in S3: each task log file, byte for byte, under the key
//! Airflow's own S3 reader lists, uploaded while the task runs.
//!
//! Every `--airflow-flush-interval` each growing file gets one PutObject holding what
//! it gained (folding in its last few objects, see [`objects`]); a file quiet for
//! `--airflow-compact-after` is compacted into one object re-read from the file, so a
//! finished attempt has at most two objects (the compacted one and a later tail). A
//! chunk is acknowledged once the object holding it is stored, as for the other
//! outputs. The names are in [`layout`]; what survives a restart in [`saved`].
//!
//! logship's role may only put and delete under the log prefix: no listing, no reads.
//! So it never looks at what Airflow's own uploader wrote; when Airflow's uploader is
//! left on, it empties the local file after uploading it whole, and logship, seeing a
//! file it stored turn empty, deletes its own objects of that attempt (see the README).

pub mod layout;
pub mod objects;
pub mod saved;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airside_core::aws::{ErrorClass, classified, classify, classify_code, describe};
use airside_core::shutdown::Shutdown;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::layout::{Name, attempt_key};
use self::objects::{Attempt, Upload};
use self::saved::{Saved, SavedError};
use super::{Acker, OutputError, Retrier, check_destination};
use crate::chunk::Chunk;
use crate::read_request::ReadRequests;

/// The most attempt keys remembered by file id (forgotten all at once beyond it; they
/// are derived again as chunks come).
const MAX_TRACKED_KEYS: usize = 65_536;

/// Settings of the Airflow-layout output.
#[derive(Debug, Clone)]
pub struct AirflowSettings {
    /// The bucket of `remote_base_log_folder`.
    pub bucket: String,
    /// Its key prefix (no leading or trailing slash; may be empty).
    pub prefix: String,
    /// Airflow's `base_log_folder`: keys are paths relative to it.
    pub folder: PathBuf,
    /// How often a growing file is uploaded.
    pub flush_interval: Duration,
    /// How long a file stays quiet before it is compacted.
    pub compact_after: Duration,
    /// What all files' bytes not yet uploaded may hold; beyond it they are uploaded early.
    pub max_buffered: u64,
    /// Where the saved state lives (logship's `--state-dir`).
    pub state_dir: PathBuf,
    /// This output's position among the outputs (names its state file).
    pub index: usize,
    /// The tailer's passes, asked for before each upload round (None when no files feed
    /// this output: only then does it upload on its own clock alone).
    pub reads: Option<Arc<ReadRequests>>,
}

/// The most an upload re-reads from the file to fold earlier objects into it.
pub const MAX_FOLD: u64 = 1 << 20;
/// How long an upload round waits for the pass it asked the tailer for (a tailer busy
/// with a backlog answers late; the round then uploads what has come).
const READ_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Uploads (and deletions) in flight at once.
const CONCURRENCY: usize = 8;
/// The most bytes of upload bodies held in memory at once. Every file's upload counter
/// runs in step (one upload per file per round), so the large folds of 200 files come
/// in the same round: without this bound, eight folds of up to 1 MiB each were in
/// memory together and took logship's peak RSS from 26 to 33 MiB on the 200-task
/// benchmark (bench/logship/RESULTS.md).
const BODY_BUDGET: usize = 3 << 20;
/// The most keys of one DeleteObjects request ("The request can contain a list of up to
/// 1,000 keys that you want to delete", DeleteObjects, Amazon S3 API Reference).
pub const MAX_DELETE_KEYS: usize = 1000;
/// Compaction reads a file larger than this from disk as the request goes, not into memory.
const IN_MEMORY: u64 = 1 << 20;
/// A forced re-upload after a restart reads at most this much into memory; beyond it
/// the object stays as it is (its bytes may show twice) rather than cost the memory.
const MAX_REFOLD: u64 = 16 << 20;

/// The Airflow-layout output.
pub struct AirflowOutput {
    client: Client,
    settings: AirflowSettings,
    name: String,
    acker: Acker,
    saved: Saved,
}

/// A followed file of this output.
struct Tracked {
    attempt: Attempt,
    path: PathBuf,
    last_data: Instant,
    records: u64,
    /// The stored end at the last compaction (or check), so a quiet file is compacted once.
    settled_at: Option<u64>,
}

/// One request's worth of work.
struct Job {
    key: String,
    upload: Upload,
    path: PathBuf,
    pending: Vec<u8>,
    compaction: bool,
}

/// What a job did.
struct JobResult {
    key: String,
    /// The upload that was sent (a fold falls back to the pending bytes alone when the
    /// file no longer has the folded bytes).
    upload: Upload,
    outcome: Result<u32, (ErrorClass, String)>,
    /// Bytes of the file uploaded for the first time.
    new_bytes: u64,
}

impl Job {
    /// The most bytes of its body this job holds in memory: the folded bytes it
    /// re-reads (unless a compaction streams them from the file) and the pending ones.
    fn body_in_memory(&self) -> u64 {
        let disk = self.upload.disk.end - self.upload.disk.start;
        let read = match self.compaction {
            true if disk > IN_MEMORY => 0,
            true => disk,
            false => disk.min(MAX_REFOLD),
        };
        read + self.pending.len() as u64
    }
}

impl JobResult {
    /// A job that could not be sent: the file does not have what it needs.
    fn failed(key: String, upload: Upload, why: String) -> Self {
        Self {
            key,
            upload,
            outcome: Err((ErrorClass::Invalid, why)),
            new_bytes: 0,
        }
    }
}

impl AirflowOutput {
    /// Loads the saved state and checks that logship may write under the prefix (a
    /// PutObject and a DeleteObjects of `PREFIX/.logship-write-check`: the two requests
    /// it makes, authorized by the two actions its role has). `Ok(None)` when shutdown came first.
    pub async fn connect(
        client: Client,
        settings: AirflowSettings,
        acker: Acker,
        shutdown: &Shutdown,
    ) -> Result<Option<Self>, OutputError> {
        let name = format!("airflow-s3://{}/{}", settings.bucket, settings.prefix);
        let saved = Saved::load(&settings.state_dir, settings.index).map_err(|e| OutputError {
            output: name.clone(),
            class: ErrorClass::Invalid,
            message: e.to_string(),
        })?;
        let probe = join_key(&settings.prefix, ".logship-write-check");
        let bucket = settings.bucket.clone();
        let ok = check_destination(&name, shutdown, || {
            let (client, bucket, probe) = (client.clone(), bucket.clone(), probe.clone());
            async move {
                let put = client.put_object().bucket(&bucket).key(&probe);
                classified(put.body(ByteStream::from_static(b"")).send().await)?;
                // The way superseded objects are deleted: a denial comes back as an
                // error of the key inside a successful answer, not as an HTTP error.
                let batch = [(probe.clone(), String::new(), Name::Whole)];
                let failed = delete_batch(&client, &bucket, &batch)
                    .await
                    .map_err(|e| (ErrorClass::Invalid, e))?;
                match failed.into_values().next() {
                    Some(why) => Err((classify_code(why.split(' ').next(), None), why)),
                    None => Ok(()),
                }
            }
        })
        .await?;
        Ok(ok.then(|| Self {
            client,
            settings,
            name,
            acker,
            saved,
        }))
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Arc<Chunk>>,
    ) -> Result<(), OutputError> {
        let mut files: HashMap<String, Tracked> = HashMap::new();
        let mut outside: HashSet<u64> = HashSet::new();
        // Each followed file's path and attempt key, so a chunk does not derive it again.
        let mut keys: HashMap<u64, (String, String)> = HashMap::new();
        let mut retrier = Retrier::new(&self.name);
        // Bytes waiting for an upload, kept as chunks come rather than summed per chunk.
        let mut held = 0u64;
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The pass asked for at the last tick, and until when it is waited for.
        let mut asked: Option<(u64, Instant)> = None;
        let reads = self.settings.reads.clone();
        loop {
            let answered = async {
                match (&reads, asked) {
                    (Some(r), Some((ticket, _))) => r.answered(ticket).await,
                    _ => std::future::pending().await,
                }
            };
            let wait_until = asked.map(|(_, until)| until);
            tokio::select! {
                // Chunks first: those of the pass that answered are in the channel
                // before its answer, and must be in the round.
                biased;
                chunk = rx.recv() => match chunk {
                    Some(chunk) => {
                        self.add(&mut files, &mut outside, &mut keys, &chunk, &mut retrier).await?;
                        held += chunk.raw.len() as u64;
                        if held > self.settings.max_buffered {
                            self.upload_round(&mut files, None, &mut retrier).await?;
                            held = pending_bytes(&files);
                        }
                    }
                    None => {
                        // The input finished (shutdown): upload what waits, then stop.
                        // Compaction waits for the next start.
                        while files.values().any(|t| t.attempt.has_pending()) {
                            self.upload_round(&mut files, None, &mut retrier).await?;
                        }
                        self.delete_doomed(&mut files).await;
                        self.store(&files);
                        return Ok(());
                    }
                },
                _ = answered => {
                    asked = None;
                    self.round(&mut files, &mut held, &mut retrier).await?;
                }
                _ = crate::sleep_until_some(wait_until), if wait_until.is_some() => {
                    asked = None;
                    self.round(&mut files, &mut held, &mut retrier).await?;
                }
                _ = tick.tick() => match &reads {
                    Some(r) if asked.is_none() => {
                        asked = Some((r.ask(), Instant::now() + READ_ANSWER_WAIT.min(self.settings.flush_interval)));
                    }
                    Some(_) => {}
                    None => self.round(&mut files, &mut held, &mut retrier).await?,
                },
            }
        }
    }

    /// The work of every flush interval: one upload of each file with bytes waiting,
    /// then quiet files settled, superseded objects deleted and idle files forgotten.
    async fn round(
        &mut self,
        files: &mut HashMap<String, Tracked>,
        held: &mut u64,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        self.upload_round(files, None, retrier).await?;
        *held = pending_bytes(files);
        crate::telemetry::airflow_buffered(&self.name, *held);
        self.settle_quiet(files).await;
        self.delete_doomed(files).await;
        self.evict_idle(files);
        Ok(())
    }

    /// Takes one chunk: its bytes wait for the next upload of its file.
    async fn add(
        &mut self,
        files: &mut HashMap<String, Tracked>,
        outside: &mut HashSet<u64>,
        keys: &mut HashMap<u64, (String, String)>,
        chunk: &Chunk,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        if chunk.forwarded {
            // Container output from the forward input never routes here (the layout
            // takes task log files); its ranges are acknowledged as passed over.
            self.acker.ack(chunk.file, chunk.end);
            return Ok(());
        }
        let path = Path::new(&chunk.meta.path);
        let cached = keys
            .get(&chunk.file)
            .filter(|(p, _)| *p == chunk.meta.path)
            .map(|(_, k)| k.clone());
        let key = cached.or_else(|| {
            let key = attempt_key(&self.settings.prefix, &self.settings.folder, path)?;
            if keys.len() >= MAX_TRACKED_KEYS {
                keys.clear();
            }
            keys.insert(chunk.file, (chunk.meta.path.clone(), key.clone()));
            Some(key)
        });
        let Some(key) = key else {
            if outside.insert(chunk.file) {
                crate::telemetry::airflow_file_outside_folder(
                    &self.name,
                    &chunk.meta.path,
                    &self.settings.folder,
                );
            }
            self.acker.ack(chunk.file, chunk.end);
            return Ok(());
        };
        if !files.contains_key(&key) {
            let attempt = match self.saved.attempts.get(&key) {
                Some(s) => Attempt::restore(
                    chunk.file,
                    s.file,
                    s.base,
                    chunk.start,
                    s.objects.clone(),
                    s.maybe.clone(),
                ),
                None => Attempt::new(chunk.file, chunk.start),
            };
            files.insert(
                key.clone(),
                Tracked {
                    attempt,
                    path: path.to_path_buf(),
                    last_data: Instant::now(),
                    records: 0,
                    settled_at: None,
                },
            );
        }
        let continues = files[&key].attempt.continues(chunk.file, chunk.start);
        if !continues {
            // A new identity of the path (truncated and written again) or a jump: what
            // waits goes first, under the old offsets.
            while files[&key].attempt.has_pending() {
                self.upload_round(files, Some(&key), retrier).await?;
            }
            let t = files.get_mut(&key).expect("inserted above");
            t.attempt.restart(chunk.file, chunk.start);
        }
        let t = files.get_mut(&key).expect("inserted above");
        t.attempt.push(&chunk.raw, chunk.file, chunk.end);
        t.records += chunk.ends.len() as u64;
        if t.path != path {
            t.path = path.to_path_buf();
        }
        t.last_data = Instant::now();
        t.settled_at = None;
        Ok(())
    }

    /// One upload of every file with bytes waiting (or of `only`): its name saved
    /// first, acknowledged once stored, superseded objects deleted after.
    async fn upload_round(
        &mut self,
        files: &mut HashMap<String, Tracked>,
        only: Option<&str>,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        let mut jobs = Vec::new();
        for (key, t) in files.iter_mut() {
            if only.is_some_and(|o| o != key) {
                continue;
            }
            for (file, end) in t.attempt.take_acks_without_bytes() {
                self.acker.ack(file, end);
            }
            if let Some(upload) = t.attempt.plan(MAX_FOLD) {
                t.attempt.begin(&upload);
                jobs.push(Job {
                    key: key.clone(),
                    upload,
                    path: t.path.clone(),
                    pending: t.attempt.pending().to_vec(),
                    compaction: false,
                });
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        self.store(files);
        let results = self.run_jobs(jobs).await;
        let mut failure = None;
        for r in results {
            let Some(t) = files.get_mut(&r.key) else {
                continue;
            };
            match r.outcome {
                Ok(crc) => {
                    let done = t.attempt.uploaded(&r.upload, crc);
                    crate::telemetry::airflow_uploaded(
                        &self.name,
                        &r.key,
                        r.upload.start,
                        std::mem::take(&mut t.records),
                        r.new_bytes,
                        r.upload.end - r.upload.start,
                    );
                    for (file, end) in done.acks {
                        self.acker.ack(file, end);
                    }
                }
                Err((class, message)) => {
                    t.attempt.failed(&r.upload);
                    failure.get_or_insert((class, format!("{}: {message}", r.key)));
                }
            }
        }
        // Saved before the acknowledgements reach the checkpoint file (its writer runs
        // on its own cadence): a restart never resumes past what this file knows.
        self.store(files);
        match failure {
            Some((class, message)) => retrier.failed(class, message).await,
            None => {
                retrier.succeeded();
                Ok(())
            }
        }
    }

    /// Files quiet for a flush interval: emptied by Airflow's own uploader (our objects
    /// go), or quiet for `--airflow-compact-after` (compacted into one object).
    async fn settle_quiet(&mut self, files: &mut HashMap<String, Tracked>) {
        let mut jobs = Vec::new();
        for (key, t) in files.iter_mut() {
            let quiet = t.last_data.elapsed();
            let end = t.attempt.stored().last().map(|o| o.end());
            if t.attempt.has_pending()
                || quiet < self.settings.flush_interval
                || t.settled_at == end
            {
                continue;
            }
            let on_disk = std::fs::metadata(&t.path).map(|m| m.len()).ok();
            if on_disk == Some(0) && t.attempt.stored_bytes() > 0 && t.attempt.base() == 0 {
                // Airflow's uploader empties a log file after uploading it whole to the
                // attempt key: ours would show every line twice.
                let names = t.attempt.superseded();
                crate::telemetry::airflow_compacted(
                    &self.name,
                    key,
                    "airflow_uploaded",
                    names.len(),
                );
                t.settled_at = t.attempt.stored().last().map(|o| o.end());
                continue;
            }
            if quiet < self.settings.compact_after {
                continue;
            }
            t.settled_at = end;
            if let Some(upload) = t.attempt.compaction() {
                t.attempt.begin(&upload);
                jobs.push(Job {
                    key: key.clone(),
                    upload,
                    path: t.path.clone(),
                    pending: Vec::new(),
                    compaction: true,
                });
            }
        }
        if jobs.is_empty() {
            return;
        }
        self.store(files);
        for r in self.run_jobs(jobs).await {
            let Some(t) = files.get_mut(&r.key) else {
                continue;
            };
            match r.outcome {
                Ok(crc) => {
                    let deleted = t.attempt.compacted(&r.upload, crc);
                    crate::telemetry::airflow_compacted(
                        &self.name,
                        &r.key,
                        "compacted",
                        deleted.len(),
                    );
                    t.settled_at = t.attempt.stored().last().map(|o| o.end());
                }
                Err((class, message)) => {
                    t.attempt.failed(&r.upload);
                    crate::telemetry::airflow_compaction_failed(
                        &self.name, &r.key, class, &message,
                    );
                    // Tried again at the next tick.
                    t.settled_at = None;
                }
            }
        }
        self.store(files);
    }

    /// Deletes superseded objects, up to [`MAX_DELETE_KEYS`] in one DeleteObjects
    /// request (one request per round for a busy worker, where one DeleteObject per
    /// object cost a request per fold). A key S3 reports as not deleted, or every key of
    /// a failed request, is tried again at the next tick (until then the reader shows
    /// those bytes twice; nothing is lost).
    async fn delete_doomed(&mut self, files: &mut HashMap<String, Tracked>) {
        let mut targets = Vec::new();
        for (key, t) in files.iter() {
            for name in t.attempt.doomed() {
                targets.push((name.key(key), key.clone(), name));
            }
        }
        if targets.is_empty() {
            return;
        }
        // Airflow's reader lists the attempt, then reads the objects one by one. Deleted
        // at once after the fold that supersedes them, an object could vanish between
        // a poll's read of the old first object and its read of this one: that poll
        // would lack every line after the old first object (seen once in CI as a view
        // 20 s behind). Waiting a moment makes a poll that slow unlikely; one that
        // reads both the fold and these sees the lines twice, which the UI's merge drops.
        tokio::time::sleep(delete_delay(self.settings.flush_interval)).await;
        let client = &self.client;
        let bucket = &self.settings.bucket;
        let mut batches = Vec::new();
        while !targets.is_empty() {
            let rest = targets.split_off(targets.len().min(MAX_DELETE_KEYS));
            batches.push(std::mem::replace(&mut targets, rest));
        }
        let batches: Vec<_> = futures::stream::iter(batches)
            .map(|batch| async move {
                let outcome = delete_batch(client, bucket, &batch).await;
                (batch, outcome)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut deleted = 0;
        for (batch, outcome) in batches {
            let failed = match outcome {
                Ok(failed) => failed,
                Err(e) => {
                    crate::telemetry::airflow_delete_failed(
                        &self.name,
                        &batch[0].0,
                        batch.len(),
                        &e,
                    );
                    continue;
                }
            };
            for (object, key, name) in batch {
                if let Some(e) = failed.get(object.as_str()) {
                    crate::telemetry::airflow_delete_failed(&self.name, &object, 1, e);
                    continue;
                }
                if let (Some(t), Name::Segment(start)) = (files.get_mut(&key), name) {
                    t.attempt.deleted(start);
                    deleted += 1;
                }
            }
        }
        crate::telemetry::airflow_objects_deleted(&self.name, deleted);
        self.store(files);
    }

    /// Forgets files quiet for long, settled and with nothing to delete. A compacted
    /// attempt's saved entry goes too; any other stays, so that a restart still knows
    /// its objects.
    fn evict_idle(&mut self, files: &mut HashMap<String, Tracked>) {
        let idle = (self.settings.compact_after * 10).max(Duration::from_secs(600));
        let before = files.len();
        files.retain(|key, t| {
            let keep = t.attempt.has_pending()
                || !t.attempt.doomed().is_empty()
                || t.last_data.elapsed() < idle;
            if !keep && t.attempt.stored().len() <= 1 {
                self.saved.attempts.remove(key);
            }
            keep
        });
        if files.len() != before {
            self.store(files);
        }
        crate::telemetry::airflow_files(
            &self.name,
            files.len(),
            files.values().map(|t| t.attempt.stored().len()).sum(),
        );
    }

    /// Saves what every followed file's objects are. A failure is logged: the uploads
    /// go on, and a restart before the next good write may leave a few bytes shown twice.
    fn store(&mut self, files: &HashMap<String, Tracked>) {
        for (key, t) in files {
            self.saved.attempts.insert(key.clone(), t.attempt.saved());
        }
        if let Err(SavedError::Io { path, message }) = self.saved.store() {
            crate::telemetry::airflow_state_write_failed(&path, &message);
        }
    }

    async fn run_jobs(&self, jobs: Vec<Job>) -> Vec<JobResult> {
        let client = &self.client;
        let bucket = &self.settings.bucket;
        let budget = &tokio::sync::Semaphore::new(BODY_BUDGET);
        futures::stream::iter(jobs)
            .map(|job| async move {
                let cost = job.body_in_memory().min(BODY_BUDGET as u64) as u32;
                // The semaphore lives as long as this call and is never closed.
                let _held = budget.acquire_many(cost).await.ok();
                run_job(client, bucket, job).await
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }
}

/// Bytes waiting for an upload in all files.
fn pending_bytes(files: &HashMap<String, Tracked>) -> u64 {
    files
        .values()
        .map(|t| t.attempt.pending().len() as u64)
        .sum()
}

/// How long superseded objects stay after the fold that replaces them is stored: a
/// second, or a quarter of the flush interval when that is shorter (the round must
/// still end well within its interval).
fn delete_delay(flush_interval: Duration) -> Duration {
    (flush_interval / 4).min(Duration::from_secs(1))
}

/// `prefix/rest`, or `rest` when the prefix is empty.
fn join_key(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// One DeleteObjects request in quiet mode (S3 then answers only the keys it could not
/// delete): those keys with S3's reason, or why the whole request failed.
async fn delete_batch(
    client: &Client,
    bucket: &str,
    batch: &[(String, String, Name)],
) -> Result<HashMap<String, String>, String> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let objects = batch
        .iter()
        .map(|(object, _, _)| ObjectIdentifier::builder().key(object).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let delete = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()
        .map_err(|e| e.to_string())?;
    let out = client
        .delete_objects()
        .bucket(bucket)
        .delete(delete)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(out
        .errors()
        .iter()
        .filter_map(|e| {
            let why = format!(
                "{} {}",
                e.code().unwrap_or("error"),
                e.message().unwrap_or("")
            );
            Some((e.key()?.to_string(), why.trim_end().to_string()))
        })
        .collect())
}

/// Sends one upload: the file's bytes of `job.upload.disk` (checked against the CRCs of
/// what they fold) followed by the pending bytes.
async fn run_job(client: &Client, bucket: &str, job: Job) -> JobResult {
    let Job {
        key,
        mut upload,
        path,
        pending,
        compaction,
    } = job;
    let disk_len = upload.disk.end - upload.disk.start;
    let new_bytes = pending.len() as u64;
    let (body, crc) = if disk_len == 0 {
        let crc = crc32fast::hash(&pending);
        (ByteStream::from(pending), crc)
    } else {
        let keep = if compaction {
            disk_len <= IN_MEMORY
        } else {
            disk_len <= MAX_REFOLD
        };
        match read_checked(path.clone(), upload.clone(), keep, pending.len()).await {
            Ok((Some(mut bytes), crc)) => {
                let mut hasher = crc32fast::Hasher::new_with_initial_len(crc, bytes.len() as u64);
                hasher.update(&pending);
                bytes.extend_from_slice(&pending);
                (ByteStream::from(bytes), hasher.finalize())
            }
            Ok((None, crc)) if compaction => {
                // A large file: the body is read from it as the request goes.
                match ByteStream::read_from()
                    .path(&path)
                    .offset(upload.disk.start)
                    .length(aws_smithy_types::byte_stream::Length::Exact(disk_len))
                    .build()
                    .await
                {
                    Ok(stream) => (stream, crc),
                    Err(e) => {
                        let why = format!("cannot read {}: {e}", path.display());
                        return JobResult::failed(key, upload, why);
                    }
                }
            }
            other => {
                let why = match other {
                    Err(why) => why,
                    Ok(_) => format!("{disk_len} bytes are too many to re-read into memory"),
                };
                if compaction {
                    return JobResult::failed(key, upload, why);
                }
                // The file no longer has the folded bytes (or too many of them): upload
                // what waits on its own.
                crate::telemetry::airflow_fold_skipped(&key, &why);
                upload = Upload {
                    start: upload.end - pending.len() as u64,
                    disk: 0..0,
                    checks: Vec::new(),
                    folds: 0,
                    end: upload.end,
                };
                let crc = crc32fast::hash(&pending);
                (ByteStream::from(pending), crc)
            }
        }
    };
    let object = Name::Segment(upload.start).key(&key);
    let outcome = client
        .put_object()
        .bucket(bucket)
        .key(&object)
        .content_type("text/plain; charset=utf-8")
        .body(body)
        .send()
        .await
        .map(|_| crc)
        .map_err(|e| (classify(&e), describe(&e)));
    JobResult {
        key,
        upload,
        outcome,
        new_bytes,
    }
}

/// Reads `upload.disk` of the file at `path`, checking each folded range against its
/// CRC: the bytes (when `keep` and small; with room for `extra` more, the pending bytes
/// that follow them in the body) and their CRC-32. An error says why the file cannot
/// stand for the folded objects (gone, shorter, other content).
async fn read_checked(
    path: PathBuf,
    upload: Upload,
    keep: bool,
    extra: usize,
) -> Result<(Option<Vec<u8>>, u32), String> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Sized once: grown by doubling, a 600 KiB fold held 1 MiB, then 2 with the
        // pending bytes.
        let size = (upload.disk.end - upload.disk.start) as usize + extra;
        let mut kept = keep.then(|| Vec::with_capacity(size));
        let mut whole = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = upload.disk.start;
        let mut checks = upload.checks.iter().peekable();
        let mut part = crc32fast::Hasher::new();
        while at < upload.disk.end {
            let want = ((upload.disk.end - at) as usize).min(buf.len());
            // Stop at the end of the range being checked, to hash it alone.
            let want = match checks.peek() {
                Some((r, _)) if r.start <= at && r.end > at => want.min((r.end - at) as usize),
                Some((r, _)) if r.start > at => want.min((r.start - at) as usize),
                _ => want,
            };
            let n = file
                .read_at(&mut buf[..want], at)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                return Err(format!(
                    "{} is shorter than what was stored",
                    path.display()
                ));
            }
            let bytes = &buf[..n];
            whole.update(bytes);
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(bytes);
            }
            if checks.peek().is_some_and(|(r, _)| r.start <= at) {
                part.update(bytes);
            }
            at += n as u64;
            if let Some((r, crc)) = checks.peek()
                && r.end == at
            {
                if part.clone().finalize() != *crc {
                    return Err(format!(
                        "{} no longer holds the bytes stored from offset {}",
                        path.display(),
                        r.start
                    ));
                }
                part = crc32fast::Hasher::new();
                checks.next();
            }
        }
        Ok((kept, whole.finalize()))
    })
    .await
    .map_err(|e| e.to_string())?
}
