//! Following files: discovery by glob, identity, reading, rotation, draining.
//!
//! Files are found by walking the directories under each glob's literal prefix
//! — at start, on every structural change event from inotify (something created,
//! removed or renamed), and every `--poll-interval` in any case, so a filesystem that
//! never sends events (EFS, NFS) only makes discovery slower, never stops it. Followed
//! files are looked at every `--read-interval` (one `fstat` each) and read when they
//! grew, and whenever an output asks (see `read_request.rs`); writes are not watched
//! (see `watch.rs` for why).
//!
//! A file is identified by device and inode plus a fingerprint of its first
//! line (at most 256 bytes), so a reused inode is not taken for the old file.
//! Rename rotation keeps the open descriptor and reads the old file to its end
//! before letting it go. Copytruncate is seen as a file shorter than what was
//! read (or whose first line changed): the file is read again from the start
//! under a new identity, and a copy with the old fingerprint (for example
//! `attempt=1.log.1`, when `--path` matches it) continues where the old file
//! stopped, so neither loses nor repeats lines.
//!
//! Rooms: `discover.rs` (globs, walks, unreadable paths), `watch.rs` (the inotify
//! events that trigger walks), `identity.rs` (fingerprints and stream ids), `read.rs`
//! (reading and cutting lines); this module runs the loop and hands chunks to the
//! outputs.

mod discover;
mod identity;
mod read;
mod watch;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use airside_core::ecs::TaskMetadata;
use airside_core::shutdown::Shutdown;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tokio::sync::mpsc;

use crate::checkpoint::{Entry, Ledger};
use crate::record::{self, Assembler, FileMeta, Logical};

pub use discover::{Unreadable, glob_base};
use read::{encode_chunk, push_line, take_partial_line};

use crate::chunk::Chunk;
use crate::read_request::ReadRequests;

/// Bytes read from one file per pass.
pub(super) const READ_BYTES: usize = 256 * 1024;

/// The longest fingerprint.
pub(super) const FINGERPRINT_BYTES: usize = 256;

/// A line without a newline is cut here so memory stays bounded.
pub(super) const MAX_LINE_BYTES: usize = 1024 * 1024;

/// An idle file's descriptor is closed after this long (reopened when it grows).
pub(super) const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// A truncated file's identity waits this long for a copy to continue it.
pub(super) const RETIRED_TTL: Duration = Duration::from_secs(300);

/// How long no file must have grown before idle memory is handed back (longer than the
/// default `--linger`, so the last batch has been sent by then).
pub(crate) const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(5);

/// With every base watched, the walk that events did not ask for comes this often.
const WATCHED_WALK: Duration = Duration::from_secs(30);

/// What the tailer needs to know.
#[derive(Debug, Clone)]
pub struct TailSettings {
    /// Globs of files to follow.
    pub globs: Vec<String>,
    /// Discovery cadence without events (and the rotation wait).
    pub poll_interval: Duration,
    /// How often followed files are looked at for new bytes.
    pub read_interval: Duration,
    /// Base directories at or below these are never watched.
    pub no_watch: Vec<PathBuf>,
    /// How long a traceback waits for its next line; also how long a file must be quiet
    /// before a last line without a newline is taken as complete.
    pub multiline_timeout: Duration,
    /// Files and folders that cannot be read, shared with `/readyz`.
    pub unreadable: Unreadable,
    /// Whether chunks carry the file's bytes unchanged ([`Chunk::raw`]).
    pub keep_raw: bool,
    /// Whether chunks carry JSON records ([`Chunk::data`]); without an output that
    /// takes them, only their count ([`Chunk::ends`] of empty records).
    pub records: bool,
    /// Passes asked for by outputs (the airflow-s3 output, before each upload round).
    pub requests: Option<Arc<ReadRequests>>,
}

/// The tailer stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// A glob does not compile.
    #[error("invalid --path glob {glob:?}: {source}")]
    Glob {
        /// The glob.
        glob: String,
        /// Why.
        #[source]
        source: globset::Error,
    },
    /// An output stopped (its own error says why).
    #[error("an output stopped")]
    OutputStopped,
}

