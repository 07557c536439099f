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

use crate::record::{self, Assembler, FileMeta, Logical};
use crate::state::{Entry, Ledger};

/// Bytes read from one file per pass.
const READ_BYTES: usize = 256 * 1024;
/// The longest fingerprint.
const FINGERPRINT_BYTES: usize = 256;
/// A line without a newline is cut here so memory stays bounded.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// An idle file's descriptor is closed after this long (reopened when it grows).
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// A truncated file's identity waits this long for a copy to continue it.
const RETIRED_TTL: Duration = Duration::from_secs(300);
/// How long no file must have grown before idle memory is handed back (longer than the
/// default `--linger`, so the last batch has been sent by then).
const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(5);

/// A run of encoded records from one file, handed to every output.
#[derive(Debug)]
pub struct Chunk {
    /// Newline-terminated JSON records.
    pub data: Vec<u8>,
    /// End position in `data` of each record.
    pub ends: Vec<u32>,
    /// The file's id.
    pub file: u64,
    /// Delivering this chunk makes everything before this file offset delivered.
    pub end: u64,
    /// The file's metadata (path, Airflow fields).
    pub meta: Arc<FileMeta>,
}

impl Chunk {
    /// The records, each with its trailing newline.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let r = &self.data[start..end as usize];
            start = end as usize;
            r
        })
    }
}

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
}

/// Files and folders under the globs that logship cannot read, with why: shown on
/// `/readyz`'s body, counted, and logged once each.
#[derive(Debug, Clone, Default)]
pub struct Unreadable(Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>);

impl Unreadable {
    /// `/readyz` lines, one per unreadable path (empty when all can be read).
    pub fn describe(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (path, why) in map.iter().take(20) {
            out.push_str(&format!("unreadable: {path} ({why})\n"));
        }
        if map.len() > 20 {
            out.push_str(&format!("unreadable: {} more\n", map.len() - 20));
        }
        out
    }

