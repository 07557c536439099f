//! Bytes from a forward-protocol connection in, frames of events out: the four modes of
//! the Fluentd Forward Protocol Specification v1 (Message, Forward, PackedForward and
//! CompressedPackedForward), both time forms (an integer, or the EventTime extension:
//! type 0, 4-byte big-endian seconds and nanoseconds), and the `size`, `chunk` and
//! `compressed` options.
//!
//! Bounded before anything is allocated: a frame is first walked marker by marker
//! ([`measure`]) against [`Limits`] (its bytes, its nesting, its number of values), and
//! only a frame that passes is decoded. Decoding builds no tree of values: an event's
//! record is a slice of the frame's bytes, checked (a map with UTF-8 string keys) and
//! read field by field where it is converted ([`Record::fields`]); a Value tree per
//! event was the forward input's largest cost (allocations, 15 % of its CPU). A declared length beyond the
//! limit (a 4 GiB `size` or string) fails at once, without waiting for the bytes; so does
//! nesting deeper than the limit. Gzip is inflated up to its own limit. The caller keeps
//! at most `max_frame_bytes` of a connection's input buffered: [`Decoder::decode`] says whether
//! more bytes are needed, or how many it used.

use std::io::Read;

use rmp::Marker;

pub use super::value::{Field, Reader, Record, Value, to_json};

/// Bounds on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one frame on the wire.
    pub max_frame_bytes: usize,
    /// Bytes of a CompressedPackedForward frame's entries once inflated.
    pub max_inflated_bytes: usize,
    /// Values (of any kind, containers included) in one frame or its packed entries.
    pub max_values: usize,
    /// Nesting of arrays and maps.
    pub max_depth: usize,
}

impl Default for Limits {
    /// Fluent Bit's forward output sends chunks of up to 2 MiB; the Docker fluentd driver
    /// one event per frame. 262,144 values decode to about 12 MiB at most.
    fn default() -> Self {
        Self {
            max_frame_bytes: 8 << 20,
            max_inflated_bytes: 16 << 20,
            max_values: 262_144,
            max_depth: 16,
        }
    }
}

/// An event's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventTime {
    /// Seconds since the Unix epoch.
    pub seconds: u64,
    /// Nanoseconds within the second (0 for the integer form).
    pub nanos: u32,
}

/// One event: its time and its record, which borrows the frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    /// When.
    pub time: EventTime,
    /// The record's fields, in the sender's order.
    pub record: Record<'a>,
}

/// One decoded frame; it borrows the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    /// The tag.
    pub tag: &'a str,
    /// The events, in order.
    pub events: Vec<Event<'a>>,
    /// The `chunk` option: the sender wants `{"ack": chunk}` once the events are durable.
    pub chunk: Option<&'a str>,
    /// The `size` option, as sent.
    pub size: Option<u64>,
}

/// Why a frame cannot be decoded; the connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More than a limit allows.
    #[error("frame over a limit: {0}")]
    TooLarge(String),
    /// Not a forward-protocol frame.
    #[error("not a forward-protocol frame: {0}")]
    Invalid(String),
}

/// The counted size of one MessagePack object at the start of `buf`: `Ok(Some(bytes))`,
/// or `Ok(None)` when `buf` ends before it does.
pub fn measure(buf: &[u8], limits: &Limits) -> Result<Option<usize>, FrameError> {
    Ok(walk(buf, limits)?.map(|(bytes, _)| bytes))
}

/// [`measure`], with the number of values the object holds.
fn walk(buf: &[u8], limits: &Limits) -> Result<Option<(usize, usize)>, FrameError> {
    Walker::default().resume(buf, limits)
}

/// [`measure`] that remembers how far it got: a frame arrives in many reads, and walking
/// it again from its start after each one was the forward input's largest own cost
/// (perf: 6 % of its CPU with 640 KB frames). Fed the same buffer, grown, it continues
/// at the first value it could not finish.
#[derive(Debug, Clone)]
pub struct Walker {
    pos: usize,
    /// Values still to read at each open level (the bottom is the object itself).
    pending: Vec<u64>,
    values: usize,
}

impl Default for Walker {
    fn default() -> Self {
        Self {
            pos: 0,
            pending: vec![1],
            values: 0,
        }
    }
}