struct Stream {
    id: u64,
    dev: u64,
    ino: u64,
    fp: u64,
    fp_len: u32,
    generation: u32,
    path: PathBuf,
    meta: Arc<FileMeta>,
    file: Option<File>,
    /// Next byte to read.
    read_off: u64,
    /// Start of the line being read (bytes from here to `read_off` are in `partial`).
    line_start: u64,
    partial: Vec<u8>,
    asm: Assembler,
    /// [`TailSettings::records`]: without it, lines are only counted and delimited.
    records: bool,
    last_data: Instant,
    gone_since: Option<Instant>,
    /// With `TailSettings::keep_raw`: the bytes read from `raw_base` on that no chunk
    /// has carried yet (the held line, the traceback being joined).
    raw: Vec<u8>,
    /// The file offset of `raw[0]`.
    raw_base: u64,
}

struct Retired {
    fp: u64,
    fp_len: u32,
    dev: u64,
    ino: u64,
    generation: u32,
    resume: u64,
    since: Instant,
    meta: Arc<FileMeta>,
}

/// Follows the files matching the globs and sends encoded chunks to the outputs.
pub struct Tailer {
    settings: TailSettings,
    set: GlobSet,
    bases: Vec<PathBuf>,
    streams: HashMap<u64, Stream>,
    by_inode: HashMap<(u64, u64), u64>,
    retired: HashMap<u64, Retired>,
    restored: HashMap<(u64, u64), Entry>,
    deferred: HashMap<(u64, u64), Instant>,
    generations: HashMap<(u64, u64), u32>,
    ledger: Arc<Ledger>,
    outputs: Vec<mpsc::Sender<Arc<Chunk>>>,
    ecs: Option<TaskMetadata>,
    buf: Vec<u8>,
    logicals: Vec<Logical>,
    /// The inotify instance, once a base could be watched.
    watch: Option<watch::Watch>,
    /// Whether each base is watched.
    watched: Vec<bool>,
    /// inotify could not be started (no instances left): poll only, say so once.
    watch_unavailable: bool,
    walk_requested: bool,
    /// Matching files the last walk found before their first line was complete, so not
    /// followed yet. Every read interval looks at these again; without that, such a file
    /// waited for the next poll. Only these paths are looked at, not the whole tree: an
    /// empty file may sit there for a long time while other files are written to.
    awaiting_first_line: Vec<PathBuf>,
    /// Files without a newline yet, by inode: their size, and since when it has not
    /// changed. Quiet for `--multiline-timeout`, their content is a complete line.
    unterminated_since: HashMap<(u64, u64), (u64, Instant)>,
    /// At shutdown: a file with only an unterminated line is followed at once.
    take_unterminated_now: bool,
    /// When the unterminated files were last looked at for being quiet long enough.
    unterminated_checked: Instant,
    /// Unreadable paths found by the walk in progress.
    unreadable_now: std::collections::BTreeMap<String, String>,
}

/// The next pass an output asks for; never, without an output that asks.
async fn next_request(requests: &Option<Arc<ReadRequests>>) {
    match requests {
        Some(r) => r.asked().await,
        None => std::future::pending().await,
    }
}

