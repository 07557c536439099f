//! The forward input (logship as the FireLens log router), through the real binary: every
//! mode over the unix socket and TCP, acks only after the buffer has the records, hostile
//! frames, an outage of Firehose with a SIGKILL in it, SIGTERM while senders still
//! write, and routing by a generated FireLens configuration. Frames are built with rmpv
//! in the field layouts of the Forward Protocol Specification v1, Fluent Bit's forward
//! output and the Docker fluentd driver; tests/forward/ sends the same with the real
//! fluent-logger client.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airside_testkit::{Fault, FaultPlan, FaultProxy, moto};
use rmpv::Value;
use serde_json::Value as J;

use crate::common::*;

fn v(text: &str) -> Value {
    Value::from(text)
}

/// The Docker fluentd driver's record.
fn docker(container: &str, log: &str) -> Value {
    Value::Map(vec![
        (v("container_id"), v(&format!("{container}-id"))),
        (v("container_name"), v(&format!("/{container}"))),
        (v("source"), v("stdout")),
        (v("log"), v(log)),
    ])
}

fn event_time(seconds: u32, nanos: u32) -> Value {
    let mut b = seconds.to_be_bytes().to_vec();
    b.extend_from_slice(&nanos.to_be_bytes());
    Value::Ext(0, b)
}

fn chunk_option(chunk: &str) -> Value {
    Value::Map(vec![(v("chunk"), v(chunk))])
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).unwrap();
    out
}

/// A Forward-mode frame of `lines` from `container`, asking for an ack when `chunk`.
fn forward_frame(tag: &str, container: &str, lines: &[String], chunk: Option<&str>) -> Vec<u8> {
    let entries = lines
        .iter()
        .map(|l| Value::Array(vec![event_time(1_700_000_000, 1), docker(container, l)]))
        .collect();
    let mut frame = vec![v(tag), Value::Array(entries)];
    if let Some(c) = chunk {
        frame.push(chunk_option(c));
    }
    encode(&Value::Array(frame))
}

/// A forward connection (unix socket or TCP).
enum Conn {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Conn {
    fn unix(path: &Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn::Unix(s)
    }

    fn tcp(addr: &str) -> Self {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn::Tcp(s)
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Unix(s) => s,
            Conn::Tcp(s) => s,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream().write_all(bytes)
    }