impl Walker {
    /// Continues over `buf` (the bytes walked before, and more): `Ok(Some((bytes,
    /// values)))` once the object is whole, `Ok(None)` when more bytes are needed.
    pub fn resume(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(usize, usize)>, FrameError> {
        while let Some(&left) = self.pending.last() {
            if left == 0 {
                self.pending.pop();
                continue;
            }
            let start = self.pos;
            match self.step(buf, limits)? {
                true => {}
                false => {
                    // Not enough bytes for this value: start it again next time.
                    self.pos = start;
                    return Ok(None);
                }
            }
        }
        Ok(Some((self.pos, self.values)))
    }

    /// Walks one value; `false` (and nothing changed but `pos`) when `buf` ends in it.
    fn step(&mut self, buf: &[u8], limits: &Limits) -> Result<bool, FrameError> {
        let values = self.values + 1;
        if values > limits.max_values {
            return Err(FrameError::TooLarge(format!(
                "more than {} values",
                limits.max_values
            )));
        }
        let mut pos = self.pos;
        let Some(&byte) = buf.get(pos) else {
            return Ok(false);
        };
        pos += 1;
        let len = |pos: &mut usize, width: usize| length(buf, pos, width);
        let (skip, children): (u64, u64) = match Marker::from_u8(byte) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (u64::from(n), 0),
            Marker::Str8 | Marker::Bin8 => match len(&mut pos, 1)? {
                Some(n) => (n, 0),
                None => return Ok(false),
            },
            Marker::Str16 | Marker::Bin16 => match len(&mut pos, 2)? {
                Some(n) => (n, 0),
                None => return Ok(false),
            },
            Marker::Str32 | Marker::Bin32 => match len(&mut pos, 4)? {
                Some(n) => (n, 0),
                None => return Ok(false),
            },
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => match len(&mut pos, 1)? {
                Some(n) => (n + 1, 0),
                None => return Ok(false),
            },
            Marker::Ext16 => match len(&mut pos, 2)? {
                Some(n) => (n + 1, 0),
                None => return Ok(false),
            },
            Marker::Ext32 => match len(&mut pos, 4)? {
                Some(n) => (n + 1, 0),
                None => return Ok(false),
            },
            Marker::FixArray(n) => (0, u64::from(n)),
            Marker::FixMap(n) => (0, 2 * u64::from(n)),
            Marker::Array16 => match len(&mut pos, 2)? {
                Some(n) => (0, n),
                None => return Ok(false),
            },
            Marker::Array32 => match len(&mut pos, 4)? {
                Some(n) => (0, n),
                None => return Ok(false),
            },
            Marker::Map16 => match len(&mut pos, 2)? {
                Some(n) => (0, 2 * n),
                None => return Ok(false),
            },
            Marker::Map32 => match len(&mut pos, 4)? {
                Some(n) => (0, 2 * n),
                None => return Ok(false),
            },
            Marker::Reserved => {
                return Err(FrameError::Invalid("the reserved byte 0xc1".into()));
            }
        };
        // A declared length is checked against the limit before its bytes arrive.
        let end = (pos as u64).saturating_add(skip);
        if end > limits.max_frame_bytes as u64 {
            return Err(FrameError::TooLarge(format!(
                "a value of {skip} bytes in a frame of at most {}",
                limits.max_frame_bytes
            )));
        }
        if children > 0 {
            if children > (limits.max_values - values) as u64 {
                return Err(FrameError::TooLarge(format!(
                    "a container of {children} values (at most {} per frame)",
                    limits.max_values
                )));
            }
            if self.pending.len() > limits.max_depth {
                return Err(FrameError::TooLarge(format!(
                    "nested deeper than {}",
                    limits.max_depth
                )));
            }
        }
        if end > buf.len() as u64 {
            return Ok(false);
        }
        // The value is whole: count it.
        *self.pending.last_mut().expect("a level is open") -= 1;
        self.values = values;
        self.pos = end as usize;
        if children > 0 {
            self.pending.push(children);
        }
        Ok(true)
    }
}

/// A big-endian length of `width` bytes at `pos`, moving `pos` past it.
fn length(buf: &[u8], pos: &mut usize, width: usize) -> Result<Option<u64>, FrameError> {
    let Some(bytes) = buf.get(*pos..*pos + width) else {
        return Ok(None);
    };
    *pos += width;
    Ok(Some(
        bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)),
    ))
}

/// Decodes frames, keeping what a connection reuses from one frame to the next: the walk
/// of the frame being received (see [`Walker`]) and the buffer that CompressedPackedForward
/// entries are inflated into.
#[derive(Debug, Default)]
pub struct Decoder {
    walker: Walker,
    inflated: Vec<u8>,
}

