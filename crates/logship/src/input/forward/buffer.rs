//! The forward input's disk buffer: encoded records wait here between their connection
//! and the outputs, so that a record logship has acknowledged to its sender survives a
//! crash of logship (SIGKILL, an OOM kill) and is shipped after the restart.
//!
//! The buffer is a folder of segments `seg-<seq>.lsb` (sequence numbers in hex, 16
//! digits, so names sort in order), each a run of blocks:
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32 of the payload][payload]
//! payload = [newline-terminated JSON records][tag][u16 LE tag length]
//! ```
//!
//! One writer thread appends blocks; everything queued when it wakes goes out in one
//! write(2) (group commit), and a block counts as durable once that call returned: the
//! kernel holds it, so a crash of the process cannot lose it. That is when a sender's
//! ack is answered. Segments are not fsynced: on Fargate the buffer lives on the task's
//! ephemeral storage, which a host failure takes away with the task anyway; what the
//! buffer has to survive is logship's own death.
//!
//! A reader follows the writer block by block (the outputs' chunks), and a segment is
//! deleted once it is sealed (the writer moved on) and every output acknowledged it in
//! the buffer's own checkpoint ledger (`checkpoints.json` in the folder). At a restart
//! every segment is replayed from its checkpoint; a torn tail (a block cut short by a
//! kill in the middle of a write, or one whose checksum does not match) ends the
//! segment there: it is counted, logged and never shipped.
//!
//! The buffer is capped in bytes: when the next block does not fit, the writer seals
//! the current segment (so it can be deleted once delivered) and waits for space;
//! while it waits, connections stop being read (backpressure to the senders).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{Entry, Ledger, StateError};

/// Chunk file ids of buffer segments carry this bit (readable in logs and checkpoints;
/// acknowledgements are routed by which ledger knows the id).
pub const SEGMENT_ID_BIT: u64 = 1 << 63;

/// A segment is sealed once it holds this much.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// Records of one append are cut into blocks of about this size (at record ends), so
/// the reader never needs more than one such block in memory.
pub const BLOCK_BYTES: usize = 1 << 20;

/// A block longer than this is corrupt (no writer makes one: a record is at most a few
/// hundred KiB, see [`crate::record::PART_BYTES`]).
const MAX_BLOCK_BYTES: u32 = 16 << 20;

const HEADER: u64 = 8;

/// The chunk file id of segment `seq`.
pub fn segment_id(seq: u64) -> u64 {
    SEGMENT_ID_BIT | seq
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:016x}.lsb")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".lsb")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The buffer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The folder or a segment cannot be read or written.
    #[error(
        "buffer folder {path}: {source}; --buffer-dir must be a writable folder that only this logship uses"
    )]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The buffer's checkpoint ledger.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Records of one tag to append, and who to tell once they are durable.
#[derive(Debug)]
pub struct Append {
    /// The tag the records came with (their route).
    pub tag: Arc<str>,
    /// Newline-terminated JSON records.
    pub records: Vec<u8>,
    /// Answered once the records are written.
    pub done: Option<oneshot::Sender<()>>,
    /// Room in the connections' queue, given back once written.
    pub hold: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One block read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Its segment.
    pub seq: u64,
    /// Its offset in the segment.
    pub start: u64,
    /// The offset just past it.
    pub end: u64,
    /// The tag.
    pub tag: String,
    /// Newline-terminated JSON records.
    pub records: Vec<u8>,
}

/// Where the writer is: the reader reads up to here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tip {
    seq: u64,
    len: u64,
    closed: bool,
}

#[derive(Debug)]
struct Space {
    used: u64,
    /// Set when the reader is gone: the writer must not wait for space then.
    abandoned: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    space: Mutex<Space>,
    freed: Condvar,
    /// Sealed segments read to their end, waiting to be acknowledged: (seq, good end,
    /// file size).
    read: Mutex<VecDeque<(u64, u64, u64)>>,
}

