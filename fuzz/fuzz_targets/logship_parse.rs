//! Fuzzes logship's line parsers: arbitrary bytes are cut into lines, joined into
//! tracebacks (text, and Airflow 3 JSON records line by line) and encoded. Every byte
//! must be covered exactly once, in order, and every encoded record must be valid JSON
//! within Firehose's record limit. The same bytes as an S3 key template are checked
//! without panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logship::record::{Assembler, FileMeta, Logical, encode, parse_airflow2};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = logship::output::s3::check_key_template(&text);
    let meta = FileMeta::new("/l/dag_id=d/run_id=r/task_id=t/map_index=1/attempt=2.log", 7, None);
    let mut asm = Assembler::default();
    let mut logicals: Vec<Logical> = Vec::new();
    let mut offset = 0u64;
    for line in text.split_inclusive('\n') {
        let end = offset + line.len() as u64;
        let _ = parse_airflow2(line);
        asm.push(line.trim_end_matches('\n'), offset, end, &mut logicals);
        offset = end;
    }
    asm.flush(&mut logicals);
    let mut expect = 0;
    let (mut out, mut ends) = (Vec::new(), Vec::new());
    for l in &logicals {
        assert_eq!(l.offset, expect);
        expect = l.end;
        encode(l, &meta, "2026-01-01T00:00:00Z", &mut out, &mut ends);
    }
    assert_eq!(expect, text.len() as u64);
    let mut start = 0;
    for end in ends {
        let rec = &out[start..end as usize];
        assert!(rec.len() <= 1000 * 1024);
        let v: serde_json::Value = serde_json::from_slice(rec).expect("valid JSON");
        assert!(v["id"].is_string());
        start = end as usize;
    }
});
