//! Bytes from a FireLens client are untrusted: whatever a connection sends, the
//! forward-protocol decoder returns a frame, asks for more, or refuses, without a panic,
//! a stall or an allocation beyond its limits (libFuzzer's -rss_limit_mb holds the last).
#![no_main]

use libfuzzer_sys::fuzz_target;
use logship::input::forward::frame::{Limits, decode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rest = data;
    // Frames back to back, as on a connection.
    while let Ok(Some((frame, used))) = decode(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        assert!(frame.events.len() <= limits.max_values);
        rest = &rest[used..];
    }
});