impl Decoder {
    /// Decodes the frame at the start of `buf` (the bytes walked before, and more):
    /// `Ok(None)` when more bytes are needed, otherwise the frame and the bytes it took.
    /// The frame borrows `buf` (and the decoder, for inflated entries).
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a [u8],
        limits: &Limits,
    ) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
        let walked = self.walker.resume(buf, limits);
        let Some(len) = walked?.map(|(bytes, _)| bytes) else {
            if buf.len() >= limits.max_frame_bytes {
                return Err(FrameError::TooLarge(format!(
                    "no complete frame in {} bytes",
                    limits.max_frame_bytes
                )));
            }
            return Ok(None);
        };
        self.walker = Walker::default();
        Ok(Some((frame(&buf[..len], &mut self.inflated, limits)?, len)))
    }

    /// Hands back the memory of a large inflated frame once its events are converted.
    pub fn trim(&mut self) {
        if self.inflated.capacity() > 1 << 20 {
            self.inflated = Vec::new();
        }
    }
}

/// Decodes the frame at the start of `buf` with a fresh [`Decoder`] (for tests, which
/// compare frames decoded from different buffers): `Ok(None)` when more bytes are
/// needed, otherwise the frame's summary and the bytes it took.
#[cfg(test)]
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Summary, usize)>, FrameError> {
    let mut decoder = Decoder::default();
    Ok(decoder
        .decode(buf, limits)?
        .map(|(f, used)| (Summary::of(&f), used)))
}

/// What a decoded frame held, owned: for tests.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The tag.
    pub tag: String,
    /// Each event's time and its record's fields (values as JSON text).
    pub events: Vec<(EventTime, Vec<(String, String)>)>,
    /// The `chunk` option.
    pub chunk: Option<String>,
    /// The `size` option.
    pub size: Option<u64>,
}

#[cfg(test)]
impl Summary {
    /// The summary of `frame`.
    pub fn of(frame: &Frame<'_>) -> Self {
        Self {
            tag: frame.tag.to_string(),
            events: frame
                .events
                .iter()
                .map(|e| {
                    let fields = e
                        .record
                        .fields()
                        .map(|(k, f)| (k.to_string(), to_json(f.raw).to_string()))
                        .collect();
                    (e.time, fields)
                })
                .collect(),
            chunk: frame.chunk.map(str::to_string),
            size: frame.size,
        }
    }
}

pub(super) fn invalid(what: impl Into<String>) -> FrameError {
    FrameError::Invalid(what.into())
}

pub(super) fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, FrameError> {
    std::str::from_utf8(bytes).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn frame<'a>(
    bytes: &'a [u8],
    inflated: &'a mut Vec<u8>,
    limits: &Limits,
) -> Result<Frame<'a>, FrameError> {
    let mut r = Reader::new(bytes);
    let Value::Array(parts) = r.value()? else {
        return Err(invalid("a frame is an array"));
    };
    if !(2..=4).contains(&parts) {
        return Err(invalid(format!("a frame has 2 to 4 parts, not {parts}")));
    }
    let tag = match r.value()? {
        Value::Str(s) => utf8(s, "the tag")?,
        _ => return Err(invalid("the tag is not a string")),
    };
    // What follows the tag and the events: the option, if any.
    let options = |r: &mut Reader<'a>, left: u32| -> Result<Options<'a>, FrameError> {
        match left {
            0 => Ok(Options::default()),
            1 => Options::read(r),
            _ => Err(invalid("too many parts")),
        }
    };
    let second = r.value()?;
    let (events, options) = match second {
        // Message mode: [tag, time, record, option?].
        Value::Uint(_) | Value::Int(_) | Value::Ext(..) => {
            if parts < 3 {
                return Err(invalid("a Message frame has no record"));
            }
            let record = Record::read(&mut r)?;
            let options = options(&mut r, parts - 3)?;
            (vec![event(second, &mut Reader::new(&[]), record)?], options)
        }
        // Forward mode: [tag, [[time, record], ...], option?].
        Value::Array(n) => {
            let mut events = Vec::with_capacity(n as usize);
            for _ in 0..n {
                events.push(entry(&mut r)?);
            }
            (events, options(&mut r, parts - 2)?)
        }
        // PackedForward (and CompressedPackedForward): [tag, bin|str of entries, option?].
        Value::Bin(packed) | Value::Str(packed) => {
            let options = options(&mut r, parts - 2)?;
            let entries: &'a [u8] = match options.compressed {
                None => packed,
                Some(c) if c == b"gzip" => {
                    inflate(packed, inflated, limits)?;
                    inflated
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "compression {:?} is not gzip",
                        String::from_utf8_lossy(other)
                    )));
                }
            };
            (packed_entries(entries, limits)?, options)
        }
        _ => return Err(invalid("the second part is neither a time nor entries")),
    };
    Ok(Frame {
        tag,
        events,
        chunk: options.chunk,
        size: options.size,
    })
}

