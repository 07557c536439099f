//! Following files: discovery by glob, identity, reading, rotation, draining.
//!
//! Files are found by walking the directories under each glob's literal prefix
//! — at start, on every change event from `notify`, and every `--poll-interval`
//! in any case, so a filesystem that never sends events (EFS, NFS) only makes
//! discovery slower, never stops it. Open files are read on every event and
//! every poll interval.
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
//! Rooms: `discover.rs` (globs, watches, walks, unreadable paths), `identity.rs`
//! (fingerprints and stream ids), `read.rs` (reading and cutting lines); this module
//! runs the loop and hands chunks to the outputs.

mod discover;
mod identity;
mod read;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use airside_core::ecs::TaskMetadata;
use airside_core::shutdown::Shutdown;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::checkpoint::{Entry, Ledger};
use crate::record::{self, Assembler, FileMeta, Logical};

pub use discover::{Unreadable, glob_base};
use read::{encode_chunk, push_line, take_partial_line};

use crate::chunk::Chunk;

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
pub(super) const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(5);

/// What the tailer needs to know.
#[derive(Debug, Clone)]
pub struct TailSettings {
    /// Globs of files to follow.
    pub globs: Vec<String>,
    /// Discovery and read cadence without events.
    pub poll_interval: Duration,
    /// Base directories at or below these are never watched.
    pub no_watch: Vec<PathBuf>,
    /// How long a traceback waits for its next line; also how long a file must be quiet
    /// before a last line without a newline is taken as complete.
    pub multiline_timeout: Duration,
    /// Files and folders that cannot be read, shared with `/readyz`.
    pub unreadable: Unreadable,
    /// Whether chunks carry the file's bytes unchanged ([`Chunk::raw`]).
    pub keep_raw: bool,
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
    last_data: Instant,
    gone_since: Option<Instant>,
    /// With `TailSettings::keep_raw`: the bytes read from `raw_base` on that no chunk
    /// has carried yet (the held line, the traceback being joined).
    raw: Vec<u8>,
    /// The file offset of `raw[0]`.
    raw_base: u64,
}

/// What change events reported between two looks of the tailer.
#[derive(Debug, Default)]
struct ChangedPaths {
    paths: std::collections::HashSet<PathBuf>,
    /// More paths than are worth keeping: read every file.
    overflow: bool,
}

/// How long a data event waits for others before the files are read: the longest
/// this adds to a line's way out.
const EVENT_BATCH: Duration = Duration::from_millis(100);

