//! Load for the forward-protocol benchmark (bench/logship/run-forward.sh): N connections
//! to logship's unix socket, each sending Forward-mode frames of Docker fluentd driver
//! records (`container_id`, `container_name`, `source`, `log` of 200 bytes) with a
//! `chunk` option, waiting for each ack before the next frame, as Fluent Bit's forward
//! output does with `Require_ack_response`. Frames are encoded once and sent again and
//! again, so the generator costs next to nothing.
//!
//!     forward_load SOCKET CONNECTIONS EVENTS_PER_CONNECTION [EVENTS_PER_FRAME]
//!
//! Prints the frame bytes sent in all as `bytes=N`.

use std::io::Write;
use std::os::unix::net::UnixStream;

use rmpv::Value;

fn frame(conn: usize, events: usize) -> Vec<u8> {
    let id = format!("{conn:02}{}", "0".repeat(62));
    let entries = (0..events)
        .map(|i| {
            // A 200-byte Airflow 2 text line.
            let mut log = format!("[2026-11-22T06:00:00.123+0000] {{scheduler_job_runner.py:1165}} INFO - output {i:08} ");
            while log.len() < 200 {
                log.push(char::from(b'a' + (log.len() % 26) as u8));
            }
            Value::Array(vec![
                Value::Ext(0, [1_763_791_200u32.to_be_bytes(), (i as u32).to_be_bytes()].concat()),
                Value::Map(vec![
                    (Value::from("container_id"), Value::from(id.as_str())),
                    (Value::from("container_name"), Value::from(format!("/airflow-{conn:02}").as_str())),
                    (Value::from("source"), Value::from("stdout")),
                    (Value::from("log"), Value::from(log.as_str())),
                ]),
            ])
        })
        .collect();
    let mut out = Vec::new();
    rmpv::encode::write_value(
        &mut out,
        &Value::Array(vec![
            Value::from(format!("airflow-{conn:02}-firelens-bench").as_str()),
            Value::Array(entries),
            Value::Map(vec![(Value::from("chunk"), Value::from("c"))]),
        ]),
    )
    .expect("encoding into a Vec");
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = args.get(1).expect("SOCKET").clone();
    let connections: usize = args.get(2).expect("CONNECTIONS").parse().expect("a number");
    let events: usize = args
        .get(3)
        .expect("EVENTS_PER_CONNECTION")
        .parse()
        .expect("a number");
    let per_frame: usize = args.get(4).map_or(2000, |a| a.parse().expect("a number"));
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let full = frame(c, per_frame);
                let mut s = UnixStream::connect(&socket).expect("connect");
                let mut sent = 0usize;
                let mut bytes = 0u64;
                while sent < events {
                    let n = per_frame.min(events - sent);
                    let f = if n == per_frame {
                        full.clone()
                    } else {
                        frame(c, n)
                    };
                    s.write_all(&f).expect("send");
                    bytes += f.len() as u64;
                    let ack = rmpv::decode::read_value(&mut s).expect("an ack");
                    assert!(ack.as_map().is_some(), "{ack:?}");
                    sent += n;
                }
                bytes
            })
        })
        .collect();
    let bytes: u64 = threads.into_iter().map(|t| t.join().expect("sender")).sum();
    println!("bytes={bytes}");
}
