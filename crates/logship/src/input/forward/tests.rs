//! The frame decoder against frames built as the clients build them (field layouts from
//! the Forward Protocol Specification v1, Fluent Bit's forward output and the Docker
//! fluentd driver), hostile input, and properties over arbitrary bytes.

use std::io::Write;

use proptest::prelude::*;
use rmpv::Value;

use super::frame::{Decoder, EventTime, FrameError, Limits, Summary, decode, measure};

fn bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn s(text: &str) -> Value {
    Value::from(text)
}

fn record(message: &str) -> Value {
    // The Docker/containerd fluentd driver's record.
    Value::Map(vec![
        (s("container_id"), s("0123abcd")),
        (s("container_name"), s("/ecs-airflow-scheduler")),
        (s("source"), s("stdout")),
        (s("log"), s(message)),
    ])
}

fn event_time(seconds: u32, nanos: u32) -> Value {
    let mut b = seconds.to_be_bytes().to_vec();
    b.extend_from_slice(&nanos.to_be_bytes());
    Value::Ext(0, b)
}

fn options(pairs: &[(&str, Value)]) -> Value {
    Value::Map(pairs.iter().map(|(k, v)| (s(k), v.clone())).collect())
}

fn one(buf: &[u8]) -> Summary {
    let (frame, used) = decode(buf, &Limits::default())
        .unwrap()
        .expect("a whole frame");
    assert_eq!(used, buf.len());
    frame
}

