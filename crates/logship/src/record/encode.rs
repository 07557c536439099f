//! Encoding: one logical record into one or more JSON lines (a record longer than
//! [`PART_BYTES`] is split into numbered parts), with the Airflow 2 text and Airflow 3
//! JSON line formats read into fields.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::*;

/// The parts of an Airflow 2 text line `[ts] {file.py:N} LEVEL - msg`.
#[derive(Debug, PartialEq, Eq)]
pub struct Airflow2<'a> {
    /// The timestamp between the brackets.
    pub timestamp: &'a str,
    /// `file.py:N`.
    pub source: &'a str,
    /// The level name.
    pub level: &'a str,
    /// The message.
    pub message: &'a str,
}

pub(super) const LEVELS: &[&str] = &[
    "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL", "NOTSET",
];

/// Parses an Airflow 2 task log line; `None` when the line has another shape.
///
/// Every line is tried (to find where records start), so the separators are found
/// with memchr on one byte and a check of its neighbours: `str::split_once` with a
/// string pattern builds a substring searcher per call, which was 9 % of logship's
/// CPU (perf, 200-byte lines). The result is the same as splitting at the first
/// `"] {"`, then the first `"} "`, then the first `" - "` (a property test holds
/// this against that plain version).
pub fn parse_airflow2(line: &str) -> Option<Airflow2<'_>> {
    let b = line.as_bytes();
    // A timestamp starts with a four-digit year: "[2024-01-15T10:00:00.123+0000]".
    if b.len() < 11 || b[0] != b'[' || !b[1..5].iter().all(u8::is_ascii_digit) || b[5] != b'-' {
        return None;
    }
    let ts_end = memchr::memchr_iter(b']', b).find(|&i| b.get(i + 1..i + 3) == Some(b" {"))?;
    let timestamp = &line[1..ts_end];
    if timestamp.len() < 10 {
        return None;
    }
    let source_start = ts_end + 3;
    let source_end = memchr::memchr_iter(b'}', &b[source_start..])
        .map(|i| source_start + i)
        .find(|&i| b.get(i + 1) == Some(&b' '))?;
    let source = &line[source_start..source_end];
    let rest_start = source_end + 2;
    let rest = &line[rest_start..];
    let r = rest.as_bytes();
    let dash = memchr::memchr_iter(b'-', r)
        .find(|&i| i > 0 && r[i - 1] == b' ' && r.get(i + 1) == Some(&b' '));
    let (level, message) = match dash {
        Some(i) => (&rest[..i - 1], &rest[i + 2..]),
        None => (rest.strip_suffix(" -")?, ""),
    };
    if !LEVELS.contains(&level) {
        return None;
    }
    Some(Airflow2 {
        timestamp,
        source,
        level,
        message,
    })
}

/// Writes one logical record as JSON lines into `out` and the end position of each
/// line into `ends`. `now` is the read time, used when the line has no timestamp.
pub fn encode(
    logical: &Logical,
    meta: &FileMeta,
    now: &str,
    out: &mut Vec<u8>,
    ends: &mut Vec<u32>,
) {
    let text = logical.text.as_str();
    if text.starts_with('{')
        && let Some((timestamp, level, message, fields)) = parse_json_line(text)
    {
        write_parts(
            logical,
            meta,
            timestamp.as_deref().unwrap_or(now),
            level.as_deref(),
            None,
            &message,
            fields.as_ref(),
            out,
            ends,
        );
        return;
    }
    let first_line_end = memchr::memchr(b'\n', text.as_bytes()).unwrap_or(text.len());
    if let Some(a2) = parse_airflow2(&text[..first_line_end]) {
        // The message keeps any continuation lines (a traceback) after the first line.
        let message_start = first_line_end - a2.message.len();
        let message = &text[message_start..];
        write_parts(
            logical,
            meta,
            a2.timestamp,
            Some(a2.level),
            Some(a2.source),
            message,
            None,
            out,
            ends,
        );
        return;
    }
    write_parts(logical, meta, now, None, None, text, None, out, ends);
}

