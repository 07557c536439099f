//! A tiny Kinesis Data Firehose stand-in for the logship benchmark (built as the
//! `firehose_sink` example of the logship crate).
//!
//! Speaks just enough of the Firehose JSON 1.1 API on loopback: DescribeDeliveryStream
//! (logship's start-up check) and PutRecordBatch (accepts every record, base64-decodes
//! it and counts the NDJSON lines inside). `GET /stats` answers the counts as JSON.
//!
//!     cargo run --release -p logship --example firehose_sink -- PORT [EXPECT_LINES]
//!
//! With EXPECT_LINES the sink exits (status 0) as soon as it has accepted that many
//! lines, so a benchmark can wait for it without polling `/stats`: a poller that
//! starts a process every few milliseconds takes CPU from the daemon being measured.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    records: AtomicU64,
    lines: AtomicU64,
    bytes: AtomicU64,
    /// Exit once this many lines were accepted.
    expect: Option<u64>,
}

fn reply(body: Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", "bench")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static parts")
}

async fn handle(
    stats: Arc<Stats>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if req.method() == http::Method::GET {
        let s = &stats;
        return Ok(reply(json!({
            "requests": s.requests.load(Ordering::Relaxed),
            "records": s.records.load(Ordering::Relaxed),
            "lines": s.lines.load(Ordering::Relaxed),
            "bytes": s.bytes.load(Ordering::Relaxed),
        })));
    }
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if target.ends_with("DescribeDeliveryStream") {
        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let name = doc["DeliveryStreamName"].as_str().unwrap_or("bench");
        return Ok(reply(json!({"DeliveryStreamDescription": {
            "DeliveryStreamName": name,
            "DeliveryStreamARN": format!("arn:aws:firehose:us-east-1:000000000000:deliverystream/{name}"),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "Destinations": [],
            "HasMoreDestinations": false,
        }})));
    }
    // Answer first, count after: like the real service, the sink's own work does not
    // hold up the caller, so the benchmark measures logship rather than this parser.
    // The answer needs only the number of records; each record is one `"Data":` member.
    let n = memchr::memmem::find_iter(&body, b"\"Data\":").count();
    let answers: Vec<Value> = (0..n).map(|_| json!({"RecordId": "r"})).collect();
    tokio::spawn(async move {
        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        count(
            &stats,
            doc["Records"].as_array().map_or(&[][..], Vec::as_slice),
        );
    });
    Ok(reply(
        json!({"FailedPutCount": 0, "Encrypted": false, "RequestResponses": answers}),
    ))
}

/// Decodes each record and counts its NDJSON lines; exits when the expected count is in.
fn count(stats: &Stats, records: &[Value]) {
    let (mut lines, mut bytes) = (0u64, 0u64);
    for r in records {
        let data =
            aws_smithy_types::base64::decode(r["Data"].as_str().unwrap_or("")).unwrap_or_default();
        bytes += data.len() as u64;
        lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    stats
        .records
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
    let total = stats.lines.fetch_add(lines, Ordering::Relaxed) + lines;
    if stats.expect.is_some_and(|n| total >= n) {
        println!("lines={total}");
        std::process::exit(0);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: firehose_sink PORT");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let expect = std::env::args()
        .nth(2)
        .map(|n| n.parse().expect("EXPECT_LINES: a count"));
    let stats = Arc::new(Stats {
        expect,
        ..Stats::default()
    });
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(stats.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
