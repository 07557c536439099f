//! Forward events in, logship records out: the record of the Docker/containerd fluentd
//! log driver (`log`, `source`, `container_id`, `container_name`) becomes a record with
//! the same envelope as a file's (`id`, `timestamp`, `message`, ...), with the container
//! fields and the ECS fields beside it.
//!
//! * Lines the runtime split (`partial_message`, `partial_id`, `partial_ordinal`,
//!   `partial_last`: Docker cuts lines at 16 KiB) are joined again, up to
//!   [`MAX_LOGICAL_BYTES`] and for at most the multiline timeout after the last part.
//! * Airflow's own output (JSON lines or text) is read as for files, and the lines of a
//!   Python traceback are joined ([`Assembler`]), per container and stream.
//! * An event without `log` (an application's own map, sent with a fluent logger) is
//!   shipped as the JSON of its map, which the encoder reads as a JSON line.
//!
//! The `timestamp` is the event's time, unless the line carries its own (Airflow's).
//! The `id` is stable and unique: a random number drawn at start, the connection's
//! number and the stream's, then the event's position in its stream (`offset`); it is
//! written to the disk buffer with the record, so a replay ships the same id.
//!
//! A frame that asks for an ack ends every join waiting on its connection, so that
//! everything it carried is written, and acknowledged, with it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::frame::{Event, EventTime, Field, Frame, Value, to_json};
use crate::record::{self, Assembler, FileMeta, Logical, MAX_LOGICAL_BYTES};

/// Records of one tag, encoded.
pub type Batch = (Arc<str>, Vec<u8>);

/// The fields of an event that the Docker/containerd fluentd driver writes, read in one
/// pass over the record.
#[derive(Default)]
struct Driver<'a> {
    log: Option<Field<'a>>,
    container_id: &'a str,
    container_name: &'a str,
    source: &'a str,
    partial_message: bool,
    partial_id: &'a str,
    partial_last: bool,
}

impl<'a> Driver<'a> {
    fn of(event: &Event<'a>) -> Self {
        let mut d = Self::default();
        let text = |f: &Field<'a>| f.text().unwrap_or("");
        // A true flag: `"true"` as the drivers send it, or a boolean.
        let flag = |f: &Field<'a>| match f.value {
            Value::Bool(b) => b,
            _ => f.text() == Some("true"),
        };
        for (key, f) in event.record.keyed_fields() {
            match key {
                b"log" => d.log = Some(f),
                b"container_id" => d.container_id = text(&f),
                b"container_name" => d.container_name = text(&f),
                b"source" => d.source = text(&f),
                b"partial_message" => d.partial_message = flag(&f),
                b"partial_id" => d.partial_id = text(&f),
                b"partial_last" => d.partial_last = flag(&f),
                _ => {}
            }
        }
        d
    }
}

/// The event time as RFC 3339 with nanoseconds.
pub fn rfc3339(t: EventTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::new(t.seconds, t.nanos.min(999_999_999));
    humantime::format_rfc3339_nanos(at).to_string()
}

