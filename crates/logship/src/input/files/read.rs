//! Reading followed files: a pass over every open stream, lines cut at newlines (a line
//! without one is held until the file is quiet), truncation handled as a new identity.

use super::identity::same_start;
use super::*;

/// Opens a followed file for reading without updating its access time. A file written
/// to all the time has an atime older than its mtime at nearly every read, so `relatime`
/// updates it each time: an inode write through the journal per read, 3.5 % of logship's
/// samples in `bench/logship/run-airflow.sh`. `O_NOATIME` is allowed only to the file's
/// owner (or with `CAP_FOWNER`); anyone else opens the file the usual way.
pub(super) fn open_log(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
}

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
            return Read::Data(encode_chunk(st, logicals, now, settings.records), 0);
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
    Read::Data(encode_chunk(st, logicals, now, settings.records), n)
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
    st.line_start = end;
    if !st.records {
        // Nobody takes records: the line's place is all that is needed (its bytes go
        // out as they are), not its text, nor a traceback join.
        logicals.push(Logical {
            text: String::new(),
            offset,
            end,
        });
        return;
    }
    match std::str::from_utf8(line) {
        Ok(text) => st.asm.push(text, offset, end, logicals),
        Err(_) => st
            .asm
            .push(&String::from_utf8_lossy(line), offset, end, logicals),
    }
}

/// What one pass read.
pub(super) struct Passed {
    /// Some file had new bytes (or was truncated).
    pub any: bool,
    /// Files that may have more than one read's worth waiting: read them again now.
    pub more: Vec<u64>,
}

impl Tailer {
    /// One look at every followed file (`None`) or at the files `only`: an `fstat`
    /// each, and a read of those that grew.
    pub(super) async fn pass(&mut self, only: Option<Vec<u64>>) -> Result<Passed, TailError> {
        let ids: Vec<u64> = match only {
            Some(ids) => ids,
            None => self.streams.keys().copied().collect(),
        };
        let now = now_rfc3339();
        let mut passed = Passed {
            any: false,
            more: Vec::new(),
        };
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
                    passed.any |= n > 0;
                    // A read that filled the buffer may have left bytes behind; one
                    // that did not reached the size the file had when it was looked at.
                    if n == self.buf.len() {
                        passed.more.push(id);
                    }
                    crate::telemetry::bytes_read(n);
                    if let Some(c) = chunk {
                        self.send(c).await?;
                    }
                }
                Read::Truncated => {
                    self.truncated(id).await?;
                    passed.any = true;
                    passed.more.push(id);
                }
            }
        }
        Ok(passed)
    }

    pub(super) async fn truncated(&mut self, id: u64) -> Result<(), TailError> {
        let Some(mut st) = self.streams.remove(&id) else {
            return Ok(());
        };
        self.by_inode.remove(&(st.dev, st.ino));
        let mut logicals = std::mem::take(&mut self.logicals);
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

/// Makes a chunk of `logicals`: their JSON records when `records` (some output takes
/// them), else only their count (the Airflow layout takes the file's bytes as they are,
/// and parsing and encoding every line for nobody was a tenth of its CPU).
pub(super) fn encode_chunk(
    st: &mut Stream,
    logicals: &mut Vec<Logical>,
    now: &str,
    records: bool,
) -> Option<Chunk> {
    if logicals.is_empty() {
        return None;
    }
    let size: usize = match records {
        true => logicals
            .iter()
            .map(|l| l.text.len() + 200 + st.meta.path.len())
            .sum(),
        false => 0,
    };
    let mut data = Vec::with_capacity(size);
    let mut ends = Vec::with_capacity(logicals.len());
    let mut start = logicals[0].offset;
    let mut end = 0;
    for l in logicals.drain(..) {
        if records {
            record::encode(&l, &st.meta, now, &mut data, &mut ends);
        } else {
            ends.push(0);
        }
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
        forwarded: false,
        data,
        ends,
        file: st.id,
        start,
        end,
        raw,
        meta: st.meta.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::open_log;
    use std::io::Read as _;
    use std::time::{Duration, SystemTime};

    fn atime(p: &std::path::Path) -> SystemTime {
        std::fs::metadata(p).unwrap().accessed().unwrap()
    }

    #[test]
    fn reading_a_followed_file_leaves_its_access_time_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("attempt=1.log");
        std::fs::write(&p, "line\n").unwrap();
        // What a log being written looks like: accessed before its last write, so
        // relatime would update atime on the next read.
        let old = SystemTime::now() - Duration::from_secs(86_400);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        drop(f);
        let before = atime(&p);

        let mut s = String::new();
        open_log(&p).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "line\n");
        assert_eq!(atime(&p), before, "open_log updated the access time");

        // The control: an ordinary read does update it, unless the mount never does.
        std::fs::File::open(&p)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        if atime(&p) == before {
            eprintln!(
                "this mount does not update access times; the check above proves nothing here"
            );
        }
    }
}