/// The next batch of change events; never, without an inotify instance.
async fn next_event(watch: &mut Option<watch::Watch>) -> Option<watch::Seen> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Tailer {
    /// Builds a tailer; `restored` are the entries read from the checkpoint file.
    pub fn new(
        settings: TailSettings,
        ledger: Arc<Ledger>,
        restored: Vec<Entry>,
        outputs: Vec<mpsc::Sender<Arc<Chunk>>>,
        ecs: Option<TaskMetadata>,
    ) -> Result<Self, TailError> {
        let mut b = GlobSetBuilder::new();
        for g in &settings.globs {
            let glob = GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|source| TailError::Glob {
                    glob: g.clone(),
                    source,
                })?;
            b.add(glob);
        }
        let set = b.build().map_err(|source| TailError::Glob {
            glob: settings.globs.join(","),
            source,
        })?;
        let mut bases: Vec<PathBuf> = settings.globs.iter().map(|g| glob_base(g)).collect();
        bases.sort();
        bases.dedup();
        // A base inside another base is walked by the outer one already.
        let outer: Vec<PathBuf> = bases
            .iter()
            .filter(|b| !bases.iter().any(|o| o != *b && b.starts_with(o)))
            .cloned()
            .collect();
        let mut tailer = Self {
            watch: None,
            watched: outer.iter().map(|_| false).collect(),
            watch_unavailable: false,
            bases: outer,
            settings,
            set,
            streams: HashMap::new(),
            by_inode: HashMap::new(),
            retired: HashMap::new(),
            restored: HashMap::new(),
            deferred: HashMap::new(),
            generations: HashMap::new(),
            ledger,
            outputs,
            ecs,
            buf: vec![0; READ_BYTES],
            logicals: Vec::new(),
            walk_requested: false,
            awaiting_first_line: Vec::new(),
            unterminated_since: HashMap::new(),
            take_unterminated_now: false,
            unterminated_checked: Instant::now(),
            unreadable_now: Default::default(),
        };
        for e in restored {
            if e.retired {
                tailer.retire_entry(e);
            } else {
                tailer.restored.insert((e.dev, e.ino), e);
            }
        }
        Ok(tailer)
    }

    fn retire_entry(&mut self, e: Entry) {
        let meta = Arc::new(FileMeta::new(&e.path, e.id, self.ecs.as_ref()));
        self.retired.insert(
            e.id,
            Retired {
                fp: e.fp,
                fp_len: e.fp_len,
                dev: e.dev,
                ino: e.ino,
                generation: e.generation,
                resume: e.offset,
                since: Instant::now(),
                meta,
            },
        );
    }

    /// Follows files until `shutdown`, then reads every file to where it ended when
    /// the signal came, sends the rest and returns (dropping the output channels).
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), TailError> {
        self.ensure_watchers();
        self.walk("start");
        // Checkpointed files that were not found again: their inode was truncated or the
        // file went away; keep their identity for a while in case a copy shows up.
        let unmatched: Vec<Entry> = self.restored.drain().map(|(_, e)| e).collect();
        for e in unmatched {
            self.ledger.retire(e.id);
            self.retire_entry(e);
        }
        let poll = self.settings.poll_interval;
        let every = self.settings.read_interval;
        // When the last walk was: the next is due `walk_every()` later, which depends on
        // what the tailer holds at the time (a file deferred between walks shortens it).
        let mut last_walk = tokio::time::Instant::now();
        let mut next_housekeeping = tokio::time::Instant::now() + poll;
        let mut next_read = tokio::time::Instant::now();
        let mut last_moved = Instant::now();
        let mut released = false;
        // Files with more than one read's worth waiting: read again at once, not at the
        // next read interval.
        let mut more: Vec<u64> = Vec::new();
        // The request ticket the pass under way answers once no file has more waiting.
        let mut answering: Option<u64> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let mut read_all = false;
            // Walk first, so that a file the walk finds is read in this same pass
            // rather than at the next read interval.
            if self.walk_requested || tokio::time::Instant::now() >= last_walk + self.walk_every() {
                let why = if self.walk_requested { "event" } else { "poll" };
                self.walk_requested = false;
                self.ensure_watchers();
                self.walk(why);
                self.housekeeping().await?;
                last_walk = tokio::time::Instant::now();
                next_housekeeping = tokio::time::Instant::now() + poll;
                read_all = true;
            } else if tokio::time::Instant::now() >= next_housekeeping {
                self.housekeeping().await?;
                next_housekeeping = tokio::time::Instant::now() + poll;
            }
            if tokio::time::Instant::now() >= next_read {
                for path in std::mem::take(&mut self.awaiting_first_line) {
                    if let Ok(md) = std::fs::metadata(&path)
                        && md.is_file()
                    {
                        self.found(path, &md, "poll");
                    }
                }
                next_read = tokio::time::Instant::now() + every;
                read_all = true;
            }
            let read = if read_all {
                more.clear();
                if let Some(r) = &self.settings.requests {
                    answering = Some(r.starting());
                }
                self.pass(None).await?
            } else {
                self.pass(Some(std::mem::take(&mut more))).await?
            };
            if read.any {
                last_moved = Instant::now();
                released = false;
            } else if !released && last_moved.elapsed() >= RELEASE_AFTER_IDLE {
                // A burst is over (its batches have long been sent): give back the heap
                // and code pages it used, so an idle sidecar stays small.
                airside_core::memory::release();
                released = true;
            }
            if !read.more.is_empty() {
                more = read.more;
                tokio::task::yield_now().await;
                continue;
            }
            if let (Some(r), Some(ticket)) = (&self.settings.requests, answering.take()) {
                r.answer(ticket);
            }
            // A traceback waiting for its next line is sent when --multiline-timeout
            // is up, not at the next read interval.
            let multiline = self.next_multiline_deadline();
            // A file holding only a line without a newline is looked at again when it
            // has been quiet for --multiline-timeout, not at the next poll.
            let checked = self.unterminated_checked;
            let unterminated = self
                .unterminated_since
                .values()
                .filter(|(len, _)| *len > 0)
                .map(|(_, since)| *since + self.settings.multiline_timeout)
                .filter(|due| *due > checked)
                .min()
                .map(tokio::time::Instant::from_std);
            let next_walk = last_walk + self.walk_every();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = crate::sleep_until_some(multiline), if multiline.is_some() => {
                    next_read = tokio::time::Instant::now();
                }
                _ = crate::sleep_until_some(unterminated), if unterminated.is_some() => {
                    // Each due time wakes the tailer once (a file that still cannot be
                    // followed then waits for the next walk).
                    self.unterminated_checked = Instant::now();
                    next_read = tokio::time::Instant::now();
                }
                seen = next_event(&mut self.watch) => match seen {
                    Some(seen) => {
                        self.walk_requested |= seen.walk;
                        if seen.base_gone {
                            self.unwatch_gone_bases();
                        }
                    }
                    None => {
                        tracing::warn!("change events stopped; polling only");
                        self.watch = None;
                        self.watch_unavailable = true;
                    }
                },
                _ = tokio::time::sleep_until(next_walk) => {}
                _ = tokio::time::sleep_until(next_housekeeping) => {}
                _ = tokio::time::sleep_until(next_read) => {}
                _ = next_request(&self.settings.requests) => {
                    next_read = tokio::time::Instant::now();
                }
            }
        }
        self.drain().await
    }

    /// How long until the next walk without an event: the poll interval while some base
    /// is not watched (EFS, NFS, `--no-watch`, inotify unavailable); with every base
    /// watched, events say when to walk, and this walk is only the safety net (it was
    /// a sixth of the CPU under 200 busy task logs at one walk a second).
    /// Files held back as a possible copy of a truncated file (`deferred`) are looked at
    /// again by walks, so those keep the poll interval too.
    fn walk_every(&self) -> Duration {
        if !self.watch_unavailable && self.watched.iter().all(|w| *w) && self.deferred.is_empty() {
            self.settings.poll_interval.max(WATCHED_WALK)
        } else {
            self.settings.poll_interval
        }
    }

    /// Marks the bases whose folder is no longer watched, so the next walk watches them
    /// again if they are back.
    fn unwatch_gone_bases(&mut self) {
        for (i, base) in self.bases.iter().enumerate() {
            self.watched[i] &= self.watch.as_ref().is_some_and(|w| w.watches_dir(base));
        }
    }

    /// When the earliest pending multiline record (a traceback that may go on) is due.
    fn next_multiline_deadline(&self) -> Option<tokio::time::Instant> {
        self.streams
            .values()
            .filter(|st| st.asm.has_pending() || !st.partial.is_empty())
            .map(|st| st.last_data + self.settings.multiline_timeout)
            .min()
            .map(tokio::time::Instant::from_std)
    }

    /// Reads every followed file up to its size at this moment, sends what is left
    /// (including tracebacks still waiting for lines) and stops.
    async fn drain(&mut self) -> Result<(), TailError> {
        // No new files from here on: only those already followed are finished, and
        // those holding only a line without a newline, which is complete now.
        self.watch = None;
        self.take_unterminated_now = true;
        for path in std::mem::take(&mut self.awaiting_first_line) {
            if let Ok(md) = std::fs::metadata(&path)
                && md.is_file()
            {
                self.found(path, &md, "shutdown");
            }
        }
        let mut targets = HashMap::new();
        for st in self.streams.values_mut() {
            if st.file.is_none()
                && let Ok(f) = read::open_log(&st.path)
                && let Ok(md) = f.metadata()
                && (md.dev(), md.ino()) == (st.dev, st.ino)
            {
                st.file = Some(f);
            }
            if let Some(f) = &st.file
                && let Ok(md) = f.metadata()
            {
                targets.insert(st.id, md.len());
            }
        }
        tracing::info!(
            files = targets.len(),
            "reading every file to its end before exit"
        );
        loop {
            let moved = self.pass(None).await?.any;
            let done = self.streams.values().all(|st| {
                targets
                    .get(&st.id)
                    .is_none_or(|&t| st.read_off >= t || st.file.is_none())
            });
            if done || !moved {
                break;
            }
        }
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        let now = now_rfc3339();
        for id in ids {
            let st = self.streams.get_mut(&id).expect("id from keys");
            let mut logicals = std::mem::take(&mut self.logicals);
            // The last line of a file that ends without a newline is complete now.
            take_partial_line(st, &mut logicals);
            st.asm.flush(&mut logicals);
            let chunk = encode_chunk(st, &mut logicals, &now, self.settings.records);
            self.logicals = logicals;
            if let Some(c) = chunk {
                self.send(c).await?;
            }
        }
        self.outputs.clear();
        Ok(())
    }

    /// Lets go of files that were rotated away or deleted and read to their end,
    /// closes idle descriptors (and opens them again when their file grew) and forgets
    /// truncated files nobody continued.
    async fn housekeeping(&mut self) -> Result<(), TailError> {
        let rotate_wait = (self.settings.poll_interval * 2).max(Duration::from_secs(1));
        let mut done = Vec::new();
        for st in self.streams.values_mut() {
            if st.file.is_none()
                && st.gone_since.is_none()
                && let Ok(md) = std::fs::metadata(&st.path)
                && (md.dev(), md.ino()) == (st.dev, st.ino)
                && md.len() != st.read_off
                && let Ok(f) = read::open_log(&st.path)
            {
                // An idle task log written to again (a task that slept for minutes).
                st.file = Some(f);
            }
            let at_end = match &st.file {
                Some(f) => f.metadata().map(|m| m.len() <= st.read_off).unwrap_or(true),
                None => true,
            };
            match st.gone_since {
                Some(since)
                    if at_end
                        && since.elapsed() >= rotate_wait
                        && st.last_data.elapsed() >= rotate_wait =>
                {
                    done.push(st.id)
                }
                None if at_end
                    && st.file.is_some()
                    && st.last_data.elapsed() >= IDLE_CLOSE
                    && !st.asm.has_pending() =>
                {
                    st.file = None;
                }
                _ => {}
            }
        }
        for id in done {
            let mut st = self.streams.remove(&id).expect("id from streams");
            self.by_inode.remove(&(st.dev, st.ino));
            let mut logicals = std::mem::take(&mut self.logicals);
            if !st.partial.is_empty() {
                // The file is finished: its last line will never get a newline.
                let line = std::mem::take(&mut st.partial);
                push_line(&mut st, &line, false, &mut logicals);
            }
            st.asm.flush(&mut logicals);
            let chunk = encode_chunk(
                &mut st,
                &mut logicals,
                &now_rfc3339(),
                self.settings.records,
            );
            self.logicals = logicals;
            if let Some(c) = chunk {
                self.send(c).await?;
            }
            crate::telemetry::file_rotated(&st.path);
            self.ledger.finish(id, st.line_start);
        }
        let expired: Vec<u64> = self
            .retired
            .iter()
            .filter(|(_, r)| r.since.elapsed() >= RETIRED_TTL)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.retired.remove(&id);
            self.ledger.remove(id);
        }
        let behind: u64 = self
            .streams
            .values()
            .filter_map(|st| {
                let size = st.file.as_ref()?.metadata().ok()?.len();
                Some(size.saturating_sub(self.ledger.committed(st.id).unwrap_or(0)))
            })
            .sum();
        crate::telemetry::files_state(self.streams.len(), behind);
        Ok(())
    }

    async fn send(&self, chunk: Chunk) -> Result<(), TailError> {
        crate::telemetry::records_read(chunk.ends.len());
        let chunk = Arc::new(chunk);
        for tx in &self.outputs {
            tx.send(chunk.clone())
                .await
                .map_err(|_| TailError::OutputStopped)?;
        }
        Ok(())
    }
}
