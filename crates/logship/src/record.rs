//! From log lines to records: Airflow path fields, line formats, tracebacks, encoding.
//!
//! The data flows one way: the tailer cuts a file into lines, [`Assembler`] joins
//! the lines of one Python traceback (including 3.11+ caret lines and chained
//! "During handling…"/"The above exception…" blocks) into one [`Logical`]
//! record, and [`encode`] writes each logical record as one or more JSON lines
//! (a record longer than [`PART_BYTES`] is split into numbered parts).

use std::fmt::Write as _;

use airside_core::ecs::TaskMetadata;
use serde_json::{Map, Value};

/// Longest message text in one JSON record. JSON escaping can grow text up to six
/// times (`\u0000`), so 128 KiB of text stays below Firehose's 1,000 KiB record limit.
pub const PART_BYTES: usize = 128 * 1024;

/// Longest logical record the assembler builds before it sends what it has.
pub const MAX_LOGICAL_BYTES: usize = 1024 * 1024;

/// Fields taken from Airflow's task log layout
/// `dag_id=…/run_id=…/task_id=…/[map_index=…/]attempt=N.log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AirflowFields {
    /// The DAG id.
    pub dag_id: Option<String>,
    /// The DAG run id.
    pub run_id: Option<String>,
    /// The task id.
    pub task_id: Option<String>,
    /// The map index of a mapped task.
    pub map_index: Option<i64>,
    /// The try number (`attempt=N`).
    pub try_number: Option<u32>,
}

