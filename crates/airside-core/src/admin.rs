//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` answers 200 while the process is alive and serving; `/readyz`
//! reflects the daemon's own [`Readiness`] (for dagsync: a recent successful
//! sync; for sinks: the destination checked at start); `/metrics` renders the
//! process-wide Prometheus registry installed by [`install_metrics`], followed by
//! the daemon's own series when it has some ([`AdminServer::with_streamed_metrics`]):
//! those are streamed a chunk at a time, so a scrape of a large exposition never holds
//! the whole text in memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder once per process and returns its handle.
///
/// Timers are exported as histograms with buckets suited to sync and flush
/// durations (seconds).
pub fn install_metrics() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0,
                ])
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests that embed two daemons); the
            // handle still renders what this recorder saw.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The daemon's readiness, as shown on `/readyz`. Cheap to clone and share.
#[derive(Clone, Default)]
pub struct Readiness {
    state: Arc<Mutex<ReadyState>>,
    check: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
    detail: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

#[derive(Default)]
struct ReadyState {
    ready: bool,
    reason: String,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ready, reason) = self.status();
        f.debug_struct("Readiness")
            .field("ready", &ready)
            .field("reason", &reason)
            .finish()
    }
}

impl Readiness {
    /// Starts not ready, with a reason shown on `/readyz`.
    pub fn new(reason: impl Into<String>) -> Self {
        let r = Self::default();
        r.set_not_ready(reason);
        r
    }

    /// Readiness computed on every request by `check` (for example: last success is recent),
    /// in addition to the flag set with [`Readiness::set_ready`].
    pub fn with_check(
        mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    /// Extra lines shown on `/readyz` after the verdict, ready or not (for example the
    /// items that failed while the rest of the work is fine). Empty text adds nothing.
    pub fn with_detail(mut self, detail: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.detail = Some(Arc::new(detail));
        self
    }

    /// The extra lines of [`Readiness::with_detail`], each ending in a newline.
    pub fn detail(&self) -> String {
        let mut text = self.detail.as_ref().map(|d| d()).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }

    /// Marks ready.
    pub fn set_ready(&self) {
        let mut s = self.state.lock().expect("readiness lock");
        s.ready = true;
        s.reason.clear();
    }

    /// Marks not ready, with a reason.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let mut s = self.state.lock().expect("readiness lock");
        s.ready = false;
        s.reason = reason.into();
    }

    /// `(ready, reason)`.
    pub fn status(&self) -> (bool, String) {
        let (ready, reason) = {
            let s = self.state.lock().expect("readiness lock");
            (s.ready, s.reason.clone())
        };
        if !ready {
            return (false, reason);
        }
        match self.check.as_ref().map(|c| c()) {
            Some(Err(why)) => (false, why),
            _ => (true, String::new()),
        }
    }
}

/// One scrape's worth of extra Prometheus text, produced a chunk at a time as the client
/// reads: the next chunk is asked for only once the previous one was handed to the socket.
pub type MetricsChunks = Box<dyn Iterator<Item = String> + Send>;

/// Starts the extra text of one `/metrics` answer (appended after the registry's own output).
pub type ExtraMetrics = Arc<dyn Fn() -> MetricsChunks + Send + Sync>;

/// A bound admin server, ready to [`AdminServer::serve`].
pub struct AdminServer {
    listener: TcpListener,
    readiness: Readiness,
    metrics: PrometheusHandle,
    extra: Option<ExtraMetrics>,
}