/// An Airflow 3 JSON log line split into timestamp, level, message and the other
/// fields. `None` when the line is not a JSON object, or when its other fields are
/// too large to travel in one record (then the line is shipped as text, in parts).
#[allow(clippy::type_complexity)]
pub(super) fn parse_json_line(
    text: &str,
) -> Option<(
    Option<String>,
    Option<String>,
    String,
    Option<Map<String, Value>>,
)> {
    let mut map = serde_json::from_str::<Map<String, Value>>(text).ok()?;
    let timestamp = take_string(&mut map, "timestamp");
    let level = take_string(&mut map, "level");
    let message = take_string(&mut map, "event")
        .or_else(|| take_string(&mut map, "message"))
        .unwrap_or_default();
    if map.is_empty() {
        return Some((timestamp, level, message, None));
    }
    let size = serde_json::to_vec(&map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > PART_BYTES {
        return None;
    }
    Some((timestamp, level, message, Some(map)))
}

pub(super) fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key)? {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Splits `text` into pieces of at most `max` bytes at character boundaries.
pub fn split_parts(text: &str, max: usize) -> Vec<&str> {
    if text.len() <= max {
        return vec![text];
    }
    let mut parts = Vec::with_capacity(text.len() / max + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = max.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    parts
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write_parts(
    logical: &Logical,
    meta: &FileMeta,
    timestamp: &str,
    level: Option<&str>,
    source: Option<&str>,
    message: &str,
    fields: Option<&Map<String, Value>>,
    out: &mut Vec<u8>,
    ends: &mut Vec<u32>,
) {
    // Nearly every message fits one record: skip the split (and its allocation) then.
    let single = [message];
    let split;
    let parts: &[&str] = if message.len() <= PART_BYTES {
        &single
    } else {
        split = split_parts(message, PART_BYTES);
        &split
    };
    let n = parts.len();
    let mut offset_text = itoa::Buffer::new();
    let offset = offset_text.format(logical.offset);
    for (i, &part) in parts.iter().enumerate() {
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(meta.id_hex.as_bytes());
        out.push(b'-');
        out.extend_from_slice(offset.as_bytes());
        if n > 1 {
            let _ = write!(VecWriter(out), "-p{}", i + 1);
        }
        out.extend_from_slice(b"\",\"timestamp\":");
        write_str(out, timestamp);
        if let Some(level) = level {
            out.extend_from_slice(b",\"level\":");
            write_str(out, level);
        }
        out.extend_from_slice(b",\"message\":");
        write_str(out, part);
        if let Some(source) = source {
            out.extend_from_slice(b",\"source\":");
            write_str(out, source);
        }
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(offset.as_bytes());
        out.extend_from_slice(meta.static_json.as_bytes());
        if n > 1 {
            let _ = write!(VecWriter(out), ",\"part\":{},\"parts\":{}", i + 1, n);
        }
        if let (0, Some(fields)) = (i, fields) {
            out.extend_from_slice(b",\"fields\":");
            serde_json::to_writer(&mut *out, fields).expect("JSON values serialize");
        }
        out.extend_from_slice(b"}\n");
        ends.push(out.len() as u32);
    }
}

/// Writes `s` as a JSON string, exactly as serde_json would.
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("strings serialize");
        return;
    }
    // Nearly every log message has nothing to escape: copy it in one go.
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether JSON needs an escape anywhere in `b` (a control character, `"` or `\`: the
/// bytes serde_json escapes). The fold over fixed 32-byte blocks has no early exit, so
/// the compiler turns it into vector compares; serde_json's byte-by-byte table walk was
/// the largest single cost of encoding a 200-byte line.
pub(super) fn needs_escape(b: &[u8]) -> bool {
    let special = |x: u8| (x < 0x20) | (x == b'"') | (x == b'\\');
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |acc, &x| acc | special(x)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&x| special(x))
}

pub(super) struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// FNV-1a, 64 bits: a small, stable hash for file fingerprints and ids (not security).
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