/// The most changed paths kept between two looks; beyond it every file is read.
const MAX_CHANGED_PATHS: usize = 4096;

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
    watchers: Vec<Option<RecommendedWatcher>>,
    events_tx: mpsc::Sender<bool>,
    events_rx: Option<mpsc::Receiver<bool>>,
    /// Paths that change events named since the tailer last looked, so that a write
    /// reads the file written to rather than every followed file.
    changed: Arc<std::sync::Mutex<ChangedPaths>>,
    /// Followed files by their path, to find a changed path's stream.
    by_path: HashMap<PathBuf, u64>,
    walk_requested: bool,
    /// Matching files the last walk found before their first line was complete, so not
    /// followed yet. A data event (which otherwise only reads followed files) looks at
    /// these again; without that, such a file waited for the next poll. Only these paths
    /// are looked at, not the whole tree: an empty file may sit there for a long time
    /// while other files are written to.
    awaiting_first_line: Vec<PathBuf>,
    /// A data event arrived while some file was awaiting its first line.
    recheck_awaiting: bool,
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
            watchers: outer.iter().map(|_| None).collect(),
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
            events_tx: mpsc::channel(1).0,
            events_rx: None,
            changed: Default::default(),
            by_path: HashMap::new(),
            walk_requested: false,
            awaiting_first_line: Vec::new(),
            recheck_awaiting: false,
            unterminated_since: HashMap::new(),
            take_unterminated_now: false,
            unterminated_checked: Instant::now(),
            unreadable_now: Default::default(),
        };
        let (tx, rx) = mpsc::channel(256);
        tailer.events_tx = tx;
        tailer.events_rx = Some(rx);
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
        let mut events = self.events_rx.take().expect("run is called once");
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
        let mut next_walk = tokio::time::Instant::now() + poll;
        let mut last_moved = Instant::now();
        let mut released = false;
        // Which files the next pass reads: every one (at start, after a walk, when a
        // timer is due, when events overflowed), or those that changed or still had
        // more to read. With hundreds of files written to at once, reading only the
        // written one per event is what keeps the cost per line flat.
        let mut read_all = true;
        let mut to_read: HashSet<u64> = HashSet::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Walk first, so that a file the walk finds is read in this same pass
            // rather than at the next event or poll.
            if self.walk_requested || tokio::time::Instant::now() >= next_walk {
                let why = if self.walk_requested { "event" } else { "poll" };
                self.walk_requested = false;
                self.ensure_watchers();
                self.walk(why);
                self.housekeeping().await?;
                next_walk = tokio::time::Instant::now() + poll;
                read_all = true;
            } else if std::mem::take(&mut self.recheck_awaiting) {
                for path in std::mem::take(&mut self.awaiting_first_line) {
                    if let Ok(md) = std::fs::metadata(&path)
                        && md.is_file()
                    {
                        self.found(path, &md, "event");
                    }
                }
            }
            read_all |= self.take_changed(&mut to_read);
            let moved = if std::mem::take(&mut read_all) {
                to_read.clear();
                self.pass(None).await?
            } else {
                let ids = std::mem::take(&mut to_read);
                self.pass(Some(ids)).await?
            };
            if !moved.is_empty() {
                last_moved = Instant::now();
                released = false;
            } else if !released && last_moved.elapsed() >= RELEASE_AFTER_IDLE {
                // A burst is over (its batches have long been sent): give back the heap
                // and code pages it used, so an idle sidecar stays small.
                airside_core::memory::release();
                released = true;
            }
            if !moved.is_empty() {
                // Those files may have more than one read's worth: read them again.
                to_read.extend(moved);
                tokio::task::yield_now().await;
                continue;
            }
            // A traceback waiting for its next line is sent when --multiline-timeout
            // is up, not at the next event or poll, which may be much later.
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
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = crate::sleep_until_some(multiline), if multiline.is_some() => {
                    read_all = true;
                }
                _ = crate::sleep_until_some(unterminated), if unterminated.is_some() => {
                    // Each due time wakes the tailer once (a file that still cannot be
                    // followed then waits for the next walk).
                    self.unterminated_checked = Instant::now();
                    self.recheck_awaiting = !self.awaiting_first_line.is_empty();
                    read_all = true;
                }
                ev = events.recv() => {
                    // Let the writes of a moment gather: a busy worker writes to
                    // hundreds of files many times a second, and one pass over the
                    // files written to in the last EVENT_BATCH costs a fraction of one
                    // wake-up and read per write.
                    if ev == Some(false) {
                        tokio::time::sleep(EVENT_BATCH).await;
                    }
                    if ev == Some(true) {
                        self.walk_requested = true;
                    }
                    self.recheck_awaiting |= ev.is_some() && !self.awaiting_first_line.is_empty();
                    while let Ok(structural) = events.try_recv() {
                        self.walk_requested |= structural;
                    }
                }
                _ = tokio::time::sleep_until(next_walk) => {}
            }
        }
        self.drain().await
    }

    /// Forgets that `path` is the followed file `id` (unless another file took the path).
    fn forget_path(&mut self, path: &std::path::Path, id: u64) {
        if self.by_path.get(path) == Some(&id) {
            self.by_path.remove(path);
        }
    }

    /// Moves the followed files that change events named into `ids`; true when every
    /// file should be read (the events overflowed).
    fn take_changed(&mut self, ids: &mut HashSet<u64>) -> bool {
        let mut changed = self.changed.lock().expect("changed paths lock");
        let all = std::mem::take(&mut changed.overflow);
        for path in changed.paths.drain() {
            if let Some(id) = self.by_path.get(&path) {
                ids.insert(*id);
            }
        }
        all
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
        self.watchers.clear();
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
                && let Ok(f) = File::open(&st.path)
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
            let moved = !self.pass(None).await?.is_empty();
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
            let chunk = encode_chunk(st, &mut logicals, &now);
            self.logicals = logicals;
            if let Some(c) = chunk {
                self.send(c).await?;
            }
        }
        self.outputs.clear();
        Ok(())
    }

    /// Lets go of files that were rotated away or deleted and read to their end,
    /// closes idle descriptors and forgets truncated files nobody continued.
    async fn housekeeping(&mut self) -> Result<(), TailError> {
        let rotate_wait = (self.settings.poll_interval * 2).max(Duration::from_secs(1));
        let mut done = Vec::new();
        for st in self.streams.values_mut() {
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
            self.forget_path(&st.path, id);
            let mut logicals = std::mem::take(&mut self.logicals);
            if !st.partial.is_empty() {
                // The file is finished: its last line will never get a newline.
                let line = std::mem::take(&mut st.partial);
                push_line(&mut st, &line, false, &mut logicals);
            }
            st.asm.flush(&mut logicals);
            let chunk = encode_chunk(&mut st, &mut logicals, &now_rfc3339());
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