/// The options a frame may end with.
#[derive(Default)]
struct Options<'a> {
    chunk: Option<&'a str>,
    size: Option<u64>,
    compressed: Option<&'a [u8]>,
}

impl<'a> Options<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, FrameError> {
        let Value::Map(pairs) = r.value()? else {
            return Err(invalid("the option is not a map"));
        };
        let mut o = Self::default();
        for _ in 0..pairs {
            let key = r.field()?;
            let value = r.field()?;
            match (key.value, value.value) {
                (Value::Str(b"chunk"), Value::Str(c)) => o.chunk = Some(utf8(c, "the chunk")?),
                (Value::Str(b"chunk"), _) => {
                    return Err(invalid("the chunk option is not a string"));
                }
                (Value::Str(b"size"), Value::Uint(n)) => o.size = Some(n),
                (Value::Str(b"compressed"), Value::Str(c)) => o.compressed = Some(c),
                (Value::Str(b"compressed"), _) => {
                    return Err(invalid("the compressed option is not a string"));
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// An entry `[time, record]` of Forward and PackedForward modes.
fn entry<'a>(r: &mut Reader<'a>) -> Result<Event<'a>, FrameError> {
    if r.value()? != Value::Array(2) {
        return Err(invalid("an entry is an array [time, record]"));
    }
    let time = r.value()?;
    // The time's items, if it is an array, are read by `event`.
    let mut items = r.clone();
    if let Value::Array(_) = time {
        r.skip_items(time)?;
    }
    let record = Record::read(r)?;
    event(time, &mut items, record)
}

/// An event from its time (`items` reads what follows it, if it is an array) and record.
fn event<'a>(
    time: Value<'a>,
    items: &mut Reader<'a>,
    record: Record<'a>,
) -> Result<Event<'a>, FrameError> {
    // Forward protocol v1.5: `Metadata ::= integer | EventTime | [EventTime, Hash*]`;
    // Fluent Bit 5.0.5 and later send the last form by default (fluent/fluentd#5411). The
    // metadata maps are Fluent Bit's internal annotations and are not shipped.
    let time = match time {
        Value::Array(n) if n > 0 => {
            let first = items.field()?;
            for _ in 1..n {
                if !matches!(items.field()?.value, Value::Map(_)) {
                    return Err(invalid("the time is neither an integer nor an EventTime"));
                }
            }
            first.value
        }
        other => other,
    };
    let time = match time {
        Value::Uint(seconds) => EventTime { seconds, nanos: 0 },
        Value::Int(n) => EventTime {
            seconds: u64::try_from(n).map_err(|_| invalid("a negative event time"))?,
            nanos: 0,
        },
        // EventTime: extension type 0, seconds and nanoseconds as two big-endian u32.
        Value::Ext(0, bytes) if bytes.len() == 8 => {
            let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
            let nanos = word(4);
            if nanos >= 1_000_000_000 {
                return Err(invalid("EventTime nanoseconds beyond a second"));
            }
            EventTime {
                seconds: u64::from(word(0)),
                nanos,
            }
        }
        _ => return Err(invalid("the time is neither an integer nor an EventTime")),
    };
    Ok(Event { time, record })
}

/// The events of a PackedForward stream: `[time, record]` arrays back to back, within one
/// shared budget of values.
fn packed_entries<'a>(mut bytes: &'a [u8], limits: &Limits) -> Result<Vec<Event<'a>>, FrameError> {
    let mut events = Vec::new();
    let mut budget = *limits;
    while !bytes.is_empty() {
        let (len, values) = walk(bytes, &budget)?
            .ok_or_else(|| invalid("the packed entries end inside an entry"))?;
        // Each entry takes its values out of the frame's budget.
        budget.max_values = budget.max_values.saturating_sub(values);
        let mut r = Reader::new(&bytes[..len]);
        events.push(entry(&mut r)?);
        if r.position() != len {
            return Err(invalid("an entry has more than [time, record]"));
        }
        bytes = &bytes[len..];
    }
    Ok(events)
}

/// Inflates `bytes` into `out` (cleared first), up to the limit.
fn inflate(bytes: &[u8], out: &mut Vec<u8>, limits: &Limits) -> Result<(), FrameError> {
    out.clear();
    // MultiGzDecoder: Fluent Bit and Fluentd may send several gzip members back to back.
    flate2::read::MultiGzDecoder::new(bytes)
        .take(limits.max_inflated_bytes as u64 + 1)
        .read_to_end(out)
        .map_err(|e| invalid(format!("gzip: {e}")))?;
    if out.len() > limits.max_inflated_bytes {
        return Err(FrameError::TooLarge(format!(
            "entries inflate beyond {} bytes",
            limits.max_inflated_bytes
        )));
    }
    Ok(())
}