    /// The paths now unreadable.
    pub fn paths(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Replaces the set with what the last walk found; logs each change once.
    fn update(&self, now: std::collections::BTreeMap<String, String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (path, why) in &now {
            if !map.contains_key(path) {
                metrics::counter!(crate::telemetry::FILES_UNREADABLE_TOTAL).increment(1);
                tracing::warn!(
                    path = %path,
                    error = %why,
                    uid = nix_uid(),
                    "cannot read a log file or folder: nothing in it is shipped until it can be read (logship's user needs read permission on files and read+execute on folders; Airflow's default umask and uid 50000 leave them unreadable to other users)"
                );
            }
        }
        for path in map.keys() {
            if !now.contains_key(path) {
                tracing::info!(path = %path, "readable again (or gone)");
            }
        }
        *map = now;
        metrics::gauge!(crate::telemetry::FILES_UNREADABLE).set(map.len() as f64);
    }
}

/// This process's uid, for the unreadable-file warning.
fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
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

enum Read {
    Nothing,
    Data(Option<Chunk>, usize),
    Truncated,
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

/// The directory to walk for a glob: its components up to the first one with a
/// glob character (`/opt/airflow/logs/**/*.log` → `/opt/airflow/logs`).
pub fn glob_base(glob: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let comps: Vec<&str> = glob.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.contains(['*', '?', '[', '{']) || i == comps.len() - 1 {
            break;
        }
        if c.is_empty() && i == 0 {
            base.push("/");
        } else if !c.is_empty() {
            base.push(c);
        }
    }
    if base.as_os_str().is_empty() {
        base.push(".");
    }
    base
}

/// The fingerprint of a file that has no complete first line: all of its first bytes.
fn whole_fingerprint(file: &File, len: u64) -> Option<(u64, u32)> {
    let mut head = [0u8; FINGERPRINT_BYTES];
    let want = (len as usize).min(FINGERPRINT_BYTES);
    let n = file.read_at(&mut head[..want], 0).ok()?;
    (n > 0).then(|| (record::fnv1a(0, &head[..n]), n as u32))
}

fn fingerprint(file: &File, len: u64) -> Option<(u64, u32)> {
    let mut head = [0u8; FINGERPRINT_BYTES];
    let want = (len as usize).min(FINGERPRINT_BYTES);
    let n = file.read_at(&mut head[..want], 0).ok()?;
    let head = &head[..n];
    let cover = match head.iter().position(|&b| b == b'\n') {
        Some(nl) => nl + 1,
        None if n == FINGERPRINT_BYTES => n,
        // Neither a whole first line nor 256 bytes yet: wait until the file grows.
        None => return None,
    };
    Some((record::fnv1a(0, &head[..cover]), cover as u32))
}

/// Whether the file still starts with the fingerprinted bytes.
fn same_start(file: &File, fp: u64, fp_len: u32) -> bool {
    let mut head = [0u8; FINGERPRINT_BYTES];
    let want = (fp_len as usize).min(FINGERPRINT_BYTES);
    matches!(file.read_at(&mut head[..want], 0), Ok(n) if n == want && record::fnv1a(0, &head[..n]) == fp)
}

fn stream_id(dev: u64, ino: u64, fp: u64, generation: u32) -> u64 {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&dev.to_le_bytes());
    bytes.extend_from_slice(&ino.to_le_bytes());
    bytes.extend_from_slice(&fp.to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    record::fnv1a(0x006c_6f67_7368_6970, &bytes)
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
            } else if std::mem::take(&mut self.recheck_awaiting) {
                for path in std::mem::take(&mut self.awaiting_first_line) {
                    if let Ok(md) = std::fs::metadata(&path)
                        && md.is_file()
                    {
                        self.found(path, &md, "event");
                    }
                }
            }
            let moved = self.pass().await?;
            if moved {
                last_moved = Instant::now();
                released = false;
            } else if !released && last_moved.elapsed() >= RELEASE_AFTER_IDLE {
                // A burst is over (its batches have long been sent): give back the heap
                // and code pages it used, so an idle sidecar stays small.
                airside_core::memory::release();
                released = true;
            }
            if moved {
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
                _ = crate::sleep_until_some(multiline), if multiline.is_some() => {}
                _ = crate::sleep_until_some(unterminated), if unterminated.is_some() => {
                    // Each due time wakes the tailer once (a file that still cannot be
                    // followed then waits for the next walk).
                    self.unterminated_checked = Instant::now();
                    self.recheck_awaiting = !self.awaiting_first_line.is_empty();
                }
                ev = events.recv() => {
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
            let moved = self.pass().await?;
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

    fn ensure_watchers(&mut self) {
        for (i, base) in self.bases.iter().enumerate() {
            if self.watchers[i].is_some()
                || self.settings.no_watch.iter().any(|d| base.starts_with(d))
                || !base.is_dir()
            {
                continue;
            }
            let tx = self.events_tx.clone();
            let handler = move |res: notify::Result<notify::Event>| {
                let Ok(ev) = res else { return };
                let structural = match ev.kind {
                    EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_)) => true,
                    EventKind::Modify(_) | EventKind::Any | EventKind::Other => false,
                    // Our own reads show up as access events: ignore them.
                    EventKind::Access(_) => return,
                };
                metrics::counter!(crate::telemetry::WATCH_EVENTS_TOTAL).increment(1);
                // A full queue only means a wake-up is already pending.
                let _ = tx.try_send(structural);
            };
            match notify::recommended_watcher(handler) {
                Ok(mut w) => match w.watch(base, RecursiveMode::Recursive) {
                    Ok(()) => {
                        tracing::info!(dir = %base.display(), "watching for change events");
                        self.watchers[i] = Some(w);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %base.display(), error = %e, "cannot watch; polling only")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "no change events available; polling only"),
            }
        }
    }

