//! A tiny S3 stand-in for the airflow-s3 benchmark (built as the `s3_sink` example of the
//! logship crate): accepts path-style PutObject, DeleteObject and DeleteObjects on
//! loopback, keeps nothing, and appends one line per request to a log,
//! `<unix ns>,<PUT|DELETE|DELETES>,<key>,<bytes, or the keys a DeleteObjects names>`,
//! from which the benchmark computes how long each log line took to become readable.
//! `GET /stats` answers the counts as JSON.
//!
//!     cargo run --release -p logship --example s3_sink -- PORT LOG_FILE

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

struct Sink {
    puts: AtomicU64,
    deletes: AtomicU64,
    batch_deletes: AtomicU64,
    others: AtomicU64,
    log: Mutex<std::io::BufWriter<std::fs::File>>,
}

async fn handle(
    sink: Arc<Sink>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let batch_delete = method == http::Method::POST
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "delete" || p == "delete="));
    let path = req.uri().path().to_string();
    if method == http::Method::GET && path == "/stats" {
        let body = format!(
            r#"{{"puts":{},"deletes":{},"batch_deletes":{},"others":{}}}"#,
            sink.puts.load(Ordering::Relaxed),
            sink.deletes.load(Ordering::Relaxed),
            sink.batch_deletes.load(Ordering::Relaxed),
            sink.others.load(Ordering::Relaxed)
        );
        return Ok(http::Response::new(Full::new(Bytes::from(body))));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Path style: /BUCKET/KEY (percent-encoded as the SDK sends it).
    let key = path.splitn(3, '/').nth(2).unwrap_or("").to_string();
    let mut size = body.len();
    let mut answer = Bytes::new();
    let (status, what) = match method {
        // DeleteObjects in quiet mode: an empty result is "every key deleted".
        _ if batch_delete => {
            sink.batch_deletes.fetch_add(1, Ordering::Relaxed);
            size = body.windows(5).filter(|w| w == b"<Key>").count();
            answer = Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></DeleteResult>",
            );
            (200, "DELETES")
        }
        http::Method::PUT => {
            sink.puts.fetch_add(1, Ordering::Relaxed);
            (200, "PUT")
        }
        http::Method::DELETE => {
            sink.deletes.fetch_add(1, Ordering::Relaxed);
            (204, "DELETE")
        }
        _ => {
            sink.others.fetch_add(1, Ordering::Relaxed);
            (200, "OTHER")
        }
    };
    if let Ok(mut log) = sink.log.lock() {
        let _ = writeln!(log, "{now},{what},{key},{size}");
        let _ = log.flush();
    }
    let resp = http::Response::builder()
        .status(status)
        .header("etag", "\"bench\"")
        .header("x-amz-request-id", "bench")
        .body(Full::new(answer))
        .expect("static parts");
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: s3_sink PORT LOG_FILE");
    let log = std::fs::File::create(args.next().expect("usage: s3_sink PORT LOG_FILE"))
        .expect("create the log");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let sink = Arc::new(Sink {
        puts: AtomicU64::new(0),
        deletes: AtomicU64::new(0),
        batch_deletes: AtomicU64::new(0),
        others: AtomicU64::new(0),
        log: Mutex::new(std::io::BufWriter::new(log)),
    });
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let _ = stream.set_nodelay(true);
        let sink = sink.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(sink.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