    fn set_read_timeout(&mut self, t: Duration) {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)).unwrap(),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)).unwrap(),
        }
    }

    /// Reads one ack; returns its chunk id.
    fn ack(&mut self) -> String {
        let value = rmpv::decode::read_value(&mut self.stream()).expect("an ack");
        let map = value.as_map().expect("a map");
        assert_eq!(map.len(), 1);
        assert_eq!(map[0].0.as_str(), Some("ack"));
        map[0].1.as_str().unwrap().to_string()
    }

    /// Whether the server closed the connection within `within` (reads return 0 or reset).
    fn closed_within(&mut self, within: Duration) -> bool {
        self.set_read_timeout(within);
        let mut b = [0u8; 16];
        match self.stream().read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Router {
    daemon: Daemon,
    socket: PathBuf,
    tcp: String,
}

/// Starts logship as a router with `outputs` (and `extra` flags) in `dir`.
async fn start_router(
    dir: &Path,
    outputs: &[String],
    extra: &[String],
    endpoint: &str,
    stdout: bool,
) -> Router {
    let socket = dir.join("run/fluent.sock");
    let tcp = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        s("--forward"),
        s("true"),
        s("--path"),
        s(""),
        s("--forward-socket"),
        socket.display().to_string(),
        s("--forward-listen"),
        tcp.clone(),
        s("--forward-health"),
        format!("127.0.0.1:{}", free_port()),
        s("--buffer-dir"),
        dir.join("buffer").display().to_string(),
        s("--state-dir"),
        dir.join("state").display().to_string(),
        s("--multiline-timeout"),
        s("200ms"),
        s("--linger"),
        s("100ms"),
    ];
    if !extra.iter().any(|a| a == "--firelens-config") {
        args.push(s("--firelens-config"));
        args.push(dir.join("no-firelens.conf").display().to_string());
    }
    for o in outputs {
        args.push(s("--output"));
        args.push(o.clone());
    }
    args.extend(extra.iter().cloned());
    let mut daemon = Daemon::start(&args, endpoint, dir, stdout);
    daemon.wait_ready().await;
    Router {
        daemon,
        socket,
        tcp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_decodes_and_acks_come_only_for_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = start_router(tmp.path(), &[s("stdout")], &[], &moto().endpoint(), true).await;
    let tag = "scheduler-firelens-t1";
    // Message mode, integer time, with an ack (over the unix socket).
    let mut unix = Conn::unix(&r.socket);
    unix.send(&encode(&Value::Array(vec![
        v(tag),
        Value::from(1_700_000_000u32),
        docker("scheduler", "message mode"),
        chunk_option("c1"),
    ])))
    .unwrap();
    assert_eq!(unix.ack(), "c1");
    // Forward mode, EventTime, with an ack (over TCP).
    let mut tcp = Conn::tcp(&r.tcp);
    tcp.send(&forward_frame(
        tag,
        "scheduler",
        &[s("forward one"), s("forward two")],
        Some("c2"),
    ))
    .unwrap();
    assert_eq!(tcp.ack(), "c2");
    // PackedForward (bin) without an ack: nothing comes back.
    let mut packed = Vec::new();
    for l in ["packed one", "packed two"] {
        packed.extend(encode(&Value::Array(vec![
            event_time(1_700_000_001, 500),
            docker("scheduler", l),
        ])));
    }
    tcp.send(&encode(&Value::Array(vec![
        v(tag),
        Value::Binary(packed.clone()),
    ])))
    .unwrap();
    tcp.set_read_timeout(Duration::from_millis(500));
    let mut b = [0u8; 1];
    match tcp.stream().read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a frame without chunk was answered: {other:?}"),
    }
    tcp.set_read_timeout(Duration::from_secs(20));
    // CompressedPackedForward, gzip, with size and an ack.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut entries = Vec::new();
    for l in ["compressed one", "compressed two"] {
        entries.extend(encode(&Value::Array(vec![
            event_time(1_700_000_002, 0),
            docker("worker", l),
        ])));
    }
    gz.write_all(&entries).unwrap();
    tcp.send(&encode(&Value::Array(vec![
        v("worker-firelens-t1"),
        Value::Binary(gz.finish().unwrap()),
        Value::Map(vec![
            (v("compressed"), v("gzip")),
            (v("size"), Value::from(2)),
            (v("chunk"), v("c3")),
        ]),
    ])))
    .unwrap();
    assert_eq!(tcp.ack(), "c3");
    let want = [
        "message mode",
        "forward one",
        "forward two",
        "packed one",
        "packed two",
        "compressed one",
        "compressed two",
    ];
    r.daemon
        .eventually_on_stdout(Duration::from_secs(10), "every event on stdout", |lines| {
            lines.len() >= want.len()
        })
        .await;
    let records = r.daemon.stdout_records();
    let messages: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    for w in want {
        assert_eq!(
            messages.iter().filter(|m| **m == w).count(),
            1,
            "{w}: {messages:?}"
        );
    }
    let by_message: HashMap<&str, &J> = records
        .iter()
        .map(|r| (r["message"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        by_message["message mode"]["timestamp"],
        "2023-11-14T22:13:20.000000000Z"
    );
    assert_eq!(
        by_message["packed one"]["timestamp"],
        "2023-11-14T22:13:21.000000500Z"
    );
    assert_eq!(by_message["compressed one"]["container_name"], "worker");
    assert_eq!(by_message["forward one"]["tag"], tag);
    let ids: std::collections::HashSet<&str> =
        records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "ids are unique");
    let m = r.daemon.metrics().await;
    assert_eq!(metric_sum(&m, "logship_forward_acks_total"), 3.0);
    assert_eq!(metric_sum(&m, "logship_forward_events_total"), 7.0);
    r.daemon.stop(Duration::from_secs(20)).await;
    assert!(!r.socket.exists(), "the socket is removed at exit");
}

/// Frames larger than a connection's 64 KiB read buffer need one of the router's two
/// large-frame slots. Two senders that take both with half a frame and then go silent
/// hold them only for the stall timeout (20 s): then they are closed, counted, and a
/// third sender's large frame goes through and is acked; the halves are never shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_stalled_halfway_give_their_slots_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = start_router(tmp.path(), &[s("stdout")], &[], &moto().endpoint(), true).await;
    let lines = |who: &str| -> Vec<String> {
        (0..1000)
            .map(|i| format!("{who} {i:04} {}", "x".repeat(300)))
            .collect()
    };
    let half = forward_frame("big-firelens-t", "big", &lines("half"), Some("half"));
    let half = &half[..half.len() / 2];
    let mut stalled: Vec<Conn> = (0..2)
        .map(|_| {
            let mut c = Conn::unix(&r.socket);
            c.send(half).unwrap();
            c
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let whole = forward_frame("big-firelens-t", "big", &lines("whole"), Some("whole"));
    let socket = r.socket.clone();
    let sender = std::thread::spawn(move || {
        let mut c = Conn::unix(&socket);
        c.set_read_timeout(Duration::from_secs(60));
        c.send(&whole).unwrap();
        let ack = c.ack();
        (ack, started.elapsed())
    });
    for c in &mut stalled {
        assert!(
            c.closed_within(Duration::from_secs(40)),
            "a stalled sender kept its slot"
        );
    }
    let (ack, waited) = sender.join().unwrap();
    assert_eq!(ack, "whole");
    // It had to wait for a slot: the two stalled senders held both.
    assert!(
        waited >= Duration::from_secs(15),
        "acked after {waited:?}: the slots were not taken"
    );
    r.daemon
        .eventually_on_stdout(Duration::from_secs(10), "the whole frame", |l| {
            l.len() >= 1000
        })
        .await;
    let m = r.daemon.metrics().await;
    assert_eq!(
        metric_sum(&m, "logship_forward_frames_refused_total"),
        2.0,
        "{m}"
    );
    let records = r.daemon.stdout_records();
    assert_eq!(records.len(), 1000);
    assert!(
        records
            .iter()
            .all(|r| r["message"].as_str().unwrap().starts_with("whole ")),
        "a stalled half was shipped"
    );
    r.daemon.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_their_connection_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = start_router(tmp.path(), &[s("stdout")], &[], &moto().endpoint(), true).await;
    let good_tag = "good-firelens-t";
    let mut good = Conn::tcp(&r.tcp);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        // A str32 declaring 4 GiB: refused at once, without waiting for the bytes.
        ("4 GiB string", {
            let mut b = vec![0x93, 0xdb, 0xff, 0xff, 0xff, 0xff];
            b.extend_from_slice(b"tag");
            b
        }),
        // A PackedForward whose bin32 declares 4 GiB.
        ("4 GiB bin", {
            let mut b = vec![0x92, 0xa3];
            b.extend_from_slice(b"tag");
            b.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff]);
            b
        }),
        // 100,000 nested arrays.
        ("deep nesting", vec![0x91; 100_000]),
        // A map declaring 2^32-1 entries.
        (
            "huge map",
            vec![0x93, 0xa1, b't', 0x01, 0xdf, 0xff, 0xff, 0xff, 0xff],
        ),
        // Not MessagePack at all (0xc1 is never used).
        ("garbage", vec![0xc1; 64]),
        // Fluentd's shared-key handshake, which logship does not offer.
        (
            "PING",
            encode(&Value::Array(
                ["PING", "client", "salt", "digest", "", ""].map(v).to_vec(),
            )),
        ),
    ];
    for (what, bytes) in &hostile {
        let mut c = Conn::tcp(&r.tcp);
        let started = Instant::now();
        let _ = c.send(bytes);
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{what}: not closed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            started.elapsed()
        );
        // The good connection is still served.
        good.send(&forward_frame(
            good_tag,
            "good",
            &[format!("after {what}")],
            Some(what),
        ))
        .unwrap();
        assert_eq!(good.ack(), *what);
    }
    // A truncated frame, then the sender hangs up: dropped, counted, never shipped.
    let mut t = Conn::unix(&r.socket);
    let frame = forward_frame(good_tag, "good", &[s("never whole")], None);
    t.send(&frame[..frame.len() - 3]).unwrap();
    drop(t);
    r.daemon
        .eventually_on_stdout(Duration::from_secs(10), "the good lines", |l| {
            l.len() >= hostile.len()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = r.daemon.metrics().await;
    assert_eq!(
        metric_sum(&m, "logship_forward_frames_refused_total"),
        (hostile.len() + 1) as f64,
        "{m}"
    );
    let messages: Vec<String> = r
        .daemon
        .stdout_records()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(messages.len(), hostile.len(), "{messages:?}");
    assert!(!messages.iter().any(|m| m == "never whole"));
    assert!(
        r.daemon.stderr_text().contains("shared-key authentication"),
        "the PING is refused with a line that says why:\n{}",
        r.daemon.stderr_text()
    );
    // Memory stayed small although 4 GiB were announced.
    let status = std::fs::read_to_string(format!("/proc/{}/status", r.daemon.child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(hwm_kib < 64 * 1024, "peak RSS {hwm_kib} KiB");
    r.daemon.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_the_lines_senders_write_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = start_router(
        tmp.path(),
        &[s("stdout")],
        &[s("--forward-quiet"), s("1s")],
        &moto().endpoint(),
        true,
    )
    .await;
    let mut c = Conn::unix(&r.socket);
    c.send(&forward_frame(
        "app-firelens-t",
        "app",
        &[s("before")],
        Some("b"),
    ))
    .unwrap();
    assert_eq!(c.ack(), "b");
    r.daemon.sigterm();
    // The application container stops after the router's SIGTERM and writes on for 3 s.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        c.send(&forward_frame(
            "app-firelens-t",
            "app",
            &[format!("after {n}")],
            None,
        ))
        .unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    let status = r.daemon.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {}", r.daemon.stderr_text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let messages: Vec<String> = r
        .daemon
        .stdout_records()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(messages.len(), n + 1, "{messages:?}");
    assert_eq!(messages.last().unwrap(), &format!("after {}", n - 1));
}

/// The events of `records` (Firehose → S3 objects) by container, in arrival order.
fn by_container(records: &[J]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        out.entry(r["container_name"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(r["message"].as_str().unwrap().to_string());
    }
    out
}

/// A Firehose stream delivering to a bucket, behind a fault proxy that answers 500 to
/// everything while its rate is 1 (Firehose down) and passes everything at 0 (as now).
async fn firehose_behind_a_switch() -> (String, String, FaultProxy) {
    let (bucket, stream) = firehose_to_bucket().await;
    let proxy = FaultProxy::start(
        &moto().endpoint(),
        FaultPlan::only(1.0, &[Fault::InternalError]),
    );
    proxy.set_rate(0.0);
    (bucket, stream, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firehose_outage_and_a_sigkill_lose_nothing_acknowledged() {
    let (bucket, stream, proxy) = firehose_behind_a_switch().await;
    let tmp = tempfile::tempdir().unwrap();
    let outputs = [format!("firehose:{stream}")];
    let mut r = start_router(tmp.path(), &outputs, &[], &proxy.endpoint(), false).await;
    // Firehose goes down; senders keep writing and get their acks from the buffer.
    proxy.set_rate(1.0);
    let mut sent = Vec::new();
    let mut c = Conn::unix(&r.socket);
    for batch in 0..50 {
        let lines: Vec<String> = (0..200)
            .map(|i| format!("event {:06}", batch * 200 + i))
            .collect();
        c.send(&forward_frame(
            "app-firelens-t",
            "app",
            &lines,
            Some(&format!("b{batch}")),
        ))
        .unwrap();
        assert_eq!(c.ack(), format!("b{batch}"));
        sent.extend(lines);
    }
    drop(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        list_keys(&bucket, "fh/").await.is_empty(),
        "Firehose is down"
    );
    // Killed in the outage, with a block cut short at the end of the buffer.
    r.daemon.child.kill().unwrap();
    let _ = r.daemon.wait_exit(Duration::from_secs(5)).await;
    let newest = std::fs::read_dir(tmp.path().join("buffer"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lsb"))
        .max()
        .expect("a buffer segment");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 0, 0, b'{'])
        .unwrap();
    drop(f);
    proxy.set_rate(0.0);
    let mut r = start_router(tmp.path(), &outputs, &[], &proxy.endpoint(), false).await;
    let bk = bucket.clone();
    let want = sent.len();
    eventually(
        Duration::from_secs(60),
        "every acknowledged event in S3",
        || {
            let bk = bk.clone();
            async move { all_records(&bk, "fh/").await.len() >= want }
        },
    )
    .await;
    // Once each, in order within each object (objects of one second have no order).
    let mut got = Vec::new();
    for (key, records) in all_objects(&bucket, "fh/").await {
        let messages: Vec<String> = records
            .iter()
            .map(|r| r["message"].as_str().unwrap().to_string())
            .collect();
        assert!(
            messages.windows(2).all(|w| w[0] < w[1]),
            "{key}: out of order"
        );
        got.extend(messages);
    }
    got.sort();
    assert_eq!(got, sent, "every acknowledged event, once");
    let m = r.daemon.metrics().await;
    assert!(
        metric_sum(&m, "logship_forward_buffer_torn_bytes_total") > 0.0,
        "{m}"
    );
    // Delivered segments are deleted.
    let bf = tmp.path().join("buffer");
    eventually(Duration::from_secs(10), "the buffer drained", || {
        let bf = bf.clone();
        async move {
            std::fs::read_dir(&bf)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "lsb")
                })
                .count()
                <= 1
        }
    })
    .await;
    r.daemon.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_firelens_configuration_routes_each_container() {
    let (fh_bucket, stream) = firehose_to_bucket().await;
    let s3_bucket = create_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    // The agent's format (see src/input/forward/firelens.rs), for two containers.
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firelens/fluent-bit.conf"),
    )
    .unwrap()
    .replace("airflow-containers", &stream)
    .replace("airflow-container-logs", &s3_bucket);
    let config_path = tmp.path().join("fluent-bit.conf");
    std::fs::write(&config_path, config).unwrap();
    let mut r = start_router(
        tmp.path(),
        &[],
        &[
            s("--firelens-config"),
            config_path.display().to_string(),
            s("--s3-max-object-age"),
            s("1s"),
        ],
        &moto().endpoint(),
        false,
    )
    .await;
    let task = "0123456789abcdef0123456789abcdef";
    let mut c = Conn::unix(&r.socket);
    for (container, n) in [("scheduler", 30), ("triggerer", 20)] {
        let lines: Vec<String> = (0..n).map(|i| format!("{container} line {i}")).collect();
        c.send(&forward_frame(
            &format!("{container}-firelens-{task}"),
            container,
            &lines,
            Some(container),
        ))
        .unwrap();
        assert_eq!(c.ack(), container);
    }
    // The health check's records go to FireLens' null output.
    c.send(&forward_frame(
        "firelens-healthcheck",
        "x",
        &[s("health")],
        Some("h"),
    ))
    .unwrap();
    assert_eq!(c.ack(), "h");
    let (fb, sb) = (fh_bucket.clone(), s3_bucket.clone());
    eventually(Duration::from_secs(30), "both sinks", || {
        let (fb, sb) = (fb.clone(), sb.clone());
        async move {
            all_records(&fb, "fh/").await.len() >= 30 && all_records(&sb, "").await.len() >= 20
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fh = by_container(&all_records(&fh_bucket, "fh/").await);
    let s3 = all_records(&s3_bucket, "").await;
    assert_eq!(fh.keys().collect::<Vec<_>>(), vec!["scheduler"]);
    assert_eq!(fh["scheduler"].len(), 30);
    assert_eq!(
        by_container(&s3).keys().collect::<Vec<_>>(),
        vec!["triggerer"]
    );
    assert_eq!(s3.len(), 20);
    // The record_modifier's fields are on every record; the S3 objects sit under the
    // fixed start of s3_key_format.
    assert_eq!(s3[0]["ecs_task_definition"], "airflow-scheduler:7");
    assert!(!list_keys(&s3_bucket, "containers/").await.is_empty());
    r.daemon.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_firelens_output_is_a_start_up_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("fluent-bit.conf");
    std::fs::write(
        &config,
        "[OUTPUT]\n    Name cloudwatch_logs\n    Match app-firelens*\n    log_group_name g\n",
    )
    .unwrap();
    let mut d = Daemon::start(
        &[
            s("--forward"),
            s("true"),
            s("--path"),
            s(""),
            s("--firelens-config"),
            config.display().to_string(),
            s("--output"),
            s("stdout"),
        ],
        &moto().endpoint(),
        tmp.path(),
        false,
    );
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{}", d.stderr_text());
    assert!(
        d.stderr_text().contains("cloudwatch_logs"),
        "{}",
        d.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_stops_reading_the_senders_and_loses_nothing() {
    let (bucket, stream, proxy) = firehose_behind_a_switch().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut r = start_router(
        tmp.path(),
        &[format!("firehose:{stream}")],
        &[s("--buffer-max-bytes"), s("8MiB")],
        &proxy.endpoint(),
        false,
    )
    .await;
    proxy.set_rate(1.0);
    // 24 frames of about 1 MiB of records each, without acks (as Docker's driver sends):
    // once the buffer (8 MiB) and the queue to it are full, logship stops reading and the
    // sender's writes block.
    const FRAMES: usize = 24;
    const LINES: usize = 2000;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (socket, count) = (r.socket.clone(), acked.clone());
    let sender = std::thread::spawn(move || {
        let mut c = Conn::unix(&socket);
        for f in 0..FRAMES {
            let lines: Vec<String> = (0..LINES)
                .map(|i| format!("f{f:02} {i:05} {}", "p".repeat(400)))
                .collect();
            c.send(&forward_frame("app-firelens-t", "app", &lines, None))
                .unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stuck_at = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        stuck_at < FRAMES,
        "every frame was taken with the buffer capped and Firehose down"
    );
    let on_disk: u64 = std::fs::read_dir(tmp.path().join("buffer"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "lsb"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= 8 << 20,
        "the buffer holds {on_disk} bytes, over its cap"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        acked.load(std::sync::atomic::Ordering::SeqCst),
        stuck_at,
        "still held back"
    );
    // Firehose is back: the buffer drains, the sender goes on, nothing is lost.
    proxy.set_rate(0.0);
    tokio::task::spawn_blocking(move || sender.join().unwrap())
        .await
        .unwrap();
    let bk = bucket.clone();
    eventually(Duration::from_secs(60), "every line in S3", || {
        let bk = bk.clone();
        async move { all_records(&bk, "fh/").await.len() >= FRAMES * LINES }
    })
    .await;
    let mut got: Vec<String> = all_records(&bucket, "fh/")
        .await
        .iter()
        .map(|r| r["message"].as_str().unwrap()[..9].to_string())
        .collect();
    got.sort();
    let want: Vec<String> = (0..FRAMES)
        .flat_map(|f| (0..LINES).map(move |i| format!("f{f:02} {i:05}")))
        .collect();
    assert_eq!(got, want, "every line once");
    let m = r.daemon.metrics().await;
    assert!(
        metric_sum(&m, "logship_forward_buffer_full_seconds_total") >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "logship_forward_backpressure_seconds_total") >= 1.0,
        "{m}"
    );
    r.daemon.stop(Duration::from_secs(20)).await;
}
