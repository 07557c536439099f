//! Framing: lines into logical records. [`Assembler`] joins the lines of one Python
//! traceback (3.11+ caret lines and chained blocks included) into one [`Logical`]
//! record, in Airflow 2 text and Airflow 3 JSON logs alike.

use serde_json::{Map, Value};

use super::encode::parse_airflow2;
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tb {
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
pub(super) struct Pending {
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
pub(super) struct JsonTraceback {
    first: Map<String, Value>,
    /// Which member holds the text: `event` (structlog) or `message`.
    key: &'static str,
    logger: Option<Value>,
    message: String,
    /// Whether a later record joined (otherwise the first is sent exactly as written).
    joined: bool,
}

/// What a line does to a traceback being assembled.
pub(super) enum Step {
    /// It belongs to it.
    Take,
    /// A blank line that belongs to it only if a chain marker follows.
    HoldBlank,
    /// It starts something else.
    Stop,
}

/// The traceback grammar, shared by text lines and the lines carried in JSON records.
pub(super) fn step(state: &mut Tb, line: &str) -> Step {
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
pub(super) struct JsonLine {
    map: Map<String, Value>,
    /// The member holding the text: `event` or `message`.
    key: &'static str,
    text: String,
    logger: Option<Value>,
}

/// The text of a JSON log record and the member it is in, with the logger: `None`
/// when the line is not a JSON object with a string `event` or `message`.
pub(super) fn json_text(line: &str) -> Option<JsonLine> {
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

pub(super) fn is_tb_start(line: &str) -> bool {
    line.starts_with("Traceback (most recent call last):")
        || line
            .trim_start()
            .starts_with("+ Exception Group Traceback (most recent call last):")
}

pub(super) fn tb_state(line: &str) -> Tb {
    if line.starts_with("Traceback") {
        Tb::Frames
    } else {
        Tb::GroupFrames
    }
}

pub(super) fn is_chain_marker(line: &str) -> bool {
    line.starts_with("During handling of the above exception, another exception occurred:")
        || line.starts_with("The above exception was the direct cause of the following exception:")
}

pub(super) fn starts_indented(line: &str) -> bool {
    line.starts_with(' ') || line.starts_with('\t')
}

pub(super) fn is_record_start(line: &str) -> bool {
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