impl Shared {
    fn release(&self, bytes: u64) {
        let mut s = self.space.lock().expect("space lock");
        s.used = s.used.saturating_sub(bytes);
        crate::telemetry::forward_buffer_bytes(s.used);
        drop(s);
        self.freed.notify_all();
    }
}

/// A segment found at start-up, to be replayed.
#[derive(Debug, Clone, Copy)]
struct Replay {
    seq: u64,
    from: u64,
    end: u64,
    size: u64,
}

/// The opened buffer: [`Buffer::start`] splits it into its writer and reader.
pub struct Buffer {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    replay: Vec<Replay>,
    next_seq: u64,
}

impl Buffer {
    /// Opens (creating) the buffer in `dir` for `outputs` outputs, finds what earlier
    /// runs left and checks it block by block.
    pub fn open(dir: &Path, outputs: usize, max_bytes: u64) -> Result<Self, BufferError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BufferError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (ledger, entries) = Ledger::open(dir, outputs)?;
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            if let Some(seq) = e.file_name().to_str().and_then(parse_segment_name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        // Entries whose segment is gone were delivered and deleted before the ledger
        // learned it.
        for e in &entries {
            if !seqs.contains(&(e.id & !SEGMENT_ID_BIT)) {
                ledger.remove(e.id);
            }
        }
        let mut replay = Vec::new();
        let mut used = 0;
        for &seq in &seqs {
            let path = dir.join(segment_name(seq));
            let file = File::open(&path).map_err(io(&path))?;
            let size = file.metadata().map_err(io(&path))?.len();
            let from = ledger.committed(segment_id(seq)).unwrap_or(0).min(size);
            let end = good_end(&file, from, size).map_err(io(&path))?;
            if end < size {
                crate::telemetry::forward_buffer_torn(size - end);
                tracing::warn!(
                    segment = %path.display(),
                    torn_bytes = size - end,
                    "the buffer segment ends in a torn or corrupt block (a kill during a write); that tail was never acknowledged and is skipped"
                );
            }
            if from >= end {
                std::fs::remove_file(&path).map_err(io(&path))?;
                ledger.remove(segment_id(seq));
                continue;
            }
            ledger.register(segment_entry(seq, &path, from));
            used += size;
            replay.push(Replay {
                seq,
                from,
                end,
                size,
            });
        }
        if !replay.is_empty() {
            let bytes: u64 = replay.iter().map(|r| r.end - r.from).sum();
            tracing::info!(
                segments = replay.len(),
                bytes,
                "replaying what the buffer held at the last stop"
            );
        }
        crate::telemetry::forward_buffer_bytes(used);
        let next_seq = seqs.last().map_or(0, |s| s + 1);
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                max_bytes,
                space: Mutex::new(Space {
                    used,
                    abandoned: false,
                }),
                freed: Condvar::new(),
                read: Mutex::new(VecDeque::new()),
            }),
            ledger: Arc::new(ledger),
            replay,
            next_seq,
        })
    }

    /// The buffer's checkpoint ledger (outputs acknowledge segments into it).
    pub fn ledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    /// Starts the writer thread fed by `rx`; returns the reader. The writer ends when
    /// every sender of `rx` is dropped, after writing what they sent.
    pub fn start(self, rx: mpsc::Receiver<Append>) -> Result<Reader, BufferError> {
        let (tip_tx, tip_rx) = watch::channel(Tip {
            seq: self.next_seq,
            len: 0,
            closed: false,
        });
        let writer = Writer::new(self.shared.clone(), self.ledger.clone(), self.next_seq)?;
        std::thread::Builder::new()
            .name("logship-buffer".into())
            .spawn(move || writer.run(rx, tip_tx))
            .map_err(|source| BufferError::Io {
                path: self.shared.dir.clone(),
                source,
            })?;
        Ok(Reader {
            shared: self.shared,
            ledger: self.ledger,
            replay: self.replay.into(),
            tip: tip_rx,
            current: None,
            live_seq: self.next_seq,
            buf: Vec::new(),
        })
    }
}

