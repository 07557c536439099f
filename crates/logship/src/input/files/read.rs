//! Reading followed files: a pass over every open stream, lines cut at newlines (a line
//! without one is held until the file is quiet), truncation handled as a new identity.

use super::identity::same_start;
use super::*;

pub(super) enum Read {
    Nothing,
    Data(Option<Chunk>, usize),
    Truncated,
}

pub(super) fn read_stream(
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
    if settings.keep_raw {
        st.raw.extend_from_slice(bytes);
    }
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
pub(super) fn take_partial_line(st: &mut Stream, logicals: &mut Vec<Logical>) {
    if !st.partial.is_empty() {
        let line = std::mem::take(&mut st.partial);
        push_line(st, &line, false, logicals);
    }
}

pub(super) fn push_line(st: &mut Stream, line: &[u8], newline: bool, logicals: &mut Vec<Logical>) {
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

impl Tailer {
    /// One read of every open file (`None`) or of the files `only`. Returns the files
    /// whose data moved.
    pub(super) async fn pass(&mut self, only: Option<HashSet<u64>>) -> Result<Vec<u64>, TailError> {
        let ids: Vec<u64> = match only {
            Some(ids) => ids.into_iter().collect(),
            None => self.streams.keys().copied().collect(),
        };
        let now = now_rfc3339();
        let mut moved = Vec::new();
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
                    if n > 0 {
                        moved.push(id);
                    }
                    crate::telemetry::bytes_read(n);
                    if let Some(c) = chunk {
                        self.send(c).await?;
                    }
                }
                Read::Truncated => {
                    self.truncated(id).await?;
                    moved.push(id);
                }
            }
        }
        Ok(moved)
    }

    pub(super) async fn truncated(&mut self, id: u64) -> Result<(), TailError> {
        let Some(mut st) = self.streams.remove(&id) else {
            return Ok(());
        };
        self.forget_path(&st.path, id);
        self.by_inode.remove(&(st.dev, st.ino));
        let mut logicals = std::mem::take(&mut self.logicals);
        st.asm.flush(&mut logicals);
        let chunk = encode_chunk(&mut st, &mut logicals, &now_rfc3339());
        self.logicals = logicals;
        if let Some(c) = chunk {
            self.send(c).await?;
        }
        crate::telemetry::file_truncated(&st.path, st.line_start);
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
}

pub(super) fn encode_chunk(
    st: &mut Stream,
    logicals: &mut Vec<Logical>,
    now: &str,
) -> Option<Chunk> {
    if logicals.is_empty() {
        return None;
    }
    let size: usize = logicals.iter().map(|l| l.text.len() + 200).sum();
    let mut data = Vec::with_capacity(size + st.meta.path.len() * logicals.len());
    let mut ends = Vec::with_capacity(logicals.len());
    let mut start = logicals[0].offset;
    let mut end = 0;
    for l in logicals.drain(..) {
        record::encode(&l, &st.meta, now, &mut data, &mut ends);
        end = l.end;
    }
    // The file's own bytes of these records, when kept: everything read up to `end`.
    let mut raw = Vec::new();
    if !st.raw.is_empty() {
        let n = (end.saturating_sub(st.raw_base) as usize).min(st.raw.len());
        raw = st.raw.drain(..n).collect();
        start = st.raw_base;
        st.raw_base += n as u64;
    }
    Some(Chunk {
        data,
        ends,
        file: st.id,
        start,
        end,
        raw,
        meta: st.meta.clone(),
    })
}