fn messages(f: &Summary) -> Vec<String> {
    f.events
        .iter()
        .map(|(_, fields)| {
            fields
                .iter()
                .find(|(k, _)| k == "log")
                .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn message_mode_with_both_time_forms() {
    let f = one(&bytes(&Value::Array(vec![
        s("airflow-scheduler"),
        Value::from(1_764_720_000u64),
        record("first"),
    ])));
    assert_eq!(f.tag, "airflow-scheduler");
    assert_eq!(
        f.events[0].0,
        EventTime {
            seconds: 1_764_720_000,
            nanos: 0
        }
    );
    assert_eq!(messages(&f), ["first"]);
    assert_eq!((f.chunk, f.size), (None, None));

    let f = one(&bytes(&Value::Array(vec![
        s("t"),
        event_time(1_764_720_000, 123_456_789),
        record("second"),
        options(&[("chunk", s("p8n9gmxTQVC8/nh2wlKKeQ=="))]),
    ])));
    assert_eq!(
        f.events[0].0,
        EventTime {
            seconds: 1_764_720_000,
            nanos: 123_456_789
        }
    );
    assert_eq!(f.chunk.as_deref(), Some("p8n9gmxTQVC8/nh2wlKKeQ=="));
}

#[test]
fn forward_mode_keeps_the_order_and_the_options() {
    let entries = (0..5)
        .map(|i| Value::Array(vec![Value::from(1_000 + i), record(&format!("line {i}"))]))
        .collect();
    let f = one(&bytes(&Value::Array(vec![
        s("t"),
        Value::Array(entries),
        options(&[("size", Value::from(5)), ("chunk", s("c1"))]),
    ])));
    assert_eq!(
        messages(&f),
        (0..5).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    assert_eq!((f.size, f.chunk.as_deref()), (Some(5), Some("c1")));
}

fn packed(n: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    for i in 0..n {
        stream.extend(bytes(&Value::Array(vec![
            event_time(1_764_720_000 + i as u32, 0),
            record(&format!("packed {i}")),
        ])));
    }
    stream
}

#[test]
fn packed_forward_as_bin_and_as_str() {
    let stream = packed(100);
    let as_bin = bytes(&Value::Array(vec![
        s("t"),
        Value::Binary(stream.clone()),
        options(&[("size", Value::from(100))]),
    ]));
    // The same entries in a str32 (old clients send raw bytes as a string): fixarray of
    // 2, the tag, 0xdb and a big-endian length.
    let mut as_str = vec![0x92, 0xa1, b't', 0xdb];
    as_str.extend((stream.len() as u32).to_be_bytes());
    as_str.extend(&stream);
    for wire in [as_bin, as_str] {
        let f = one(&wire);
        assert_eq!(f.events.len(), 100);
        assert_eq!(messages(&f)[99], "packed 99");
    }
}

#[test]
fn compressed_packed_forward_with_several_gzip_members() {
    let stream = packed(50);
    // Two gzip members back to back, as a sender appending to a chunk writes them.
    let mut gz = Vec::new();
    // Split on an entry boundary: where the 25th entry ends.
    let cut = {
        let mut at = 0;
        for _ in 0..25 {
            at += measure(&stream[at..], &Limits::default()).unwrap().unwrap();
        }
        at
    };
    for part in [&stream[..cut], &stream[cut..]] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).unwrap();
        gz.extend(e.finish().unwrap());
    }
    let f = one(&bytes(&Value::Array(vec![
        s("t"),
        Value::Binary(gz),
        options(&[("compressed", s("gzip")), ("chunk", s("z"))]),
    ])));
    assert_eq!(f.events.len(), 50);
    assert_eq!(messages(&f)[49], "packed 49");
    let err = decode(
        &bytes(&Value::Array(vec![
            s("t"),
            Value::Binary(stream),
            options(&[("compressed", s("zstd"))]),
        ])),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, FrameError::Invalid(_)), "{err}");
}

#[test]
fn frames_back_to_back_and_split_anywhere() {
    let a = bytes(&Value::Array(vec![s("a"), Value::from(1), record("one")]));
    let b = bytes(&Value::Array(vec![s("b"), Value::from(2), record("two")]));
    let both = [a.clone(), b].concat();
    let (first, used) = decode(&both, &Limits::default()).unwrap().unwrap();
    assert_eq!((first.tag.as_str(), used), ("a", a.len()));
    let (second, _) = decode(&both[used..], &Limits::default()).unwrap().unwrap();
    assert_eq!(second.tag, "b");
    for cut in 0..a.len() {
        assert_eq!(
            decode(&a[..cut], &Limits::default()),
            Ok(None),
            "cut at {cut}"
        );
    }
}

#[test]
fn hostile_sizes_fail_at_once_and_allocate_nothing_big() {
    let limits = Limits::default();
    // A 4 GiB string: str32 with length 0xffffffff, and no bytes behind it.
    let mut huge = vec![0x93, 0xa1, b't', 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        decode(&huge, &limits),
        Err(FrameError::TooLarge(_))
    ));
    // An array32 of 4 billion values.
    huge = vec![0x92, 0xa1, b't', 0xdd, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        decode(&huge, &limits),
        Err(FrameError::TooLarge(_))
    ));
    // A map32 of 2 billion pairs.
    huge = vec![0xdf, 0x7f, 0xff, 0xff, 0xff];
    assert!(matches!(
        decode(&huge, &limits),
        Err(FrameError::TooLarge(_))
    ));
    // Nesting deeper than the limit: 100 one-element arrays.
    let deep = [vec![0x91; 100], vec![0xc0]].concat();
    assert!(matches!(
        decode(&deep, &limits),
        Err(FrameError::TooLarge(_))
    ));
    // The reserved byte.
    assert!(matches!(
        decode(&[0x92, 0xc1], &limits),
        Err(FrameError::Invalid(_))
    ));
    // An incomplete frame as long as the limit allows is given up on.
    let small = Limits {
        max_frame_bytes: 64,
        ..limits
    };
    let open = [vec![0x92, 0xa1, b't', 0xdc, 0x00, 0xff], vec![0x01; 58]].concat();
    assert!(matches!(
        decode(&open, &small),
        Err(FrameError::TooLarge(_))
    ));
    // A gzip bomb: 32 MiB of zeros inflate beyond the 16 MiB limit.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 32 << 20]).unwrap();
    let bomb = bytes(&Value::Array(vec![
        s("t"),
        Value::Binary(e.finish().unwrap()),
        options(&[("compressed", s("gzip"))]),
    ]));
    assert!(matches!(
        decode(&bomb, &limits),
        Err(FrameError::TooLarge(_))
    ));
}