fn segment_entry(seq: u64, path: &Path, offset: u64) -> Entry {
    Entry {
        id: segment_id(seq),
        dev: 0,
        ino: 0,
        fp: 0,
        fp_len: 0,
        generation: 0,
        path: path.display().to_string(),
        offset,
        retired: false,
    }
}

/// Where the good blocks of `file` from `from` end (at most `size`).
fn good_end(file: &File, from: u64, size: u64) -> std::io::Result<u64> {
    let mut pos = from;
    let mut header = [0u8; HEADER as usize];
    let mut payload = Vec::new();
    while pos + HEADER <= size {
        file.read_exact_at(&mut header, pos)?;
        let (len, crc) = split_header(&header);
        if len > MAX_BLOCK_BYTES || pos + HEADER + u64::from(len) > size {
            break;
        }
        payload.resize(len as usize, 0);
        file.read_exact_at(&mut payload, pos + HEADER)?;
        if crc32fast::hash(&payload) != crc || parse_payload(&payload).is_none() {
            break;
        }
        pos += HEADER + u64::from(len);
    }
    Ok(pos)
}

fn split_header(h: &[u8; 8]) -> (u32, u32) {
    (
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
    )
}

/// The tag and the records of a payload.
fn parse_payload(p: &[u8]) -> Option<(&str, &[u8])> {
    // The tag comes last, so a block read into its own buffer becomes its records by a
    // truncation, not a copy.
    let n = p.len().checked_sub(2)?;
    let tag_len = usize::from(u16::from_le_bytes([p[n], p[n + 1]]));
    let tag_start = n.checked_sub(tag_len)?;
    let tag = std::str::from_utf8(&p[tag_start..n]).ok()?;
    Some((tag, &p[..tag_start]))
}

/// The parts of the block of `tag` and `records` around the records: the header (length
/// and CRC) and the trailer (the tag and its length). The records are written from
/// where they are, between the two (a copy of every record into one block buffer cost
/// a memmove of all the data and a block-sized buffer).
fn block_parts(tag: &str, records: &[u8]) -> ([u8; 8], Vec<u8>) {
    // Tags are short (a container name and a task id); a longer one is cut, at a
    // character boundary, as it only routes.
    let mut tag_len = tag.len().min(u16::MAX as usize);
    while !tag.is_char_boundary(tag_len) {
        tag_len -= 1;
    }
    let tag = &tag[..tag_len];
    let mut trailer = Vec::with_capacity(tag.len() + 2);
    trailer.extend_from_slice(tag.as_bytes());
    trailer.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    let len = records.len() + trailer.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(records);
    crc.update(&trailer);
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc.finalize().to_le_bytes());
    (header, trailer)
}

/// Appends the block of `tag` and `records` to `out` (tests build segments with it).
#[cfg(test)]
fn push_block(out: &mut Vec<u8>, tag: &str, records: &[u8]) {
    let (header, trailer) = block_parts(tag, records);
    out.extend_from_slice(&header);
    out.extend_from_slice(records);
    out.extend_from_slice(&trailer);
}