/// The admin address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the admin server to {addr}: {source} (choose another --admin-addr)")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl crate::exit::HasExitCode for BindError {
    /// A taken or unassignable admin address is a configuration error.
    fn exit_code(&self) -> crate::ExitCode {
        crate::ExitCode::Usage
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`AdminServer::local_addr`]).
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        Ok(Self {
            listener,
            readiness,
            metrics: install_metrics(),
            extra: None,
        })
    }

    /// Appends the text rendered by `extra` to every `/metrics` answer: for series whose
    /// names and labels come from outside, which the `metrics` registry cannot expire or
    /// bound. For large expositions use [`AdminServer::with_streamed_metrics`].
    pub fn with_extra_metrics(self, extra: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.with_streamed_metrics(move || Box::new(std::iter::once(extra())))
    }

    /// Appends chunks to every `/metrics` answer, sent as they are produced (chunked
    /// transfer encoding): a scrape costs one chunk of memory, not the whole exposition
    /// (metricship's StatsD series run to tens of MB of text).
    pub fn with_streamed_metrics(
        mut self,
        chunks: impl Fn() -> MetricsChunks + Send + Sync + 'static,
    ) -> Self {
        self.extra = Some(Arc::new(chunks));
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves while `work` runs, the daemon's whole life including its bounded drain,
    /// and stops once `work` is done: `/healthz` and `/metrics` answer through the drain
    /// (an operator watching a stuck drain can still see why), and the port is released
    /// before the process exits.
    pub async fn serve_during<F: std::future::Future>(self, work: F) -> F::Output {
        let stop = Shutdown::new();
        let task = tokio::spawn(self.serve(stop.clone()));
        let output = work.await;
        stop.cancel();
        let _ = task.await;
        output
    }

    /// Serves until `shutdown` is cancelled. Spawn it: `tokio::spawn(server.serve(token))`.
    pub async fn serve(self, shutdown: Shutdown) {
        let addr = self.local_addr();
        tracing::info!(%addr, "admin server listening");
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let readiness = self.readiness.clone();
            let metrics = self.metrics.clone();
            let extra = self.extra.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let readiness = readiness.clone();
                    let metrics = metrics.clone();
                    let extra = extra.clone();
                    async move { Ok::<_, Infallible>(route(req, &readiness, &metrics, extra.as_ref())) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

/// A response body: a whole text, or the registry's text followed by streamed chunks.
pub enum AdminBody {
    /// The whole body (taken when sent).
    Full(Option<Bytes>),
    /// A first part, then chunks pulled one at a time.
    Streamed(Option<Bytes>, MetricsChunks),
}

impl hyper::body::Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            AdminBody::Full(body) => body.take(),
            AdminBody::Streamed(head, chunks) => head
                .take()
                .or_else(|| chunks.find(|c| !c.is_empty()).map(Bytes::from)),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, AdminBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AdminBody::Full(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
            AdminBody::Streamed(..) => SizeHint::default(),
        }
    }
}

fn route(
    req: Request<Incoming>,
    readiness: &Readiness,
    metrics: &PrometheusHandle,
    extra: Option<&ExtraMetrics>,
) -> Response<AdminBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness.status() {
            (true, _) => text(StatusCode::OK, format!("ready\n{}", readiness.detail())),
            (false, why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n{}", readiness.detail()),
            ),
        },
        "/metrics" => {
            let registry = Bytes::from(metrics.render());
            let mut resp = match extra {
                Some(extra) => {
                    response(StatusCode::OK, AdminBody::Streamed(Some(registry), extra()))
                }
                None => response(StatusCode::OK, AdminBody::Full(Some(registry))),
            };
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    response(status, AdminBody::Full(Some(Bytes::from(body))))
}

fn response(status: StatusCode, body: AdminBody) -> Response<AdminBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::healthcheck::get;

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let readiness = Readiness::new("warming up");
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), readiness.clone())
            .await
            .unwrap()
            .with_extra_metrics(|| "extra_series{a=\"b\"} 1\n".to_string());
        let addr = server.local_addr();
        let token = Shutdown::new();
        let task = tokio::spawn(server.serve(token.clone()));
        metrics::counter!("airside_core_test_total").increment(3);

        let (status, body) = get(addr, "/healthz").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        let (status, body) = get(addr, "/readyz").await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("warming up"), "{body}");
        readiness.set_ready();
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("airside_core_test_total 3"), "{body}");
        assert!(body.contains("extra_series{a=\"b\"} 1\n"), "{body}");
        assert_eq!(get(addr, "/nope").await.unwrap().0, 404);

        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn streams_extra_metrics_chunk_by_chunk() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), Readiness::new("x"))
            .await
            .unwrap()
            .with_streamed_metrics(|| {
                Box::new(
                    ["first_series 1\n", "", "second_series 2\n"]
                        .into_iter()
                        .map(String::from),
                )
            });
        let addr = server.local_addr();
        let token = Shutdown::new();
        let task = tokio::spawn(server.serve(token.clone()));

        // HTTP/1.0 (the healthcheck client): the body ends with the connection.
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            body.ends_with("first_series 1\nsecond_series 2\n"),
            "{body}"
        );
        // HTTP/1.1 (Prometheus): chunked transfer encoding, chunks in order.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let lower = raw.to_ascii_lowercase();
        assert!(lower.contains("transfer-encoding: chunked"), "{raw}");
        assert!(
            lower.contains("content-type: text/plain; version=0.0.4"),
            "{raw}"
        );
        let first = raw.find("first_series 1\n").expect("first chunk");
        let second = raw.find("second_series 2\n").expect("second chunk");
        assert!(first < second, "{raw}");
        assert!(raw.ends_with("0\r\n\r\n"), "{raw}");

        token.cancel();
        task.await.unwrap();
    }

    #[test]
    fn check_can_withdraw_readiness() {
        let r = Readiness::new("starting").with_check(|| Err("stale".into()));
        assert_eq!(r.status(), (false, "starting".to_string()));
        r.set_ready();
        assert_eq!(r.status(), (false, "stale".to_string()));
    }
}
