//! A StatsD load generator for bench/metricship: sends Airflow-shaped lines over UDP
//! at a fixed rate, one line per datagram (Airflow's shape) or packed into datagrams,
//! and prints what it sent as one JSON line.
//!
//! ```text
//! loadgen --target 127.0.0.1:8125 --rate 250000 --seconds 5 [--packed 1400] [--series 1000]
//! ```
//! `--rate` counts lines per second. With `--packed N`, lines are packed into datagrams
//! of at most N bytes. `--series` sets how many distinct metric names cycle.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

struct Args {
    target: String,
    rate: u64,
    seconds: f64,
    packed: Option<usize>,
    series: u64,
}

fn parse() -> Args {
    let mut a = Args {
        target: "127.0.0.1:8125".into(),
        rate: 100_000,
        seconds: 5.0,
        packed: None,
        series: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.target = value,
            "--rate" => a.rate = value.parse().expect("--rate: lines per second"),
            "--seconds" => a.seconds = value.parse().expect("--seconds"),
            "--packed" => a.packed = Some(value.parse().expect("--packed: bytes")),
            "--series" => a.series = value.parse().expect("--series"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// The i-th line: a mix like the Airflow scheduler's (gauges, counters, timers).
fn line(i: u64, series: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let s = i % series;
    let _ = match i % 4 {
        0 => write!(out, "airflow.bench.gauge.s{s}:{}|g", i % 97),
        1 => write!(out, "airflow.bench.count.s{s}:1|c"),
        2 => write!(out, "airflow.bench.timer.s{s}:{}|ms", i % 1000),
        _ => write!(out, "airflow.pool.queued_slots.pool{}:{}|g", s % 8, i % 50),
    };
}

/// What went out: datagrams, their bytes, and sends that failed.
#[derive(Default)]
struct Sent {
    packets: u64,
    bytes: u64,
    errors: u64,
}

impl Sent {
    fn send(&mut self, socket: &UdpSocket, datagram: &[u8]) {
        match socket.send(datagram) {
            Ok(n) => {
                self.packets += 1;
                self.bytes += n as u64;
            }
            Err(_) => self.errors += 1,
        }
    }
}

fn main() {
    let a = parse();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(&a.target).expect("connect");
    let total = (a.rate as f64 * a.seconds) as u64;
    let start = Instant::now();
    let mut lines = 0u64;
    let mut sent = Sent::default();
    // Packed: lines that are due go into the datagram being filled, which is sent when
    // the next line would not fit, so every datagram but the last is full. (Sending what
    // was due at every pass of the loop made datagrams of about 3 lines, not 40.)
    let mut datagram = Vec::with_capacity(65_536);
    let mut one = Vec::with_capacity(128);
    // Pace in slices of at most 1 ms: generate what is due, then sleep to the next line.
    while lines < total {
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        while lines < due {
            one.clear();
            line(lines, a.series, &mut one);
            lines += 1;
            match a.packed {
                None => sent.send(&socket, &one),
                Some(max) => {
                    if !datagram.is_empty() && datagram.len() + 1 + one.len() > max {
                        sent.send(&socket, &datagram);
                        datagram.clear();
                    }
                    if !datagram.is_empty() {
                        datagram.push(b'\n');
                    }
                    datagram.extend_from_slice(&one);
                }
            }
        }
        let next = Duration::from_secs_f64((lines + 1) as f64 / a.rate as f64);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait.min(Duration::from_millis(1)));
        }
    }
    if !datagram.is_empty() {
        sent.send(&socket, &datagram);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let Sent {
        packets,
        bytes,
        errors,
    } = sent;
    println!(
        "{{\"lines\":{lines},\"packets\":{packets},\"bytes\":{bytes},\"send_errors\":{errors},\"seconds\":{elapsed:.3},\"lines_per_second\":{:.0},\"packets_per_second\":{:.0},\"lines_per_packet\":{:.1}}}",
        lines as f64 / elapsed,
        packets as f64 / elapsed,
        lines as f64 / packets.max(1) as f64
    );
}