impl AirflowFields {
    /// Reads the fields from a log file path; components that are absent stay `None`.
    pub fn from_path(path: &str) -> Self {
        let mut f = Self::default();
        for part in path.split('/') {
            if let Some(v) = part.strip_prefix("dag_id=") {
                f.dag_id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("run_id=") {
                f.run_id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("task_id=") {
                f.task_id = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("map_index=") {
                f.map_index = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("attempt=") {
                f.try_number = v.strip_suffix(".log").unwrap_or(v).parse().ok();
            }
        }
        f
    }
}

/// What every record from one file carries besides its own content.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// The file's path when it was found.
    pub path: String,
    /// Fields from the path.
    pub airflow: AirflowFields,
    /// The file's identity as hex (part of every record id).
    pub id_hex: String,
    /// The constant JSON members (path, Airflow and ECS fields), pre-rendered.
    static_json: String,
}

impl FileMeta {
    /// Builds the metadata of one file.
    pub fn new(path: &str, id: u64, ecs: Option<&TaskMetadata>) -> Self {
        let airflow = AirflowFields::from_path(path);
        let mut s = String::new();
        push_member(&mut s, "path", path);
        if let Some(v) = &airflow.dag_id {
            push_member(&mut s, "dag_id", v);
        }
        if let Some(v) = &airflow.run_id {
            push_member(&mut s, "run_id", v);
        }
        if let Some(v) = &airflow.task_id {
            push_member(&mut s, "task_id", v);
        }
        if let Some(v) = airflow.map_index {
            let _ = write!(s, ",\"map_index\":{v}");
        }
        if let Some(v) = airflow.try_number {
            let _ = write!(s, ",\"try_number\":{v}");
        }
        if let Some(ecs) = ecs {
            for (k, v) in [
                ("ecs_cluster", &ecs.cluster),
                ("ecs_task_arn", &ecs.task_arn),
                ("ecs_family", &ecs.family),
                ("ecs_container", &ecs.container),
            ] {
                if !v.is_empty() {
                    push_member(&mut s, k, v);
                }
            }
        }
        Self {
            path: path.to_string(),
            airflow,
            id_hex: format!("{id:016x}"),
            static_json: s,
        }
    }
}

fn push_member(s: &mut String, key: &str, value: &str) {
    s.push(',');
    s.push('"');
    s.push_str(key);
    s.push_str("\":");
    s.push_str(&serde_json::to_string(value).expect("strings serialize"));
}

/// One logical record: one line, or the lines of one traceback, with the byte range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logical {
    /// The text, lines joined by `\n`, without the final newline.
    pub text: String,
    /// Offset of the first byte in the file.
    pub offset: u64,
    /// Offset just past the last byte (including its newline).
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tb {
    /// A plain or Airflow 2 line: a traceback may follow.
    Open,
    /// Inside `Traceback (most recent call last):` frames.
    Frames,
    /// Inside a 3.11+ exception group traceback: every line is indented, there is
    /// no final unindented exception line.
    GroupFrames,
    /// Saw the exception line that ends a traceback; a chain may follow.
    AfterException,
    /// A blank line after the exception line, held until we know if a chain follows.
    AfterExceptionBlank,
    /// Saw "During handling…" / "The above exception…": a traceback follows.
    Chain,
}

#[derive(Debug)]
struct Pending {
    text: String,
    offset: u64,
    end: u64,
    state: Tb,
    /// A blank line after an exception line: `(offset, end, its text)` (its text is
    /// the raw JSON record in JSON mode).
    held_blank: Option<(u64, u64, String)>,
    /// Set when the traceback arrives as Airflow 3 JSON records, one per line.
    json: Option<JsonTraceback>,
}

/// A traceback that arrives one JSON record per line (Airflow 3 logs a subprocess's
/// stderr, or a hook's output, a line at a time): the first record's fields, its
/// logger, and the lines joined so far.
#[derive(Debug)]
struct JsonTraceback {
    first: Map<String, Value>,
    /// Which member holds the text: `event` (structlog) or `message`.
    key: &'static str,
    logger: Option<Value>,
    message: String,
    /// Whether a later record joined (otherwise the first is sent exactly as written).
    joined: bool,
}

/// What a line does to a traceback being assembled.
enum Step {
    /// It belongs to it.
    Take,
    /// A blank line that belongs to it only if a chain marker follows.
    HoldBlank,
    /// It starts something else.
    Stop,
}

/// The traceback grammar, shared by text lines and the lines carried in JSON records.
fn step(state: &mut Tb, line: &str) -> Step {
    match *state {
        Tb::Open => {
            if is_tb_start(line) {
                *state = tb_state(line);
                Step::Take
            } else {
                Step::Stop
            }
        }
        Tb::Frames => {
            if starts_indented(line) || is_tb_start(line) {
                Step::Take
            } else if !line.is_empty() && !is_record_start(line) {
                *state = Tb::AfterException;
                Step::Take
            } else {
                Step::Stop
            }
        }
        Tb::GroupFrames | Tb::AfterException => {
            if line.is_empty() {
                *state = Tb::AfterExceptionBlank;
                Step::HoldBlank
            } else if starts_indented(line) {
                Step::Take
            } else {
                Step::Stop
            }
        }
        Tb::AfterExceptionBlank => {
            if is_chain_marker(line) {
                *state = Tb::Chain;
                Step::Take
            } else {
                Step::Stop
            }
        }
        Tb::Chain => {
            if line.is_empty() {
                Step::Take
            } else if is_tb_start(line) {
                *state = tb_state(line);
                Step::Take
            } else {
                Step::Stop
            }
        }
    }
}

/// A JSON log record as the traceback joiner reads it.
struct JsonLine {
    map: Map<String, Value>,
    /// The member holding the text: `event` or `message`.
    key: &'static str,
    text: String,
    logger: Option<Value>,
}

/// The text of a JSON log record and the member it is in, with the logger: `None`
/// when the line is not a JSON object with a string `event` or `message`.
fn json_text(line: &str) -> Option<JsonLine> {
    let map = serde_json::from_str::<Map<String, Value>>(line).ok()?;
    let key = if map.get("event").is_some_and(Value::is_string) {
        "event"
    } else if map.get("message").is_some_and(Value::is_string) {
        "message"
    } else {
        return None;
    };
    let text = map[key].as_str().unwrap_or_default().to_string();
    let logger = map.get("logger").cloned();
    Some(JsonLine {
        map,
        key,
        text,
        logger,
    })
}

/// Joins the lines of Python tracebacks into one logical record. Feed it lines in
/// file order; it emits records in file order, covering every byte exactly once.
///
/// Text lines (Airflow 2) join into one text; a traceback sent as one JSON record per
/// line (Airflow 3) joins into one JSON record: the first record's fields, and the
/// lines' texts joined by newlines as its message. Only records of the same logger
/// join: a line of another logger ends the traceback.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: Option<Pending>,
}

fn is_tb_start(line: &str) -> bool {
    line.starts_with("Traceback (most recent call last):")
        || line
            .trim_start()
            .starts_with("+ Exception Group Traceback (most recent call last):")
}

fn tb_state(line: &str) -> Tb {
    if line.starts_with("Traceback") {
        Tb::Frames
    } else {
        Tb::GroupFrames
    }
}

fn is_chain_marker(line: &str) -> bool {
    line.starts_with("During handling of the above exception, another exception occurred:")
        || line.starts_with("The above exception was the direct cause of the following exception:")
}

fn starts_indented(line: &str) -> bool {
    line.starts_with(' ') || line.starts_with('\t')
}

fn is_record_start(line: &str) -> bool {
    line.starts_with('{') || parse_airflow2(line).is_some()
}

impl Assembler {
    /// Whether a record is waiting for more lines.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Feeds one line (without its newline) that spans `offset..end` in the file.
    pub fn push(&mut self, line: &str, offset: u64, end: u64, out: &mut Vec<Logical>) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(p) = &mut self.pending {
            if p.json.is_some() {
                if Self::push_json(p, line, offset, end) {
                    return;
                }
            } else if p.text.len() + line.len() <= MAX_LOGICAL_BYTES {
                match step(&mut p.state, line) {
                    Step::Take => {
                        if p.held_blank.take().is_some() {
                            p.text.push('\n');
                        }
                        p.text.push('\n');
                        p.text.push_str(line);
                        p.end = end;
                        return;
                    }
                    Step::HoldBlank => {
                        p.held_blank = Some((offset, end, String::new()));
                        return;
                    }
                    Step::Stop => {}
                }
            }
            self.flush(out);
        }
        if line.starts_with('{') {
            // Most JSON records are not a traceback's first line: only those that
            // mention one are parsed here (encode parses each record anyway).
            if memchr::memmem::find(line.as_bytes(), b"(most recent call last):").is_some()
                && let Some(JsonLine {
                    map: first,
                    key,
                    text,
                    logger,
                }) = json_text(line)
                && is_tb_start(&text)
            {
                // The record may hold the whole traceback already: its state is where
                // all of its lines leave the grammar.
                let mut state = Tb::Open;
                for l in text.split('\n') {
                    if matches!(step(&mut state, l), Step::Stop) {
                        break;
                    }
                }
                self.pending = Some(Pending {
                    text: line.to_string(),
                    offset,
                    end,
                    state,
                    held_blank: None,
                    json: Some(JsonTraceback {
                        first,
                        key,
                        logger,
                        message: text,
                        joined: false,
                    }),
                });
                return;
            }
            out.push(Logical {
                text: line.to_string(),
                offset,
                end,
            });
            return;
        }
        if line.is_empty() {
            out.push(Logical {
                text: String::new(),
                offset,
                end,
            });
            return;
        }
        let state = if is_tb_start(line) {
            tb_state(line)
        } else {
            Tb::Open
        };
        self.pending = Some(Pending {
            text: line.to_string(),
            offset,
            end,
            state,
            held_blank: None,
            json: None,
        });
    }

    /// Offers `line` to a traceback arriving as JSON records; returns whether it joined.
    fn push_json(p: &mut Pending, line: &str, offset: u64, end: u64) -> bool {
        let Some(tb) = &mut p.json else { return false };
        let Some(JsonLine { text, logger, .. }) = json_text(line) else {
            return false;
        };
        if logger != tb.logger || tb.message.len() + text.len() > MAX_LOGICAL_BYTES {
            return false;
        }
        if text.is_empty() {
            return match step(&mut p.state, "") {
                Step::HoldBlank => {
                    p.held_blank = Some((offset, end, line.to_string()));
                    true
                }
                Step::Take => {
                    Self::join(p, "", end);
                    true
                }
                Step::Stop => false,
            };
        }
        // Every line of the record must belong to the traceback, or none joins.
        let mut state = p.state;
        for l in text.split('\n') {
            if !matches!(step(&mut state, l), Step::Take) {
                return false;
            }
        }
        p.state = state;
        Self::join(p, &text, end);
        true
    }

    fn join(p: &mut Pending, text: &str, end: u64) {
        let Some(tb) = &mut p.json else { return };
        if p.held_blank.take().is_some() {
            tb.message.push('\n');
        }
        tb.message.push('\n');
        tb.message.push_str(text);
        tb.joined = true;
        p.end = end;
    }

    /// Emits the waiting record (and a held blank line), if any.
    pub fn flush(&mut self, out: &mut Vec<Logical>) {
        if let Some(p) = self.pending.take() {
            let text = match p.json {
                // A traceback of a single record stays exactly as written.
                Some(tb) if tb.joined => {
                    let mut first = tb.first;
                    first.insert(tb.key.to_string(), Value::String(tb.message));
                    Value::Object(first).to_string()
                }
                _ => p.text,
            };
            out.push(Logical {
                text,
                offset: p.offset,
                end: p.end,
            });
            if let Some((offset, end, text)) = p.held_blank {
                out.push(Logical { text, offset, end });
            }
        }
    }
}

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

const LEVELS: &[&str] = &[
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
fn parse_json_line(
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

fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
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
fn write_parts(
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
fn write_str(out: &mut Vec<u8>, s: &str) {
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
fn needs_escape(b: &[u8]) -> bool {
    let special = |x: u8| (x < 0x20) | (x == b'"') | (x == b'\\');
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |acc, &x| acc | special(x)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&x| special(x))
}

struct VecWriter<'a>(&'a mut Vec<u8>);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assemble(text: &str) -> Vec<Logical> {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        let mut offset = 0u64;
        for line in text.split_inclusive('\n') {
            let end = offset + line.len() as u64;
            a.push(line.trim_end_matches('\n'), offset, end, &mut out);
            offset = end;
        }
        a.flush(&mut out);
        out
    }

    /// The message of each record `encode` writes for `recs`, and its `fields.logger`.
    fn messages(recs: &[Logical]) -> Vec<(String, Value)> {
        let meta = FileMeta::new("/l/dag_id=d/run_id=r/task_id=t/attempt=1.log", 7, None);
        recs.iter()
            .map(|r| {
                let (mut out, mut ends) = (Vec::new(), Vec::new());
                encode(r, &meta, "NOW", &mut out, &mut ends);
                assert_eq!(ends.len(), 1);
                let v: Value = serde_json::from_slice(&out).unwrap();
                (
                    v["message"].as_str().unwrap().to_string(),
                    v["fields"]["logger"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn airflow3_json_tracebacks_join_per_logger() {
        let text = include_str!("../tests/fixtures/airflow3_subprocess_traceback.log");
        let recs = assemble(text);
        let got = messages(&recs);
        let hook = "airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook";
        let summary: Vec<(&str, &str)> = got
            .iter()
            .map(|(m, l)| (m.lines().next().unwrap_or(""), l.as_str().unwrap()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "Running command: ['/usr/bin/bash', '-c', 'python /opt/airflow/dags/scripts/export.py']",
                    hook
                ),
                ("Output:", hook),
                ("Traceback (most recent call last):", hook),
                ("Command exited with return code 1", hook),
                ("Task failed with exception", "task"),
                ("Traceback (most recent call last):", "task.stderr"),
                (
                    "Marking task as FAILED. dag_id=etl_orders, task_id=export",
                    "task"
                ),
                ("    raise AirflowException(msg)", "task.stderr"),
                (
                    "airflow.exceptions.AirflowException: Bash command failed.",
                    "task.stderr"
                ),
                ("Task instance in failure state", "task.stdout"),
            ]
        );
        // The chained traceback is one record of 14 lines, ending with the last exception.
        assert_eq!(got[2].0.lines().count(), 14);
        assert!(
            got[2]
                .0
                .ends_with("RuntimeError: export of orders_clean failed — Zeitüberschreitung")
        );
        assert!(
            got[2]
                .0
                .contains("\n\nDuring handling of the above exception")
        );
        // Nothing lost or reordered: the messages are every record's event, in order.
        let events: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let joined: Vec<String> = got.iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(joined.join("\n"), events.join("\n"));
        // Every byte once, in order.
        let mut offset = 0;
        for r in &recs {
            assert_eq!(r.offset, offset);
            offset = r.end;
        }
        assert_eq!(offset, text.len() as u64);
        // The joined record keeps the first record's fields (its timestamp and level).
        let meta = FileMeta::new("/x.log", 1, None);
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        encode(&recs[2], &meta, "NOW", &mut out, &mut ends);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-11-21T00:10:03.000Z");
    }

    #[test]
    fn a_json_record_holding_a_whole_traceback_stays_as_written() {
        let whole = r#"{"event":"Traceback (most recent call last):\n  File \"a.py\", line 1\nValueError: x","logger":"task"}"#;
        let next = r#"{"event":"Marking task as FAILED","logger":"task"}"#;
        let recs = assemble(&format!("{whole}\n{next}\n"));
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0].text, whole);
        assert_eq!(recs[1].text, next);
    }

    #[test]
    fn airflow_fields_from_layout() {
        let f = AirflowFields::from_path(
            "/opt/airflow/logs/dag_id=etl/run_id=manual__2024-01-01T00:00:00+00:00/task_id=load/map_index=3/attempt=2.log",
        );
        assert_eq!(f.dag_id.as_deref(), Some("etl"));
        assert_eq!(
            f.run_id.as_deref(),
            Some("manual__2024-01-01T00:00:00+00:00")
        );
        assert_eq!(f.task_id.as_deref(), Some("load"));
        assert_eq!(f.map_index, Some(3));
        assert_eq!(f.try_number, Some(2));
        let g = AirflowFields::from_path("/var/log/app.log");
        assert_eq!(g, AirflowFields::default());
    }

    #[test]
    fn airflow2_lines_parse() {
        let a = parse_airflow2(
            "[2024-01-15T10:00:00.123+0000] {taskinstance.py:1165} INFO - Dependencies all met",
        )
        .unwrap();
        assert_eq!(a.timestamp, "2024-01-15T10:00:00.123+0000");
        assert_eq!(a.source, "taskinstance.py:1165");
        assert_eq!(a.level, "INFO");
        assert_eq!(a.message, "Dependencies all met");
        assert!(parse_airflow2("[not a date] {x.py:1} INFO - y").is_none());
        assert!(parse_airflow2("plain text").is_none());
    }

    const CHAINED: &str = "\
[2024-01-15T10:00:01.000+0000] {taskinstance.py:2698} ERROR - Task failed with exception
Traceback (most recent call last):
  File \"/opt/airflow/dags/etl.py\", line 12, in load
    total = rows / count
            ~~~~~^~~~~~~
ZeroDivisionError: division by zero

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/opt/airflow/dags/etl.py\", line 14, in load
    raise ValueError(\"no rows\") from None
ValueError: no rows

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File \"/opt/airflow/dags/etl.py\", line 20, in run
    load()
RuntimeError: load failed
[2024-01-15T10:00:02.000+0000] {taskinstance.py:1206} INFO - Marking task as FAILED.
";

    #[test]
    fn chained_traceback_is_one_record() {
        let recs = assemble(CHAINED);
        assert_eq!(recs.len(), 2, "{recs:#?}");
        assert!(recs[0].text.ends_with("RuntimeError: load failed"));
        assert!(recs[0].text.contains("~~~~~^~~~~~~"));
        assert!(recs[0].text.contains("During handling"));
        assert!(recs[1].text.contains("Marking task as FAILED"));
        assert_eq!(recs[0].offset, 0);
        assert_eq!(recs[0].end, recs[1].offset);
        assert_eq!(recs[1].end, CHAINED.len() as u64);
    }

    #[test]
    fn blank_line_after_traceback_without_chain_is_its_own_record() {
        let text = "Traceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'a'\n\nnext line\n";
        let recs = assemble(text);
        let texts: Vec<_> = recs.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "Traceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'a'",
                "",
                "next line"
            ]
        );
    }

    #[test]
    fn exception_group_stays_together() {
        let text = "boom\n  + Exception Group Traceback (most recent call last):\n  |   File \"x\", line 1, in <module>\n  | ExceptionGroup: eg (1 sub-exception)\n  +-+---------------- 1 ----------------\n    | ValueError: 1\n    +------------------------------------\nafter\n";
        let recs = assemble(text);
        assert_eq!(recs.len(), 2, "{recs:#?}");
        assert_eq!(recs[1].text, "after");
    }

    #[test]
    fn encodes_airflow3_json_and_airflow2_text() {
        let meta = FileMeta::new(
            "/logs/dag_id=d/run_id=r/task_id=t/attempt=1.log",
            0xabc,
            Some(&TaskMetadata {
                cluster: "c".into(),
                task_arn: "arn:t".into(),
                family: "f".into(),
                container: "logship".into(),
                ..Default::default()
            }),
        );
        let mut out = Vec::new();
        let mut ends = Vec::new();
        let l = Logical {
            text: r#"{"timestamp":"2025-01-01T00:00:00Z","level":"info","event":"héllo","logger":"task","chan":"stdout"}"#.into(),
            offset: 10,
            end: 100,
        };
        encode(&l, &meta, "NOW", &mut out, &mut ends);
        let v: Value = serde_json::from_slice(&out[..ends[0] as usize]).unwrap();
        assert_eq!(v["id"], "0000000000000abc-10");
        assert_eq!(v["message"], "héllo");
        assert_eq!(v["level"], "info");
        assert_eq!(v["timestamp"], "2025-01-01T00:00:00Z");
        assert_eq!(v["fields"]["logger"], "task");
        assert_eq!(v["dag_id"], "d");
        assert_eq!(v["try_number"], 1);
        assert_eq!(v["ecs_container"], "logship");

        let recs = assemble(CHAINED);
        out.clear();
        ends.clear();
        encode(&recs[0], &meta, "NOW", &mut out, &mut ends);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["source"], "taskinstance.py:2698");
        assert_eq!(v["timestamp"], "2024-01-15T10:00:01.000+0000");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("Task failed with exception\nTraceback")
        );
    }

    #[test]
    fn long_lines_split_into_numbered_parts() {
        let meta = FileMeta::new("/x.log", 1, None);
        let text = "é".repeat(PART_BYTES); // 2 bytes each: two parts
        let l = Logical {
            text: text.clone(),
            offset: 0,
            end: text.len() as u64 + 1,
        };
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        encode(&l, &meta, "NOW", &mut out, &mut ends);
        assert_eq!(ends.len(), 2);
        let mut start = 0;
        let mut joined = String::new();
        for (i, end) in ends.iter().enumerate() {
            let v: Value = serde_json::from_slice(&out[start..*end as usize]).unwrap();
            assert_eq!(v["part"], i as u64 + 1);
            assert_eq!(v["parts"], 2);
            joined.push_str(v["message"].as_str().unwrap());
            start = *end as usize;
        }
        assert_eq!(joined, text);
    }

    /// The plain definition of the Airflow 2 shape that [`parse_airflow2`] must match.
    fn parse_airflow2_plain(line: &str) -> Option<Airflow2<'_>> {
        let rest = line.strip_prefix('[')?;
        let (timestamp, rest) = rest.split_once("] {")?;
        let b = timestamp.as_bytes();
        if b.len() < 10 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
            return None;
        }
        let (source, rest) = rest.split_once("} ")?;
        let (level, message) = match rest.split_once(" - ") {
            Some((l, m)) => (l, m),
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

    proptest! {
        #[test]
        fn airflow2_parser_agrees_with_the_plain_definition(
            line in prop_oneof![
                "\\[[0-9]{4}-[0-9T:.+\\]{} -]{0,30}\\] \\{[a-z.:\\}{ -]{0,20}\\} (INFO|ERROR|WARN|X)?( -| - [a-z -]{0,20})?",
                "\\[2024-[\\]{} a-z-]{0,40}",
                "(?s).{0,60}",
            ]
        ) {
            prop_assert_eq!(parse_airflow2(&line), parse_airflow2_plain(&line));
        }

        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(
            s in prop_oneof!["(?s).{0,200}", "[a-z\"\\\\\\x00-\\x1f\\x7f]{0,80}"],
            cut in 0usize..64,
        ) {
            // Also strings whose special byte sits on either side of a 32-byte block edge.
            let padded = format!("{}{s}", "a".repeat(cut));
            for text in [s.as_str(), padded.as_str()] {
                let mut ours = Vec::new();
                write_str(&mut ours, text);
                prop_assert_eq!(ours, serde_json::to_vec(text).unwrap());
            }
        }

        #[test]
        fn assembler_covers_every_byte_once(lines in proptest::collection::vec(
            prop_oneof![
                Just("Traceback (most recent call last):".to_string()),
                Just("  File \"x.py\", line 1".to_string()),
                Just("    ~~^~~".to_string()),
                Just("ValueError: x".to_string()),
                Just(String::new()),
                Just("During handling of the above exception, another exception occurred:".to_string()),
                Just("[2024-01-01T00:00:00+0000] {a.py:1} INFO - hi".to_string()),
                Just("{\"event\":\"x\"}".to_string()),
                "\\PC{0,40}",
            ], 0..40)) {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let recs = assemble(&text);
            let mut offset = 0;
            for r in &recs {
                prop_assert_eq!(r.offset, offset);
                prop_assert!(r.end > r.offset);
                offset = r.end;
            }
            prop_assert_eq!(offset, text.len() as u64);
            let joined: String = recs.iter().map(|r| format!("{}\n", r.text)).collect();
            prop_assert_eq!(joined, text);
        }

        #[test]
        fn json_tracebacks_lose_and_reorder_nothing(lines in proptest::collection::vec(
            (
                prop_oneof![
                    Just("Traceback (most recent call last):".to_string()),
                    Just("  File \"x.py\", line 1".to_string()),
                    Just("ValueError: x".to_string()),
                    Just(String::new()),
                    Just("During handling of the above exception, another exception occurred:".to_string()),
                    "\\PC{0,20}",
                ],
                prop_oneof![Just("task"), Just("task.stderr"), Just("hook")],
            ),
            0..40,
        )) {
            let text: String = lines
                .iter()
                .map(|(e, l)| format!("{}\n", serde_json::json!({"event": e, "logger": l})))
                .collect();
            let recs = assemble(&text);
            let mut offset = 0;
            for r in &recs {
                prop_assert_eq!(r.offset, offset);
                offset = r.end;
            }
            prop_assert_eq!(offset, text.len() as u64);
            let got = messages(&recs);
            let events: Vec<&str> = lines.iter().map(|(e, _)| e.as_str()).collect();
            let joined: Vec<&str> = got.iter().map(|(m, _)| m.as_str()).collect();
            prop_assert_eq!(joined.join("\n"), events.join("\n"));
            // A joined record holds lines of one logger only.
            let mut i = 0;
            for (m, logger) in &got {
                for _ in 0..m.split('\n').count() {
                    prop_assert_eq!(logger.as_str().unwrap(), lines[i].1);
                    i += 1;
                }
            }
        }

        #[test]
        fn encoded_records_are_json_within_limits(text in "\\PC{0,300}", offset in 0u64..1_000_000) {
            let meta = FileMeta::new("/l/dag_id=a/run_id=b/task_id=c/attempt=1.log", 9, None);
            let l = Logical { text: text.clone(), offset, end: offset + 1 };
            let (mut out, mut ends) = (Vec::new(), Vec::new());
            encode(&l, &meta, "NOW", &mut out, &mut ends);
            let mut start = 0;
            for end in ends {
                let slice = &out[start..end as usize];
                prop_assert!(slice.len() <= 1_000 * 1024);
                prop_assert_eq!(*slice.last().unwrap(), b'\n');
                let v: Value = serde_json::from_slice(slice).unwrap();
                prop_assert_eq!(v["offset"].as_u64(), Some(offset));
                prop_assert_eq!(v["dag_id"].as_str(), Some("a"));
                start = end as usize;
            }
        }

        #[test]
        fn split_parts_reassembles(text in "\\PC{0,200}", max in 4usize..50) {
            let parts = split_parts(&text, max);
            prop_assert!(parts.iter().all(|p| p.len() <= max));
            prop_assert_eq!(parts.concat(), text);
        }
    }
}
