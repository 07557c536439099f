//! Unit and property tests of the record rooms together: framing and encoding are
//! checked end to end (lines in, JSON out).

use super::encode::*;
use super::frame::*;
use super::meta::*;
use super::*;
use airside_core::ecs::TaskMetadata;
use proptest::prelude::*;
use serde_json::Value;

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
    let text = include_str!("../../tests/fixtures/airflow3_subprocess_traceback.log");
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
    let text =
        "Traceback (most recent call last):\n  File \"x\", line 1\nKeyError: 'a'\n\nnext line\n";
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