/// Writes all of `parts`, in order, with as few `writev` calls as the kernel allows.
fn write_all_parts(file: &mut File, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Cuts `records` at record ends into pieces of about [`BLOCK_BYTES`].
fn pieces(records: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= BLOCK_BYTES {
            rest.len()
        } else {
            memchr::memrchr(b'\n', &rest[..BLOCK_BYTES])
                .or_else(|| memchr::memchr(b'\n', &rest[BLOCK_BYTES..]).map(|i| i + BLOCK_BYTES))
                .map_or(rest.len(), |i| i + 1)
        };
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

struct Writer {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    seq: u64,
    file: File,
    len: u64,
}

impl Writer {
    fn new(shared: Arc<Shared>, ledger: Arc<Ledger>, seq: u64) -> Result<Self, BufferError> {
        let file = Self::create(&shared, &ledger, seq)?;
        Ok(Self {
            shared,
            ledger,
            seq,
            file,
            len: 0,
        })
    }

    fn create(shared: &Shared, ledger: &Ledger, seq: u64) -> Result<File, BufferError> {
        let path = shared.dir.join(segment_name(seq));
        // Registered before the first byte: a segment without an entry is replayed from
        // its start, which is right only when nothing of it was delivered yet.
        ledger.register(segment_entry(seq, &path, 0));
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|source| BufferError::Io { path, source })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Append>, tip: watch::Sender<Tip>) {
        let mut batch: Vec<Append> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            for a in &batch {
                for piece in pieces(&a.records) {
                    let (header, trailer) = block_parts(&a.tag, piece);
                    self.append(&[&header, piece, &trailer], &tip);
                }
            }
            tip.send_replace(Tip {
                seq: self.seq,
                len: self.len,
                closed: false,
            });
            for a in batch.drain(..) {
                if let Some(done) = a.done {
                    let _ = done.send(());
                }
            }
        }
        self.seal_only();
        tip.send_replace(Tip {
            seq: self.seq,
            len: self.len,
            closed: true,
        });
    }

    /// Appends one block, making room first; retries write errors (a full disk) until
    /// they pass, as the block's sender waits for it.
    fn append(&mut self, block: &[&[u8]], tip: &watch::Sender<Tip>) {
        let size: u64 = block.iter().map(|p| p.len() as u64).sum();
        if self.len > 0 && self.len + size > SEGMENT_BYTES {
            self.roll(tip);
        }
        self.wait_for_space(size, tip);
        loop {
            match write_all_parts(&mut self.file, block) {
                Ok(()) => break,
                Err(e) => {
                    crate::telemetry::forward_buffer_write_failed();
                    tracing::error!(error = %e, segment = self.seq, "cannot write to the buffer; retrying in 1s (the senders wait)");
                    // Cut back what a short write left, so the segment holds whole blocks.
                    let _ = self.file.set_len(self.len);
                    std::thread::sleep(Duration::from_secs(1));
                    if let Ok(reopened) = OpenOptions::new()
                        .write(true)
                        .open(self.shared.dir.join(segment_name(self.seq)))
                    {
                        self.file = reopened;
                    }
                    use std::io::Seek;
                    let _ = self.file.seek(std::io::SeekFrom::Start(self.len));
                }
            }
        }
        self.len += size;
    }

    fn wait_for_space(&mut self, size: u64, tip: &watch::Sender<Tip>) {
        let max = self.shared.max_bytes;
        let fits = |s: &Space| s.abandoned || s.used == 0 || s.used + size <= max;
        {
            let mut space = self.shared.space.lock().expect("space lock");
            if fits(&space) {
                space.used += size;
                crate::telemetry::forward_buffer_bytes(space.used);
                return;
            }
        }
        // Seal what is written so it can be delivered and deleted, then wait.
        if self.len > 0 {
            self.roll(tip);
        }
        let started = Instant::now();
        tracing::warn!(
            max_bytes = self.shared.max_bytes,
            "the buffer is full; connections are not read until the outputs catch up"
        );
        let mut space = self.shared.space.lock().expect("space lock");
        while !fits(&space) {
            space = self
                .shared
                .freed
                .wait_timeout(space, Duration::from_secs(1))
                .expect("space lock")
                .0;
        }
        space.used += size;
        crate::telemetry::forward_buffer_full(started.elapsed());
    }

    /// Seals the current segment and starts the next.
    fn roll(&mut self, tip: &watch::Sender<Tip>) {
        // Written back before the next segment fills: a memory cgroup is charged for
        // dirty page cache, and cgroup v1 does not throttle a writer by it, so without
        // this an outage's backlog could OOM-kill logship inside its task's limit. One
        // segment of dirty pages at a time bounds it.
        if let Err(e) = self.file.sync_data() {
            tracing::warn!(error = %e, segment = self.seq, "cannot write a buffer segment back to disk");
        }
        let next = self.seq + 1;
        loop {
            match Self::create(&self.shared, &self.ledger, next) {
                Ok(file) => {
                    self.file = file;
                    break;
                }
                Err(e) => {
                    crate::telemetry::forward_buffer_write_failed();
                    tracing::error!(error = %e, "cannot start a buffer segment; retrying in 1s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        // The reader moves on once it sees a newer segment: the old one is complete.
        self.seq = next;
        self.len = 0;
        tip.send_replace(Tip {
            seq: self.seq,
            len: 0,
            closed: false,
        });
    }

    fn seal_only(&mut self) {
        let _ = self.file.flush();
    }
}

/// Reads blocks in order: first what earlier runs left, then what the writer appends.
pub struct Reader {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    replay: VecDeque<Replay>,
    tip: watch::Receiver<Tip>,
    /// The segment being read: (seq, file, next offset).
    current: Option<(u64, File, u64)>,
    /// The next segment the writer makes or made.
    live_seq: u64,
    buf: Vec<u8>,
}

impl Reader {
    /// The next blocks, about `max_bytes` of them (at least one), all from one segment.
    /// Empty once the writer closed and everything was read.
    pub async fn next(&mut self, max_bytes: usize) -> Result<Vec<Block>, BufferError> {
        loop {
            if let Some(r) = self.replay.front().copied() {
                let path = self.shared.dir.join(segment_name(r.seq));
                let file = File::open(&path).map_err(|source| BufferError::Io {
                    path: path.clone(),
                    source,
                })?;
                let (blocks, next) =
                    read_blocks(&file, r.seq, r.from, r.end, max_bytes, &mut self.buf)
                        .map_err(|source| BufferError::Io { path, source })?;
                if next >= r.end {
                    self.replay.pop_front();
                    self.sealed(r.seq, r.end, r.size);
                } else if let Some(front) = self.replay.front_mut() {
                    front.from = next;
                }
                if !blocks.is_empty() {
                    return Ok(blocks);
                }
                continue;
            }
            let tip = *self.tip.borrow_and_update();
            let (seq, file, from) = match &self.current {
                Some((seq, file, from)) => (*seq, file, *from),
                None => {
                    if self.live_seq > tip.seq {
                        if tip.closed {
                            return Ok(Vec::new());
                        }
                        if self.tip.changed().await.is_err() {
                            return Ok(Vec::new());
                        }
                        continue;
                    }
                    let path = self.shared.dir.join(segment_name(self.live_seq));
                    let file = File::open(&path).map_err(|source| BufferError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    self.current = Some((self.live_seq, file, 0));
                    continue;
                }
            };
            // A segment older than the writer's is complete: read it to its end.
            let end = if seq < tip.seq {
                file.metadata()
                    .map_err(|source| BufferError::Io {
                        path: self.shared.dir.join(segment_name(seq)),
                        source,
                    })?
                    .len()
            } else {
                tip.len
            };
            if from < end {
                let (blocks, next) = read_blocks(file, seq, from, end, max_bytes, &mut self.buf)
                    .map_err(|source| BufferError::Io {
                        path: self.shared.dir.join(segment_name(seq)),
                        source,
                    })?;
                if next == from {
                    // Not a whole block where one must be: a write cut short.
                    crate::telemetry::forward_buffer_torn(end - from);
                    tracing::error!(
                        segment = seq,
                        offset = from,
                        "a corrupt block in the live buffer segment; skipping the rest of it"
                    );
                    let size = end;
                    self.current = None;
                    self.live_seq = seq + 1;
                    self.sealed(seq, from, size);
                    continue;
                }
                if let Some(c) = &mut self.current {
                    c.2 = next;
                }
                return Ok(blocks);
            }
            if seq < tip.seq {
                self.current = None;
                self.live_seq = seq + 1;
                self.sealed(seq, end, end);
                continue;
            }
            if tip.closed {
                // The last segment holds everything: it is deleted at the next start
                // once acknowledged (or replayed if not).
                return Ok(Vec::new());
            }
            if self.tip.changed().await.is_err() {
                let t = *self.tip.borrow();
                if t.closed || (t.seq == seq && t.len <= from) {
                    return Ok(Vec::new());
                }
            }
        }
    }

    fn sealed(&self, seq: u64, end: u64, size: u64) {
        self.shared
            .read
            .lock()
            .expect("read lock")
            .push_back((seq, end, size));
    }

    /// Deletes sealed segments every output acknowledged; returns how many.
    pub fn sweep(&self) -> usize {
        sweep(&self.shared, &self.ledger)
    }

    /// A handle that deletes acknowledged segments from another task.
    pub fn sweeper(&self) -> Sweeper {
        Sweeper {
            shared: self.shared.clone(),
            ledger: self.ledger.clone(),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A writer waiting for space would wait for a reader that is gone.
        self.shared.space.lock().expect("space lock").abandoned = true;
        self.shared.freed.notify_all();
    }
}

/// Deletes delivered segments (see [`Reader::sweeper`]).
#[derive(Clone)]
pub struct Sweeper {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
}

impl Sweeper {
    /// Deletes sealed segments every output acknowledged; returns how many.
    pub fn sweep(&self) -> usize {
        sweep(&self.shared, &self.ledger)
    }
}

fn sweep(shared: &Shared, ledger: &Ledger) -> usize {
    let mut deleted = 0;
    loop {
        let front = shared.read.lock().expect("read lock").front().copied();
        let Some((seq, end, size)) = front else {
            break;
        };
        // Segments are acknowledged in order by every output, so the oldest goes first.
        if ledger.committed(segment_id(seq)).is_some_and(|c| c < end) {
            break;
        }
        let path = shared.dir.join(segment_name(seq));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, segment = %path.display(), "cannot delete a delivered buffer segment; trying again later");
            break;
        }
        ledger.remove(segment_id(seq));
        shared.read.lock().expect("read lock").pop_front();
        shared.release(size);
        deleted += 1;
    }
    deleted
}

/// Reads `len` bytes at `offset` into a new buffer, which is not zeroed first (a
/// memset of every block read back was 2 % of the forward input's CPU).
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::with_capacity(len);
    f.take(len as u64).read_to_end(&mut out)?;
    if out.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

/// Reads whole blocks of segment `seq` from `from` up to `end`, about `max_bytes` (at
/// least one block); returns them and where the next starts. Stops before a block that
/// is cut short or fails its checksum.
fn read_blocks(
    file: &File,
    seq: u64,
    from: u64,
    end: u64,
    max_bytes: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<(Vec<Block>, u64)> {
    // A block of at least `max_bytes` (a frame's worth of records) is read into a buffer
    // of its own, which becomes the chunk's data without a copy.
    if end - from >= HEADER {
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, from)?;
        let (len, crc) = split_header(&header);
        let block_end = from + HEADER + u64::from(len);
        if len <= MAX_BLOCK_BYTES && len as usize >= max_bytes && block_end <= end {
            let payload = read_at(file, from + HEADER, len as usize)?;
            if crc32fast::hash(&payload) != crc {
                return Ok((Vec::new(), from));
            }
            let Some((tag, records)) = parse_payload(&payload) else {
                return Ok((Vec::new(), from));
            };
            let (tag, records_len) = (tag.to_string(), records.len());
            let mut payload = payload;
            payload.truncate(records_len);
            return Ok((
                vec![Block {
                    seq,
                    start: from,
                    end: block_end,
                    tag,
                    records: payload,
                }],
                block_end,
            ));
        }
    }
    let mut want = (end - from).min(max_bytes.max(HEADER as usize) as u64) as usize;
    'read: loop {
        buf.resize(want, 0);
        file.read_exact_at(buf, from)?;
        let mut blocks = Vec::new();
        let mut pos = 0usize;
        while pos + HEADER as usize <= buf.len() {
            let header: &[u8; 8] = buf[pos..pos + 8].try_into().expect("8 bytes");
            let (len, crc) = split_header(header);
            if len > MAX_BLOCK_BYTES {
                break;
            }
            let block_end = pos + HEADER as usize + len as usize;
            if block_end > buf.len() {
                if blocks.is_empty() && from + block_end as u64 <= end {
                    // The first block is larger than asked for: read all of it.
                    want = block_end;
                    continue 'read;
                }
                break;
            }
            let payload = &buf[pos + HEADER as usize..block_end];
            if crc32fast::hash(payload) != crc {
                break;
            }
            let Some((tag, records)) = parse_payload(payload) else {
                break;
            };
            blocks.push(Block {
                seq,
                start: from + pos as u64,
                end: from + block_end as u64,
                tag: tag.to_string(),
                records: records.to_vec(),
            });
            pos = block_end;
        }
        return Ok((blocks, from + pos as u64));
    }
}

/// Deletes delivered segments until `stop`, every `interval`.
pub async fn sweep_loop(
    sweeper: Sweeper,
    stop: airside_core::shutdown::Shutdown,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                sweeper.sweep();
                return;
            }
            _ = tick.tick() => { sweeper.sweep(); }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(tag: &str, records: &str) -> (Append, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Append {
                tag: Arc::from(tag),
                records: records.as_bytes().to_vec(),
                done: Some(tx),
                hold: None,
            },
            rx,
        )
    }

    async fn read_all(reader: &mut Reader) -> Vec<Block> {
        let mut out = Vec::new();
        loop {
            let b = reader.next(64 * 1024).await.unwrap();
            if b.is_empty() {
                return out;
            }
            out.extend(b);
        }
    }

    fn ack_all(ledger: &Ledger, outputs: usize, blocks: &[Block]) {
        for b in blocks {
            for o in 0..outputs {
                ledger.ack(o, segment_id(b.seq), b.end);
            }
        }
    }

    #[tokio::test]
    async fn written_blocks_come_back_in_order_and_delivered_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(dir.path(), 2, 64 << 20).unwrap();
        let ledger = buffer.ledger();
        let (tx, rx) = mpsc::channel(16);
        let mut reader = buffer.start(rx).unwrap();
        // Enough to fill more than one segment.
        let line = format!("{{\"m\":\"{}\"}}\n", "x".repeat(1000));
        let many = line.repeat(3000);
        let mut waits = Vec::new();
        for i in 0..4 {
            let (a, done) = append(&format!("tag-{i}"), &many);
            tx.send(a).await.unwrap();
            waits.push(done);
        }
        for w in waits {
            w.await.expect("acknowledged once written");
        }
        drop(tx);
        let blocks = read_all(&mut reader).await;
        let text: Vec<u8> = blocks.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(text.len(), many.len() * 4);
        assert!(
            blocks
                .iter()
                .all(|b| b.records.len() <= BLOCK_BYTES + line.len())
        );
        let tags: Vec<&str> = blocks.iter().map(|b| b.tag.as_str()).collect();
        let mut sorted = tags.clone();
        sorted.sort();
        assert_eq!(tags, sorted, "blocks come back in the order written");
        let segments = blocks.last().unwrap().seq + 1;
        assert!(segments >= 2, "{segments} segments");
        // One output acknowledging is not enough; both are.
        for b in &blocks {
            ledger.ack(0, segment_id(b.seq), b.end);
        }
        assert_eq!(reader.sweep(), 0);
        ack_all(&ledger, 2, &blocks);
        // The last segment is not sealed while the writer could still use it... the
        // writer closed, so every segment but the open one is deleted.
        assert_eq!(reader.sweep() as u64, segments - 1);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.starts_with("seg-"))
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // The next start finds it delivered and deletes it.
        ledger.persist().unwrap();
        drop(reader);
        let again = Buffer::open(dir.path(), 2, 64 << 20).unwrap();
        assert!(again.replay.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("seg-"))
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn a_restart_replays_from_the_checkpoint_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(dir.path(), 1, 64 << 20).unwrap();
        let ledger = buffer.ledger();
        let (tx, rx) = mpsc::channel(16);
        let mut reader = buffer.start(rx).unwrap();
        for i in 0..10 {
            let (a, done) = append("app", &format!("{{\"n\":{i}}}\n"));
            tx.send(a).await.unwrap();
            done.await.unwrap();
        }
        drop(tx);
        let blocks = read_all(&mut reader).await;
        assert_eq!(blocks.len(), 10);
        // Four delivered and checkpointed; then a kill in the middle of a write.
        ack_all(&ledger, 1, &blocks[..4]);
        ledger.persist().unwrap();
        drop(reader);
        let seg = dir.path().join(segment_name(blocks[0].seq));
        let mut torn = Vec::new();
        push_block(&mut torn, "app", b"{\"n\":10}\n");
        torn.truncate(torn.len() - 3);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);

        let buffer = Buffer::open(dir.path(), 1, 64 << 20).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let mut reader = buffer.start(rx).unwrap();
        drop(tx);
        let replayed = read_all(&mut reader).await;
        let text: String = replayed
            .iter()
            .map(|b| String::from_utf8(b.records.clone()).unwrap())
            .collect();
        assert_eq!(
            text,
            (4..10)
                .map(|i| format!("{{\"n\":{i}}}\n"))
                .collect::<String>(),
            "replayed from the checkpoint, the torn block skipped"
        );
    }

    #[tokio::test]
    async fn a_corrupt_block_ends_the_segment_at_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        push_block(&mut bytes, "a", b"{\"n\":1}\n");
        let first = bytes.len();
        push_block(&mut bytes, "a", b"{\"n\":2}\n");
        bytes[first + 12] ^= 0xff; // a flipped bit in the second block's payload
        push_block(&mut bytes, "a", b"{\"n\":3}\n");
        std::fs::write(dir.path().join(segment_name(7)), &bytes).unwrap();
        let buffer = Buffer::open(dir.path(), 1, 64 << 20).unwrap();
        let (tx, rx) = mpsc::channel(1);
        let mut reader = buffer.start(rx).unwrap();
        drop(tx);
        let blocks = read_all(&mut reader).await;
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].records, b"{\"n\":1}\n");
    }

    #[tokio::test]
    async fn a_full_buffer_holds_the_writer_until_delivered_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one segment.
        let buffer = Buffer::open(dir.path(), 1, SEGMENT_BYTES).unwrap();
        let ledger = buffer.ledger();
        let (tx, rx) = mpsc::channel(16);
        let mut reader = buffer.start(rx).unwrap();
        let line = format!("{}\n", "y".repeat(1023));
        let part = line.repeat(3 * 1024);
        for _ in 0..2 {
            let (a, done) = append("t", &part);
            tx.send(a).await.unwrap();
            done.await.unwrap();
        }
        // A third does not fit: it waits, and the reader is not read meanwhile.
        let (a, mut third) = append("t", &part);
        tx.send(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            third.try_recv().is_err(),
            "written although the buffer is full"
        );
        // Deliver what can be read; the sealed segment goes, the write proceeds.
        let mut got = Vec::new();
        while let Ok(blocks) =
            tokio::time::timeout(Duration::from_millis(300), reader.next(1 << 20)).await
        {
            got.extend(blocks.unwrap());
        }
        // The first two, and the blocks of the third that fitted (its ack waits for all).
        let read: usize = got.iter().map(|b| b.records.len()).sum();
        assert!(read >= part.len() * 2 && read < part.len() * 3, "{read}");
        ack_all(&ledger, 1, &got);
        assert_eq!(reader.sweep(), 1);
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("written once there was room")
            .unwrap();
    }

    #[test]
    fn pieces_cut_at_record_ends() {
        let line = "z".repeat(999) + "\n";
        let text = line.repeat(3000);
        let parts: Vec<&[u8]> = pieces(text.as_bytes()).collect();
        assert!(parts.len() > 1);
        assert_eq!(parts.concat(), text.as_bytes());
        assert!(
            parts
                .iter()
                .all(|p| p.ends_with(b"\n") && p.len() <= BLOCK_BYTES)
        );
    }
}
