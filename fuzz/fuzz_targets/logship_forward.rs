//! Bytes from a FireLens client are untrusted: whatever a connection sends, the
//! forward-protocol decoder returns a frame, asks for more, or refuses, without a panic,
//! a stall or an allocation beyond its limits (libFuzzer's -rss_limit_mb holds the last).
//! Every field of every record it returns is read, as the converter reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logship::input::forward::frame::{Decoder, Limits, to_json};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut decoder = Decoder::default();
    let mut rest = data;
    // Frames back to back, as on a connection.
    while let Ok(Some((frame, used))) = decoder.decode(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        assert!(frame.events.len() <= limits.max_values);
        for event in &frame.events {
            for (_, field) in event.record.fields() {
                let _ = field.text();
                let _ = to_json(field.raw);
            }
        }
        rest = &rest[used..];
    }
});