/// [`rfc3339`] for a run of events, most within the same second: the date and time up
/// to the second are formatted once per second, the nanoseconds written into a reused
/// buffer (formatting every time was a visible share of the forward input's CPU).
#[derive(Default)]
struct TimeText {
    seconds: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS.` of `seconds`.
    prefix: String,
    text: String,
}

impl TimeText {
    fn format(&mut self, t: EventTime) -> &str {
        if self.seconds != Some(t.seconds) {
            let full = rfc3339(EventTime {
                seconds: t.seconds,
                nanos: 0,
            });
            // "…:SS.000000000Z": keep through the dot.
            self.prefix.clear();
            self.prefix.push_str(&full[..full.len() - 10]);
            self.seconds = Some(t.seconds);
        }
        self.text.clear();
        self.text.push_str(&self.prefix);
        let nanos = t.nanos.min(999_999_999);
        let mut digits = itoa::Buffer::new();
        let d = digits.format(nanos);
        for _ in d.len()..9 {
            self.text.push('0');
        }
        self.text.push_str(d);
        self.text.push('Z');
        &self.text
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StreamKey {
    tag: Arc<str>,
    container_id: String,
    source: String,
}

struct Partial {
    id: String,
    text: String,
    time: EventTime,
}

struct Stream {
    meta: FileMeta,
    assembler: Assembler,
    partial: Option<Partial>,
    /// Times of the lines the assembler holds, by position.
    times: VecDeque<(u64, EventTime)>,
    /// The next line's position.
    seq: u64,
    /// When the oldest waiting part or line is due to be sent as it is.
    due: Option<Instant>,
}

/// Turns one connection's frames into encoded records.
pub struct Converter {
    /// The id prefix of this connection: the process's random number and the
    /// connection's number.
    id_seed: u64,
    ecs: Arc<Vec<(String, String)>>,
    timeout: Duration,
    /// The streams of this connection, and where each is in `streams`: the stream of
    /// nearly every event is the one before it, found by `last` without hashing its key
    /// (SipHash of the container id was 3 % of the forward input's CPU).
    streams: Vec<(StreamKey, Stream)>,
    index: HashMap<StreamKey, usize>,
    /// Streams opened so far (each stream's id is drawn from its number).
    opened: u64,
    /// The stream of the last event, in `streams`.
    last: Option<usize>,
    time: TimeText,
    logicals: Vec<Logical>,
    /// Bytes of records per event in the last frame, and an eighth more.
    bytes_per_event: usize,
}

impl Converter {
    /// A converter for connection `conn` of the process with the random number `boot`;
    /// every record carries `ecs` (the task's fields); joins wait up to `timeout`.
    pub fn new(boot: u64, conn: u64, ecs: Arc<Vec<(String, String)>>, timeout: Duration) -> Self {
        Self {
            id_seed: record::fnv1a(boot, &conn.to_le_bytes()),
            ecs,
            timeout,
            streams: Vec::new(),
            index: HashMap::new(),
            opened: 0,
            last: None,
            time: TimeText::default(),
            logicals: Vec::new(),
            bytes_per_event: 256,
        }
    }

    /// Converts a frame's events; the records go to `out` (one batch per tag).
    pub fn push(&mut self, frame: &Frame<'_>, tag: &Arc<str>, out: &mut Vec<Batch>) {
        let mut data = Vec::with_capacity(frame.events.len() * self.bytes_per_event);
        let now = Instant::now();
        let mut logicals = std::mem::take(&mut self.logicals);
        let mut clock = std::mem::take(&mut self.time);
        for event in &frame.events {
            self.push_event(tag, event, now, &mut clock, &mut logicals, &mut data);
        }
        self.logicals = logicals;
        self.time = clock;
        if frame.chunk.is_some() {
            // Everything this frame carried is written with it, then acknowledged.
            self.flush_where(&mut data, |_| true, out);
        }
        if !data.is_empty() {
            // The next frame's records are sized from these: a buffer grown by doubling
            // moved half of every frame's records once more.
            let n = frame.events.len().max(1);
            self.bytes_per_event = (data.len() / n + data.len() / n / 8).clamp(64, 64 * 1024);
            out.push((tag.clone(), data));
        }
    }

    fn push_event(
        &mut self,
        tag: &Arc<str>,
        event: &Event<'_>,
        now: Instant,
        clock: &mut TimeText,
        logicals: &mut Vec<Logical>,
        data: &mut Vec<u8>,
    ) {
        let driver = Driver::of(event);
        let Some(log) = driver.log else {
            // An application's own map: its JSON is the line.
            let map: serde_json::Map<String, serde_json::Value> = event
                .record
                .fields()
                .map(|(k, f)| (k.to_string(), to_json(f.raw)))
                .collect();
            let line = serde_json::Value::Object(map).to_string();
            let stream = self.stream(tag, &driver);
            Self::line(stream, &line, event.time, clock, logicals, data);
            return;
        };
        let log = match log.value {
            // Valid UTF-8 nearly always: checked by the fast path, not by the lossy
            // decoder's chunk walk (which cost twice as much).
            Value::Str(b) | Value::Bin(b) => match std::str::from_utf8(b) {
                Ok(t) => std::borrow::Cow::Borrowed(t),
                Err(_) => String::from_utf8_lossy(b),
            },
            _ => std::borrow::Cow::Owned(to_json(log.raw).to_string()),
        };
        let partial = driver.partial_message;
        let last = driver.partial_last;
        let partial_id = driver.partial_id;
        let timeout = self.timeout;
        let stream = self.stream(tag, &driver);
        if let Some(p) = &stream.partial
            && (!partial || p.id != partial_id)
        {
            // A line of another split began, or a whole line came: the waiting parts
            // are all there will be.
            let p = stream.partial.take().expect("checked");
            Self::line(stream, &p.text, p.time, clock, logicals, data);
        }
        if partial {
            let p = stream.partial.get_or_insert_with(|| Partial {
                id: partial_id.to_string(),
                text: String::new(),
                time: event.time,
            });
            p.text.push_str(&log);
            if last || p.text.len() >= MAX_LOGICAL_BYTES {
                let p = stream.partial.take().expect("just set");
                Self::line(stream, &p.text, p.time, clock, logicals, data);
            } else {
                stream.due.get_or_insert(now + timeout);
            }
            return;
        }
        // The driver sends lines without their newline; a logger may keep it.
        let line = log.strip_suffix('\n').unwrap_or(&log);
        Self::line(stream, line, event.time, clock, logicals, data);
        if stream.assembler.has_pending() {
            stream.due.get_or_insert(now + timeout);
        } else {
            stream.due = None;
        }
    }

    fn stream(&mut self, tag: &Arc<str>, driver: &Driver<'_>) -> &mut Stream {
        let (container_id, source) = (driver.container_id, driver.source);
        // Nearly every event is of the stream before it: no key is built for those.
        if let Some(i) = self.last {
            let key = &self.streams[i].0;
            if *key.tag == **tag && key.container_id == container_id && key.source == source {
                return &mut self.streams[i].1;
            }
        }
        let key = StreamKey {
            tag: tag.clone(),
            container_id: container_id.to_string(),
            source: source.to_string(),
        };
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                let stream = self.open(&key, driver.container_name);
                self.index.insert(key.clone(), self.streams.len());
                self.streams.push((key, stream));
                self.streams.len() - 1
            }
        };
        self.last = Some(i);
        &mut self.streams[i].1
    }

    /// A new stream: its id and the fields its records carry.
    fn open(&mut self, key: &StreamKey, container_name: &str) -> Stream {
        let n = self.opened;
        self.opened += 1;
        let mut members: Vec<(&str, &str)> = vec![("tag", &key.tag)];
        if !container_name.is_empty() {
            members.push(("container_name", container_name.trim_start_matches('/')));
        }
        if !key.container_id.is_empty() {
            members.push(("container_id", &key.container_id));
        }
        if !key.source.is_empty() {
            members.push(("stream", &key.source));
        }
        for (k, v) in self.ecs.iter() {
            members.push((k, v));
        }
        let id = record::fnv1a(self.id_seed, &n.to_le_bytes());
        Stream {
            meta: FileMeta::with_members(&key.tag, id, &members),
            assembler: Assembler::default(),
            partial: None,
            times: VecDeque::new(),
            seq: 0,
            due: None,
        }
    }

    /// Feeds one whole line to the stream's assembler and encodes what it lets go.
    fn line(
        stream: &mut Stream,
        line: &str,
        time: EventTime,
        clock: &mut TimeText,
        logicals: &mut Vec<Logical>,
        data: &mut Vec<u8>,
    ) {
        let seq = stream.seq;
        stream.seq += 1;
        stream.times.push_back((seq, time));
        stream.assembler.push(line, seq, seq + 1, logicals);
        Self::encode(stream, clock, logicals, data);
    }

    fn encode(
        stream: &mut Stream,
        clock: &mut TimeText,
        logicals: &mut Vec<Logical>,
        data: &mut Vec<u8>,
    ) {
        let mut ends = Vec::new();
        for l in logicals.drain(..) {
            while stream.times.front().is_some_and(|(s, _)| *s < l.offset) {
                stream.times.pop_front();
            }
            let time = stream.times.front().map_or(
                EventTime {
                    seconds: 0,
                    nanos: 0,
                },
                |t| t.1,
            );
            ends.clear();
            record::encode(&l, &stream.meta, clock.format(time), data, &mut ends);
        }
        if !stream.assembler.has_pending() {
            stream.times.clear();
        }
    }

    /// When the oldest waiting join is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.streams.iter().filter_map(|(_, s)| s.due).min()
    }

    /// Sends what waited past its time as it is.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<Batch>) {
        let mut data = Vec::new();
        self.flush_where(&mut data, |s| s.due.is_some_and(|d| d <= now), out);
        debug_assert!(data.is_empty());
    }

    /// Sends everything waiting (the connection ends, or a frame asks for an ack).
    pub fn flush_all(&mut self, out: &mut Vec<Batch>) {
        let mut data = Vec::new();
        self.flush_where(&mut data, |_| true, out);
        debug_assert!(data.is_empty());
    }

    /// Flushes the streams `pick` selects; records of `data` (the current frame's, of
    /// one tag) go out before them, so order is kept.
    fn flush_where(
        &mut self,
        data: &mut Vec<u8>,
        pick: impl Fn(&Stream) -> bool,
        out: &mut Vec<Batch>,
    ) {
        for (key, stream) in self.streams.iter_mut() {
            if stream.due.is_none() && stream.partial.is_none() && !stream.assembler.has_pending() {
                continue;
            }
            if !pick(stream) {
                continue;
            }
            if !data.is_empty() {
                out.push((key.tag.clone(), std::mem::take(data)));
            }
            let mut records = Vec::new();
            if let Some(p) = stream.partial.take() {
                Self::line(
                    stream,
                    &p.text,
                    p.time,
                    &mut self.time,
                    &mut self.logicals,
                    &mut records,
                );
            }
            stream.assembler.flush(&mut self.logicals);
            Self::encode(stream, &mut self.time, &mut self.logicals, &mut records);
            stream.due = None;
            if !records.is_empty() {
                out.push((key.tag.clone(), records));
            }
        }
        // Streams whose containers went quiet keep only their ids and positions.
        if self.streams.len() > 4096 {
            self.streams.retain(|(_, s)| s.due.is_some());
            self.index = (self.streams.iter().enumerate())
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as J;

    use rmpv::Value as M;

    /// An entry `[EventTime(seconds, 5 ns), {fields}]`, as a client encodes it.
    fn ev(seconds: u64, fields: &[(&str, &str)]) -> M {
        entry(
            seconds,
            fields
                .iter()
                .map(|(k, v)| (M::from(*k), M::from(*v)))
                .collect(),
        )
    }

    fn entry(seconds: u64, record: Vec<(M, M)>) -> M {
        let mut time = (seconds as u32).to_be_bytes().to_vec();
        time.extend(5u32.to_be_bytes());
        M::Array(vec![M::Ext(0, time), M::Map(record)])
    }

    fn docker(log: &str) -> Vec<(&'static str, String)> {
        vec![
            ("container_id", "c0ffee".to_string()),
            ("container_name", "/scheduler".to_string()),
            ("source", "stdout".to_string()),
            ("log", log.to_string()),
        ]
    }

    /// A Forward-mode frame of `events` on the wire.
    fn frame(events: Vec<M>, chunk: Option<&str>) -> Vec<u8> {
        let mut parts = vec![M::from("scheduler-firelens-t1"), M::Array(events)];
        if let Some(c) = chunk {
            parts.push(M::Map(vec![(M::from("chunk"), M::from(c))]));
        }
        let mut wire = Vec::new();
        rmpv::encode::write_value(&mut wire, &M::Array(parts)).unwrap();
        wire
    }

    /// Decodes `wire` as the server does and converts its events.
    fn push(c: &mut Converter, wire: &[u8], tag: &Arc<str>, out: &mut Vec<Batch>) {
        let mut d = super::super::frame::Decoder::default();
        let (f, used) = d
            .decode(wire, &super::super::frame::Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(used, wire.len());
        c.push(&f, tag, out);
    }

    fn records(batches: &[Batch]) -> Vec<J> {
        batches
            .iter()
            .flat_map(|(_, d)| {
                d.split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice(l).unwrap())
                    .collect::<Vec<J>>()
            })
            .collect()
    }

    fn conv() -> Converter {
        Converter::new(
            7,
            1,
            Arc::new(vec![("ecs_cluster".into(), "airflow".into())]),
            Duration::from_secs(1),
        )
    }

    fn event_of(fields: Vec<(&str, String)>, seconds: u64) -> M {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ev(seconds, &pairs)
    }

    #[test]
    fn a_driver_record_becomes_a_logship_record() {
        let mut c = conv();
        let tag: Arc<str> = Arc::from("scheduler-firelens-t1");
        let mut out = Vec::new();
        push(
            &mut c,
            &frame(vec![event_of(docker("hello"), 1_700_000_000)], None),
            &tag,
            &mut out,
        );
        // A line waits (up to the multiline timeout) for a traceback that may follow.
        assert!(records(&out).is_empty());
        assert!(c.next_due().is_some());
        c.flush_all(&mut out);
        let r = records(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["message"], "hello");
        assert_eq!(r[0]["timestamp"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(r[0]["container_name"], "scheduler");
        assert_eq!(r[0]["container_id"], "c0ffee");
        assert_eq!(r[0]["stream"], "stdout");
        assert_eq!(r[0]["tag"], "scheduler-firelens-t1");
        assert_eq!(r[0]["ecs_cluster"], "airflow");
        assert!(r[0]["id"].as_str().unwrap().ends_with("-0"));
    }

    #[test]
    fn split_lines_are_joined_and_ids_stay_unique() {
        let mut c = conv();
        let tag: Arc<str> = Arc::from("scheduler-firelens-t1");
        let mut out = Vec::new();
        let part = |text: &str, ordinal: &str, last: &str| {
            let mut f = docker(text);
            f.push(("partial_message", "true".into()));
            f.push(("partial_id", "p1".into()));
            f.push(("partial_ordinal", ordinal.into()));
            f.push(("partial_last", last.into()));
            event_of(f, 1)
        };
        let a = "a".repeat(16 * 1024);
        let b = "b".repeat(16 * 1024);
        push(
            &mut c,
            &frame(vec![part(&a, "1", "false")], None),
            &tag,
            &mut out,
        );
        assert!(records(&out).is_empty(), "waits for the rest");
        assert!(c.next_due().is_some());
        push(
            &mut c,
            &frame(
                vec![
                    part(&b, "2", "false"),
                    part("c", "3", "true"),
                    event_of(docker("next"), 2),
                ],
                None,
            ),
            &tag,
            &mut out,
        );
        c.flush_all(&mut out);
        let r = records(&out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["message"].as_str().unwrap(), format!("{a}{b}c"));
        assert_eq!(r[1]["message"], "next");
        assert_ne!(r[0]["id"], r[1]["id"]);
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn an_unfinished_split_goes_out_when_due_or_when_a_frame_asks_for_an_ack() {
        let mut c = conv();
        let tag: Arc<str> = Arc::from("scheduler-firelens-t1");
        let mut out = Vec::new();
        let mut f = docker("half");
        f.push(("partial_message", "true".into()));
        f.push(("partial_id", "p9".into()));
        push(
            &mut c,
            &frame(vec![event_of(f.clone(), 1)], None),
            &tag,
            &mut out,
        );
        assert!(records(&out).is_empty());
        c.flush_due(Instant::now() + Duration::from_secs(2), &mut out);
        assert_eq!(records(&out)[0]["message"], "half");
        out.clear();
        push(
            &mut c,
            &frame(vec![event_of(f, 1)], Some("chunk-1")),
            &tag,
            &mut out,
        );
        assert_eq!(
            records(&out)[0]["message"],
            "half",
            "an acked frame holds nothing back"
        );
    }

    #[test]
    fn tracebacks_in_container_output_are_joined() {
        let mut c = conv();
        let tag: Arc<str> = Arc::from("scheduler-firelens-t1");
        let mut out = Vec::new();
        let lines = [
            "[2024-01-15T10:00:00.000+0000] {scheduler_job_runner.py:1} ERROR - boom",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 1, in <module>",
            "ValueError: bad",
            "[2024-01-15T10:00:01.000+0000] {scheduler_job_runner.py:2} INFO - after",
        ];
        let events = lines
            .iter()
            .enumerate()
            .map(|(i, l)| event_of(docker(l), i as u64))
            .collect();
        push(&mut c, &frame(events, None), &tag, &mut out);
        c.flush_all(&mut out);
        let r = records(&out);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[0]["message"]
                .as_str()
                .unwrap()
                .contains("ValueError: bad")
        );
        assert_eq!(r[0]["level"], "ERROR");
        assert_eq!(
            r[0]["timestamp"], "2024-01-15T10:00:00.000+0000",
            "the line's own time"
        );
        assert_eq!(r[1]["message"], "after");
    }

    #[test]
    fn an_application_map_is_shipped_as_json() {
        let mut c = conv();
        let tag: Arc<str> = Arc::from("app.events");
        let mut out = Vec::new();
        let e = entry(
            1,
            vec![
                (M::from("message"), M::from("user logged in")),
                (M::from("user"), M::from("ada")),
                (M::from("n"), M::from(3)),
            ],
        );
        push(&mut c, &frame(vec![e], None), &tag, &mut out);
        let r = records(&out);
        assert_eq!(r[0]["message"], "user logged in");
        assert_eq!(r[0]["fields"]["user"], "ada");
        assert_eq!(r[0]["fields"]["n"], 3);
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn the_cached_time_text_is_rfc3339() {
        let mut t = TimeText::default();
        for (seconds, nanos) in [
            (1_700_000_000, 5),
            (1_700_000_000, 999_999_999),
            (1_700_000_001, 0),
            (0, 120),
        ] {
            let e = EventTime { seconds, nanos };
            assert_eq!(t.format(e), rfc3339(e));
        }
    }
}