#[test]
fn malformed_frames_are_invalid() {
    let limits = Limits::default();
    for v in [
        s("not an array"),
        Value::Array(vec![s("t")]),
        Value::Array(vec![Value::from(1), Value::from(1), record("x")]),
        Value::Array(vec![s("t"), Value::from(1)]),
        Value::Array(vec![s("t"), Value::from(-5), record("x")]),
        Value::Array(vec![s("t"), Value::from(1), s("not a map")]),
        Value::Array(vec![
            s("t"),
            Value::from(1),
            Value::Map(vec![(Value::from(1), s("x"))]),
        ]),
        Value::Array(vec![s("t"), event_time(1, 1_000_000_000), record("x")]),
        Value::Array(vec![s("t"), Value::Ext(0, vec![0; 4]), record("x")]),
        Value::Array(vec![s("t"), Value::Array(vec![Value::from(1)])]),
        Value::Array(vec![s("t"), Value::from(1), record("x"), s("option")]),
        Value::Array(vec![s("t"), Value::Binary(vec![0x92, 0x01])]),
        Value::Array(vec![
            s("t"),
            Value::from(1),
            record("x"),
            options(&[("chunk", Value::from(7))]),
        ]),
    ] {
        let err = decode(&bytes(&v), &limits);
        assert!(matches!(err, Err(FrameError::Invalid(_))), "{v:?}: {err:?}");
    }
}

proptest! {
    /// Whatever a connection sends, decoding neither panics nor claims more bytes than it
    /// was given, and never reports a frame in a prefix of itself.
    #[test]
    fn arbitrary_bytes_are_decoded_or_refused(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits { max_frame_bytes: 256, max_values: 64, ..Limits::default() };
        if let Ok(Some((_, used))) = decode(&input, &limits) {
            prop_assert!(used <= input.len());
        }
    }

    /// A valid frame decodes to its events whichever mode carried them, and every
    /// prefix of it asks for more bytes.
    #[test]
    fn every_mode_carries_the_same_events(lines in proptest::collection::vec("[ -~]{0,40}", 1..20), mode in 0usize..3) {
        let entries: Vec<Value> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Value::Array(vec![Value::from(i as u64), record(l)]))
            .collect();
        let frame = match mode {
            0 => Value::Array(vec![s("t"), Value::Array(entries)]),
            1 => Value::Array(vec![s("t"), Value::Binary(entries.iter().flat_map(bytes).collect())]),
            _ => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&entries.iter().flat_map(bytes).collect::<Vec<_>>()).unwrap();
                Value::Array(vec![s("t"), Value::Binary(e.finish().unwrap()), options(&[("compressed", s("gzip"))])])
            }
        };
        let wire = bytes(&frame);
        let f = one(&wire);
        prop_assert_eq!(messages(&f), lines);
        for cut in [0, wire.len() / 2, wire.len() - 1] {
            prop_assert_eq!(decode(&wire[..cut], &Limits::default()), Ok(None));
        }
    }
}