    fn walk(&mut self, why: &'static str) {
        self.awaiting_first_line.clear();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        for base in &self.bases {
            let mut stack = vec![base.clone()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) => {
                        // A base that does not exist (yet) is normal; anything else
                        // hides whatever logs are below it.
                        if e.kind() != std::io::ErrorKind::NotFound {
                            self.unreadable_now
                                .insert(dir.display().to_string(), e.to_string());
                        }
                        continue;
                    }
                };
                for ent in rd.flatten() {
                    let Ok(ft) = ent.file_type() else { continue };
                    let path = ent.path();
                    if ft.is_dir() {
                        stack.push(path);
                    } else if (ft.is_file() || ft.is_symlink())
                        && self.set.is_match(&path)
                        && let Ok(md) = std::fs::metadata(&path)
                        && md.is_file()
                    {
                        found.push((path, md));
                    }
                }
            }
        }
        for (path, md) in found {
            let key = (md.dev(), md.ino());
            seen.insert(key);
            self.found(path, &md, why);
        }
        self.settings
            .unreadable
            .update(std::mem::take(&mut self.unreadable_now));
        self.unterminated_since.retain(|k, _| seen.contains(k));
        for st in self.streams.values_mut() {
            if seen.contains(&(st.dev, st.ino)) {
                st.gone_since = None;
            } else if st.gone_since.is_none() {
                st.gone_since = Some(Instant::now());
            }
        }
        self.deferred.retain(|k, _| seen.contains(k));
        metrics::gauge!(crate::telemetry::FILES_FOLLOWED).set(self.streams.len() as f64);
    }

    fn found(&mut self, path: PathBuf, md: &std::fs::Metadata, why: &'static str) {
        let key = (md.dev(), md.ino());
        if let Some(id) = self.by_inode.get(&key) {
            let st = self
                .streams
                .get_mut(id)
                .expect("by_inode points at a stream");
            st.path = path;
            if st.file.is_none()
                && md.len() != st.read_off
                && let Ok(f) = File::open(&st.path)
            {
                st.file = Some(f);
            }
            return;
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.unreadable_now
                        .insert(path.display().to_string(), e.to_string());
                }
                return;
            }
        };
        match file.metadata() {
            Ok(m) if (m.dev(), m.ino()) == key => {}
            _ => return, // replaced between the walk and the open: next walk
        }
        let Some((fp, fp_len)) = fingerprint(&file, md.len()).or_else(|| {
            // No newline yet. A file whose only content is a line without a newline is
            // followed once it has been quiet for --multiline-timeout (as a held last
            // line is), or at shutdown: its fingerprint is then all of its bytes.
            let len = md.len();
            let since = self
                .unterminated_since
                .entry(key)
                .or_insert((len, Instant::now()));
            if since.0 != len {
                *since = (len, Instant::now());
            }
            let quiet = since.1.elapsed() >= self.settings.multiline_timeout;
            (len > 0 && (quiet || self.take_unterminated_now))
                .then(|| whole_fingerprint(&file, len))
                .flatten()
        }) else {
            self.awaiting_first_line.push(path);
            return;
        };
        self.unterminated_since.remove(&key);
        let now = Instant::now();
        let path_text = path.to_string_lossy().to_string();
        // 1. The same file as before a restart. (A file first fingerprinted while it
        //    held only an unterminated line has a shorter fingerprint than its first
        //    line now: its first bytes decide.)
        if let Some(e) = self.restored.remove(&key) {
            let same = (e.fp == fp && e.fp_len == fp_len)
                || (e.fp_len < fp_len && same_start(&file, e.fp, e.fp_len));
            if same {
                let (fp, fp_len) = (e.fp, e.fp_len);
                let meta = Arc::new(FileMeta::new(&e.path, e.id, self.ecs.as_ref()));
                tracing::info!(path = %path_text, offset = e.offset, "resuming from checkpoint");
                self.follow(
                    e.id,
                    key,
                    fp,
                    fp_len,
                    e.generation,
                    path,
                    meta,
                    file,
                    e.offset,
                );
                metrics::counter!(crate::telemetry::FILES_DISCOVERED_TOTAL, "via" => why)
                    .increment(1);
                return;
            }
            // The inode was reused for a new file.
            self.ledger.remove(e.id);
        }
        // 2. A copy of a file that was truncated (copytruncate): continue where it stopped.
        let adopt = self
            .retired
            .iter()
            .find(|(_, r)| r.fp == fp && r.fp_len == fp_len && (r.dev, r.ino) != key)
            .map(|(id, _)| *id);
        if let Some(id) = adopt {
            let r = self.retired.remove(&id).expect("found above");
            tracing::info!(path = %path_text, offset = r.resume, "continuing a truncated file in its copy");
            self.follow(
                id,
                key,
                fp,
                fp_len,
                r.generation,
                path,
                r.meta,
                file,
                r.resume,
            );
            metrics::counter!(crate::telemetry::FILES_DISCOVERED_TOTAL, "via" => why).increment(1);
            return;
        }
        // 3. Same first line as a followed file: perhaps a copy about to become the
        //    continuation of a truncated file. Give the truncation a moment to show.
        let twin = self
            .streams
            .values()
            .any(|s| s.fp == fp && s.fp_len == fp_len);
        if twin {
            let first = *self.deferred.entry(key).or_insert(now);
            let settle = (self.settings.poll_interval * 3).max(Duration::from_secs(2));
            if now.duration_since(first) < settle {
                return;
            }
        }
        // 4. A new file.
        let generation = self.generations.get(&key).copied().unwrap_or(0);
        let id = stream_id(key.0, key.1, fp, generation);
        let meta = Arc::new(FileMeta::new(&path_text, id, self.ecs.as_ref()));
        tracing::info!(path = %path_text, id = %meta.id_hex, "following new file");
        self.follow(id, key, fp, fp_len, generation, path, meta, file, 0);
        metrics::counter!(crate::telemetry::FILES_DISCOVERED_TOTAL, "via" => why).increment(1);
    }

    #[allow(clippy::too_many_arguments)]
    fn follow(
        &mut self,
        id: u64,
        key: (u64, u64),
        fp: u64,
        fp_len: u32,
        generation: u32,
        path: PathBuf,
        meta: Arc<FileMeta>,
        file: File,
        offset: u64,
    ) {
        self.ledger.register(Entry {
            id,
            dev: key.0,
            ino: key.1,
            fp,
            fp_len,
            generation,
            path: meta.path.clone(),
            offset,
            retired: false,
        });
        let now = Instant::now();
        self.by_inode.insert(key, id);
        self.streams.insert(
            id,
            Stream {
                id,
                dev: key.0,
                ino: key.1,
                fp,
                fp_len,
                generation,
                path,
                meta,
                file: Some(file),
                read_off: offset,
                line_start: offset,
                partial: Vec::new(),
                asm: Assembler::default(),
                last_data: now,
                gone_since: None,
            },
        );
    }

    /// One read of every open file. Returns whether any data moved.
    async fn pass(&mut self) -> Result<bool, TailError> {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        let now = now_rfc3339();
        let mut moved = false;
        for id in ids {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            let mut logicals = std::mem::take(&mut self.logicals);
            let outcome = read_stream(st, &mut self.buf, &mut logicals, &now, &self.settings);
            self.logicals = logicals;
            match outcome {
                Read::Nothing => {}
                Read::Data(chunk, n) => {
                    moved |= n > 0;
                    metrics::counter!(crate::telemetry::BYTES_READ_TOTAL).increment(n as u64);
                    if let Some(c) = chunk {
                        self.send(c).await?;
                    }
                }
                Read::Truncated => {
                    self.truncated(id).await?;
                    moved = true;
                }
            }
        }
        Ok(moved)
    }

    async fn truncated(&mut self, id: u64) -> Result<(), TailError> {
        let Some(mut st) = self.streams.remove(&id) else {
            return Ok(());
        };
        self.by_inode.remove(&(st.dev, st.ino));
        let mut logicals = std::mem::take(&mut self.logicals);
        st.asm.flush(&mut logicals);
        let chunk = encode_chunk(&mut st, &mut logicals, &now_rfc3339());
        self.logicals = logicals;
        if let Some(c) = chunk {
            self.send(c).await?;
        }
        tracing::info!(path = %st.path.display(), at = st.line_start, "file truncated (copytruncate); reading it again from the start");
        metrics::counter!(crate::telemetry::ROTATIONS_TOTAL, "kind" => "truncate").increment(1);
        self.generations
            .insert((st.dev, st.ino), st.generation.saturating_add(1));
        self.ledger.retire(id);
        self.retired.insert(
            id,
            Retired {
                fp: st.fp,
                fp_len: st.fp_len,
                dev: st.dev,
                ino: st.ino,
                generation: st.generation,
                resume: st.line_start,
                since: Instant::now(),
                meta: st.meta.clone(),
            },
        );
        self.walk_requested = true;
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
            tracing::info!(path = %st.path.display(), "file rotated away or deleted and read to its end");
            metrics::counter!(crate::telemetry::ROTATIONS_TOTAL, "kind" => "rename").increment(1);
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
        metrics::gauge!(crate::telemetry::BYTES_BEHIND).set(behind as f64);
        metrics::gauge!(crate::telemetry::FILES_FOLLOWED).set(self.streams.len() as f64);
        Ok(())
    }

    async fn send(&self, chunk: Chunk) -> Result<(), TailError> {
        metrics::counter!(crate::telemetry::RECORDS_READ_TOTAL).increment(chunk.ends.len() as u64);
        let chunk = Arc::new(chunk);
        for tx in &self.outputs {
            tx.send(chunk.clone())
                .await
                .map_err(|_| TailError::OutputStopped)?;
        }
        Ok(())
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn read_stream(
    st: &mut Stream,
    buf: &mut [u8],
    logicals: &mut Vec<Logical>,
    now: &str,
    settings: &TailSettings,
) -> Read {
    let Some(file) = &st.file else {
        return Read::Nothing;
    };
    let Ok(md) = file.metadata() else {
        return Read::Nothing;
    };
    let len = md.len();
    if len < st.read_off {
        return Read::Truncated;
    }
    if len == st.read_off {
        let quiet = st.last_data.elapsed() >= settings.multiline_timeout;
        if quiet && (st.asm.has_pending() || !st.partial.is_empty()) {
            // A last line without a newline, quiet this long, is a whole line: Airflow
            // writes a line at once, and a task killed mid-line never ends it.
            take_partial_line(st, logicals);
            st.asm.flush(logicals);
            return Read::Data(encode_chunk(st, logicals, now), 0);
        }
        return Read::Nothing;
    }
    let want = ((len - st.read_off) as usize).min(buf.len());
    let n = match file.read_at(&mut buf[..want], st.read_off) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(path = %st.path.display(), error = %e, "read failed; will retry");
            return Read::Nothing;
        }
    };
    if n == 0 {
        return Read::Nothing;
    }
    // Checked after the read: if the file was truncated and written past our offset
    // again (copytruncate under fast writes), what we just read belongs to the new
    // content; the first line tells.
    if !same_start(file, st.fp, st.fp_len) {
        return Read::Truncated;
    }
    st.read_off += n as u64;
    st.last_data = Instant::now();
    let bytes = &buf[..n];
    let mut start = 0;
    if !st.partial.is_empty() {
        match memchr::memchr(b'\n', bytes) {
            Some(nl) => {
                let mut line = std::mem::take(&mut st.partial);
                line.extend_from_slice(&bytes[..nl]);
                push_line(st, &line, true, logicals);
                start = nl + 1;
            }
            None => {
                st.partial.extend_from_slice(bytes);
                start = n;
            }
        }
    }
    while start < n {
        match memchr::memchr(b'\n', &bytes[start..]) {
            Some(pos) => {
                push_line(st, &bytes[start..start + pos], true, logicals);
                start += pos + 1;
            }
            None => {
                st.partial.extend_from_slice(&bytes[start..]);
                break;
            }
        }
    }
    while st.partial.len() >= MAX_LINE_BYTES {
        // A line this long is cut (at a character boundary) so memory stays bounded.
        let mut cut = MAX_LINE_BYTES;
        while cut > MAX_LINE_BYTES - 4 && (st.partial[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        let rest = st.partial.split_off(cut);
        let line = std::mem::replace(&mut st.partial, rest);
        push_line(st, &line, false, logicals);
    }
    Read::Data(encode_chunk(st, logicals, now), n)
}

/// Takes a held line without a newline as complete (bytes appended later start a new line).
fn take_partial_line(st: &mut Stream, logicals: &mut Vec<Logical>) {
    if !st.partial.is_empty() {
        let line = std::mem::take(&mut st.partial);
        push_line(st, &line, false, logicals);
    }
}

fn push_line(st: &mut Stream, line: &[u8], newline: bool, logicals: &mut Vec<Logical>) {
    let offset = st.line_start;
    let end = offset + line.len() as u64 + u64::from(newline);
    match std::str::from_utf8(line) {
        Ok(text) => st.asm.push(text, offset, end, logicals),
        Err(_) => st
            .asm
            .push(&String::from_utf8_lossy(line), offset, end, logicals),
    }
    st.line_start = end;
}

fn encode_chunk(st: &mut Stream, logicals: &mut Vec<Logical>, now: &str) -> Option<Chunk> {
    if logicals.is_empty() {
        return None;
    }
    let size: usize = logicals.iter().map(|l| l.text.len() + 200).sum();
    let mut data = Vec::with_capacity(size + st.meta.path.len() * logicals.len());
    let mut ends = Vec::with_capacity(logicals.len());
    let mut end = 0;
    for l in logicals.drain(..) {
        record::encode(&l, &st.meta, now, &mut data, &mut ends);
        end = l.end;
    }
    Some(Chunk {
        data,
        ends,
        file: st.id,
        end,
        meta: st.meta.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_of_globs() {
        assert_eq!(
            glob_base("/opt/airflow/logs/**/*.log"),
            PathBuf::from("/opt/airflow/logs")
        );
        assert_eq!(glob_base("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(glob_base("logs/*.log"), PathBuf::from("logs"));
        assert_eq!(glob_base("*.log"), PathBuf::from("."));
    }

    #[test]
    fn fingerprint_waits_for_a_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"partial").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(fingerprint(&f, 7), None);
        std::fs::write(&p, b"first\nsecond\n").unwrap();
        let f = File::open(&p).unwrap();
        let (_, len) = fingerprint(&f, 13).unwrap();
        assert_eq!(len, 6);
    }
}