#[test]
fn metadata_wrapped_times_of_forward_protocol_v1_5() {
    // Fluent Bit 5.0.5+: each entry is [[EventTime, {metadata}], record].
    let entry = Value::Array(vec![
        Value::Array(vec![event_time(1_700_000_000, 7), Value::Map(vec![])]),
        record("with metadata"),
    ]);
    let mut packed = Vec::new();
    rmpv::encode::write_value(&mut packed, &entry).unwrap();
    let f = one(&bytes(&Value::Array(vec![s("app"), Value::Binary(packed)])));
    assert_eq!(messages(&f), ["with metadata"]);
    assert_eq!(
        f.events[0].0,
        EventTime {
            seconds: 1_700_000_000,
            nanos: 7
        }
    );
    // Not a time: an array whose tail is not maps.
    let bad = Value::Array(vec![
        s("app"),
        Value::Array(vec![Value::Array(vec![
            Value::Array(vec![event_time(1, 0), s("x")]),
            record("no"),
        ])]),
    ]);
    assert!(decode(&bytes(&bad), &Limits::default()).is_err());
}

proptest! {
    /// A frame fed in pieces to one walker (as a connection reads it) decodes exactly
    /// as when it is whole, and never before its last byte.
    #[test]
    fn a_walk_resumed_over_pieces_is_the_whole_walk(cuts in proptest::collection::vec(1usize..200, 1..40)) {
        let events: Vec<Value> = (0..30)
            .map(|i| Value::Array(vec![event_time(1_700_000_000, i), record(&format!("line {i} {}", "x".repeat(i as usize * 7)))]))
            .collect();
        let bytes = bytes(&Value::Array(vec![s("tag"), Value::Array(events), options(&[("chunk", s("c"))])]));
        let whole = one(&bytes);
        let mut decoder = Decoder::default();
        let mut end = 0;
        let mut got = None;
        for cut in cuts.iter().cycle() {
            end = (end + cut).min(bytes.len());
            match decoder.decode(&bytes[..end], &Limits::default()).unwrap() {
                Some((f, used)) => {
                    prop_assert_eq!(end, bytes.len());
                    prop_assert_eq!(used, bytes.len());
                    got = Some(Summary::of(&f));
                    break;
                }
                None => prop_assert!(end < bytes.len()),
            }
        }
        prop_assert_eq!(got.unwrap(), whole);
    }
}

/// Any MessagePack value, nested a few levels.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        ".{0,40}".prop_map(|t: String| Value::from(t)),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Binary),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

/// The JSON of a value as rmpv reads it: the reference for the decoder's own.
fn reference_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil | Value::Ext(..) => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => i
            .as_u64()
            .map(J::from)
            .or_else(|| i.as_i64().map(J::from))
            .unwrap(),
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.as_str().unwrap().to_string()),
        Value::Binary(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Value::Array(a) => J::Array(a.iter().map(reference_json).collect()),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let key = match reference_json(k) {
                    J::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, reference_json(v));
            }
            J::Object(out)
        }
    }
}

proptest! {
    /// The decoder's reader takes exactly a value's encoding, whatever it nests, and
    /// reads the same value rmpv does; a record's fields come back in order, whole.
    #[test]
    fn the_reader_reads_what_rmpv_wrote(v in any_value(), values in proptest::collection::vec(any_value(), 0..6)) {
        let wire = bytes(&v);
        let mut r = super::frame::Reader::new(&wire);
        let field = r.field().unwrap();
        prop_assert_eq!(field.raw.len(), wire.len());
        prop_assert_eq!(super::frame::to_json(field.raw), reference_json(&v));

        let fields: Vec<(String, Value)> = values.into_iter().enumerate().map(|(i, v)| (format!("k{i}"), v)).collect();
        let record = Value::Map(fields.iter().map(|(k, v)| (s(k), v.clone())).collect());
        let frame = bytes(&Value::Array(vec![s("t"), Value::from(1), record]));
        let mut decoder = Decoder::default();
        let (f, _) = decoder.decode(&frame, &Limits::default()).unwrap().unwrap();
        let got: Vec<(&str, serde_json::Value)> = f.events[0].record.fields().map(|(k, f)| (k, super::frame::to_json(f.raw))).collect();
        let want: Vec<(&str, serde_json::Value)> = fields.iter().map(|(k, v)| (k.as_str(), reference_json(v))).collect();
        prop_assert_eq!(got, want);
    }
}
