use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::server::ServerThread;

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// HTTP 500 InternalError.
    InternalError,
    /// HTTP 503 SlowDown (S3's throttling answer).
    SlowDown,
    /// HTTP 400 with a throttling code (ThrottlingException / Throttling), as the JSON and
    /// query protocols send it.
    Throttle,
    /// Close the connection without answering; the request never reaches the emulator.
    DropBeforeForward,
    /// Forward the request, then close the connection instead of returning the answer:
    /// the request took effect but the client cannot know.
    DropAfterForward,
    /// HTTP 403 AccessDenied (not part of [`FaultPlan::all`]: it is not a transient fault;
    /// use [`FaultPlan::only`] to test how a daemon handles bad credentials).
    AccessDenied,
}

const ALL_FAULTS: [Fault; 5] = [
    Fault::InternalError,
    Fault::SlowDown,
    Fault::Throttle,
    Fault::DropBeforeForward,
    Fault::DropAfterForward,
];

/// A hook that may replace a successful upstream answer: `(request path+query, request body,
/// response body) -> Some(new response body)`. Used, for example, to fake Firehose partial
/// failures.
pub type ResponseRewrite = Arc<dyn Fn(&str, &Bytes, &Bytes) -> Option<Bytes> + Send + Sync>;

/// How to change the answer to a request whose body an [`ExchangeRewrite`] replaced.
pub type ResponseFix = Box<dyn FnOnce(&Bytes) -> Bytes + Send>;

/// A hook that may replace a request body before it is forwarded: `(request path+query,
/// request headers, request body) -> Some((body to forward, fix for the successful answer))`.
/// Used, for example, to fake a Firehose partial failure honestly: the records reported as
/// failed are removed from the forwarded request, so the emulator never stores them.
pub type ExchangeRewrite =
    Arc<dyn Fn(&str, &http::HeaderMap, &Bytes) -> Option<(Bytes, ResponseFix)> + Send + Sync>;

/// What the proxy injects.
#[derive(Clone)]
pub struct FaultPlan {
    /// Probability (0..=1) that a request gets a fault.
    pub rate: f64,
    /// The faults to choose from, uniformly.
    pub faults: Vec<Fault>,
    /// Seed for reproducible runs.
    pub seed: u64,
    /// Optional rewrite of successful answers.
    pub rewrite: Option<ResponseRewrite>,
    /// When set, only requests whose `x-amz-target` starts with this get faults (for
    /// example `Firehose_` to throttle Firehose while S3 through the same proxy is fine).
    pub target: Option<&'static str>,
}

impl FaultPlan {
    /// No faults: a transparent proxy whose rate can be raised later with [`FaultProxy::set_rate`].
    pub fn none() -> Self {
        Self {
            rate: 0.0,
            faults: ALL_FAULTS.to_vec(),
            seed: 1,
            rewrite: None,
            target: None,
        }
    }

    /// Every kind of fault, on `rate` of the requests.
    pub fn all(rate: f64) -> Self {
        Self {
            rate,
            ..Self::none()
        }
    }

    /// Only these faults, on `rate` of the requests.
    pub fn only(rate: f64, faults: &[Fault]) -> Self {
        Self {
            rate,
            faults: faults.to_vec(),
            ..Self::none()
        }
    }

    /// The same plan, applied only to requests whose `x-amz-target` starts with `prefix`.
    pub fn for_target(self, prefix: &'static str) -> Self {
        Self {
            target: Some(prefix),
            ..self
        }
    }
}

/// Counts of what the proxy did.
#[derive(Debug, Default)]
pub struct FaultStats {
    requests: AtomicU64,
    forwarded: AtomicU64,
    injected: Mutex<std::collections::HashMap<Fault, u64>>,
}

impl FaultStats {
    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Requests forwarded to the upstream.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
    /// Faults of one kind injected.
    pub fn injected(&self, fault: Fault) -> u64 {
        *self.injected.lock().unwrap().get(&fault).unwrap_or(&0)
    }
    /// Faults injected in total.
    pub fn injected_total(&self) -> u64 {
        self.injected.lock().unwrap().values().sum()
    }
}

struct Shared {
    upstream: String,
    plan: FaultPlan,
    rate_ppm: AtomicU32,
    rng: Mutex<StdRng>,
    stats: FaultStats,
    client: Client<HttpConnector, Full<Bytes>>,
    exchange: Option<ExchangeRewrite>,
    strict_s3: Option<Arc<crate::strict_s3::StrictS3>>,
    strict_api: Option<Arc<crate::strict_api::StrictApi>>,
}

/// A fault-injecting HTTP proxy on loopback, running on its own thread until dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    server: ServerThread,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (for example moto's `http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, plan: FaultPlan) -> Self {
        Self::start_inner(upstream, plan, None, None, None)
    }

    /// Like [`FaultProxy::start`], in strict-AWS mode: S3 answers follow the rules of
    /// [`crate::StrictS3`], and CloudWatch PutMetricData and Firehose PutRecordBatch
    /// requests that break the services' documented limits are refused as the services
    /// refuse them ([`crate::StrictApi`], read with [`FaultProxy::strict_api`]).
    pub fn start_strict_aws(upstream: &str, plan: FaultPlan) -> Self {
        Self::start_inner(
            upstream,
            plan,
            None,
            Some(Arc::new(crate::strict_s3::StrictS3::default())),
            Some(Arc::new(crate::strict_api::StrictApi::default())),
        )
    }

    /// The CloudWatch and Firehose rules of a proxy started with
    /// [`FaultProxy::start_strict_aws`].
    pub fn strict_api(&self) -> &crate::strict_api::StrictApi {
        self.shared
            .strict_api
            .as_deref()
            .expect("started with FaultProxy::start_strict_aws")
    }

    /// Like [`FaultProxy::start`], in strict-S3 mode: S3 answers follow the documented
    /// rules that moto lacks ([`crate::StrictS3`]), read with [`FaultProxy::strict_s3`].
    /// Objects must be stored through this proxy for their encryption to be known.
    pub fn start_strict_s3(upstream: &str, plan: FaultPlan) -> Self {
        Self::start_inner(
            upstream,
            plan,
            None,
            Some(Arc::new(crate::strict_s3::StrictS3::default())),
            None,
        )
    }

    /// The strict-S3 rules of a proxy started with [`FaultProxy::start_strict_s3`].
    pub fn strict_s3(&self) -> &crate::strict_s3::StrictS3 {
        self.shared
            .strict_s3
            .as_deref()
            .expect("started with FaultProxy::start_strict_s3")
    }

    /// Like [`FaultProxy::start`], and every forwarded request passes through `exchange`
    /// (faults from `plan` are injected first; a request answered with a fault never reaches it).
    pub fn start_with_exchange(upstream: &str, plan: FaultPlan, exchange: ExchangeRewrite) -> Self {
        Self::start_inner(upstream, plan, Some(exchange), None, None)
    }

    fn start_inner(
        upstream: &str,
        plan: FaultPlan,
        exchange: Option<ExchangeRewrite>,
        strict_s3: Option<Arc<crate::strict_s3::StrictS3>>,
        strict_api: Option<Arc<crate::strict_api::StrictApi>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            rate_ppm: AtomicU32::new((plan.rate.clamp(0.0, 1.0) * 1e6) as u32),
            rng: Mutex::new(StdRng::seed_from_u64(plan.seed)),
            plan,
            stats: FaultStats::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            exchange,
            strict_s3,
            strict_api,
        });
        let server = ServerThread::start(
            "127.0.0.1:0".parse().expect("loopback"),
            shared.clone(),
            handle,
        );
        Self { shared, server }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Changes the fault rate (0..=1) while running.
    pub fn set_rate(&self, rate: f64) {
        self.shared
            .rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> &FaultStats {
        &self.shared.stats
    }
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault proxy")
    }
}
impl std::error::Error for Dropped {}

fn pick_fault(shared: &Shared, headers: &http::HeaderMap) -> Option<Fault> {
    if let Some(prefix) = shared.plan.target {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !target.starts_with(prefix) {
            return None;
        }
    }
    let ppm = shared.rate_ppm.load(Ordering::Relaxed);
    if ppm == 0 || shared.plan.faults.is_empty() {
        return None;
    }
    let mut rng = shared.rng.lock().unwrap();
    if rng.random_range(0..1_000_000u32) >= ppm {
        return None;
    }
    let i = rng.random_range(0..shared.plan.faults.len());
    Some(shared.plan.faults[i])
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let fault = pick_fault(&shared, &parts.headers);
    if let Some(f) = fault {
        *shared.stats.injected.lock().unwrap().entry(f).or_default() += 1;
    }
    let style = ErrorStyle::of(&parts);
    match fault {
        Some(Fault::InternalError) => {
            return Ok(error_response(
                style,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
            ));
        }
        Some(Fault::SlowDown) => {
            return Ok(error_response(
                style,
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
            ));
        }
        Some(Fault::Throttle) => {
            let code = if style == ErrorStyle::Json {
                "ThrottlingException"
            } else {
                "Throttling"
            };
            return Ok(error_response(style, StatusCode::BAD_REQUEST, code));
        }
        Some(Fault::AccessDenied) => {
            let code = if style == ErrorStyle::Json {
                "AccessDeniedException"
            } else {
                "AccessDenied"
            };
            return Ok(error_response(style, StatusCode::FORBIDDEN, code));
        }
        Some(Fault::DropBeforeForward) => return Err(Dropped),
        _ => {}
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut parts = parts;
    let mut body = body;
    // Keys the strict-S3 layer took out of a DeleteObjects, to report as refused.
    let mut refused_deletes = Vec::new();
    if let Some(strict) = &shared.strict_s3 {
        match strict.on_request(&parts.method, &path, &mut parts.headers, &body) {
            crate::strict_s3::Verdict::Forward => {}
            crate::strict_s3::Verdict::Answer(status, body) => {
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/xml")
                    .body(Full::new(body))
                    .map_err(|_| Dropped);
            }
            crate::strict_s3::Verdict::DeleteWithout {
                body: kept,
                refused,
            } => {
                // Checked above; the emulator gets the shorter body without them.
                for name in ["content-md5", "content-length"] {
                    parts.headers.remove(name);
                }
                crate::strict_s3::remove_checksums(&mut parts.headers);
                body = kept;
                refused_deletes = refused;
            }
        }
    }
    let mut accepted = None;
    if let Some(strict) = &shared.strict_api {
        match strict.on_request(&path, &parts.headers, &body) {
            crate::strict_api::Verdict::NotCovered => {}
            crate::strict_api::Verdict::Forward(datums) => accepted = Some(datums),
            crate::strict_api::Verdict::Refuse(r) => {
                return Ok(crate::strict_api::refusal_response(
                    &r,
                    style == ErrorStyle::Cbor,
                ));
            }
        }
    }
    let mut forward_body = body.clone();
    let mut fix: Option<ResponseFix> = None;
    if let Some(exchange) = &shared.exchange
        && let Some((new_body, f)) = exchange(&path, &parts.headers, &body)
    {
        forward_body = new_body;
        fix = Some(f);
    }
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{}", shared.upstream, path));
    for (name, value) in parts.headers.iter() {
        // A replaced body has another length; hyper sets it from the body.
        if fix.is_some() && name == http::header::CONTENT_LENGTH {
            continue;
        }
        builder = builder.header(name, value);
    }
    let upstream_req = builder.body(Full::new(forward_body)).map_err(|_| Dropped)?;
    let resp = shared
        .client
        .request(upstream_req)
        .await
        .map_err(|_| Dropped)?;
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let (rparts, rbody) = resp.into_parts();
    let mut rbody = rbody.collect().await.map_err(|_| Dropped)?.to_bytes();
    if let (Some(strict), Some(datums)) = (&shared.strict_api, accepted)
        && rparts.status.is_success()
    {
        strict.on_stored(&path, datums);
    }
    if fault == Some(Fault::DropAfterForward) {
        return Err(Dropped);
    }
    let mut rparts = rparts;
    if let Some(strict) = &shared.strict_s3 {
        let status = rparts.status;
        strict.on_response(
            &parts.method,
            &path,
            &parts.headers,
            status,
            &mut rparts.headers,
            &mut rbody,
        );
    }
    if rparts.status.is_success() && !refused_deletes.is_empty() {
        rbody = crate::strict_s3::add_delete_errors(&rbody, &refused_deletes);
        rparts.headers.remove(http::header::CONTENT_LENGTH);
    }
    if rparts.status.is_success()
        && let Some(fix) = fix
    {
        rbody = fix(&rbody);
        rparts.headers.remove(http::header::CONTENT_LENGTH);
        rparts.headers.remove("x-amz-crc32");
    }
    if rparts.status.is_success()
        && let Some(rewrite) = &shared.plan.rewrite
        && let Some(new_body) = rewrite(&path, &body, &rbody)
    {
        rbody = new_body;
        rparts.headers.remove(http::header::CONTENT_LENGTH);
        rparts.headers.remove("x-amz-crc32");
    }
    Ok(Response::from_parts(rparts, Full::new(rbody)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorStyle {
    Xml,
    Json,
    Cbor,
}

impl ErrorStyle {
    fn of(parts: &http::request::Parts) -> Self {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        if header("smithy-protocol").contains("cbor") {
            ErrorStyle::Cbor
        } else if header("content-type").contains("amz-json") {
            ErrorStyle::Json
        } else {
            ErrorStyle::Xml
        }
    }
}

fn error_response(style: ErrorStyle, status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let builder = Response::builder().status(status);
    let resp: Result<Response<Full<Bytes>>, http::Error> = match style {
        ErrorStyle::Xml => builder.header("content-type", "application/xml").body(Full::new(
            Bytes::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the fault proxy</Message><RequestId>fault</RequestId></Error>"
            )),
        )),
        ErrorStyle::Json => builder
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", code)
            .body(Full::new(Bytes::from(format!(
                "{{\"__type\":\"{code}\",\"message\":\"injected by the fault proxy\"}}"
            )))),
        // Access denied must be readable as such, so it gets a real RPCv2 CBOR error body
        // (and the awsQuery-compatible header CloudWatch sends). For the transient faults
        // the status alone is enough for the SDK's retry classifier: 503 with no body.
        ErrorStyle::Cbor if status == StatusCode::FORBIDDEN => builder
            .header("smithy-protocol", "rpc-v2-cbor")
            .header("content-type", "application/cbor")
            .header("x-amzn-query-error", format!("{code};Sender"))
            .body(Full::new(Bytes::from(cbor_error(
                code,
                "injected by the fault proxy",
            )))),
        ErrorStyle::Cbor => Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("smithy-protocol", "rpc-v2-cbor")
            .body(Full::new(Bytes::new())),
    };
    resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// `{"__type": code, "message": message}` in CBOR (RFC 8949): a map of two text-string
/// pairs, which is all an RPCv2 CBOR error body needs.
pub(crate) fn cbor_error(code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = minicbor::Encoder::new(&mut out);
    let _ = e
        .map(2)
        .and_then(|e| e.str("__type"))
        .and_then(|e| e.str(code))
        .and_then(|e| e.str("message"))
        .and_then(|e| e.str(message));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;

    #[tokio::test]
    async fn injects_and_counts_faults() {
        // Upstream: a tiny server that answers 200 "hello".
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let proxy = FaultProxy::start(&format!("http://{up}"), FaultPlan::all(0.5));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..200 {
            let req = Request::get(format!("{}/x", proxy.endpoint()))
                .body(Full::new(Bytes::new()))
                .unwrap();
            match client.request(req).await {
                Ok(r) if r.status() == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        assert!(ok > 50 && failed > 50, "ok={ok} failed={failed}");
        assert_eq!(proxy.stats().requests(), 200);
        assert_eq!(proxy.stats().injected_total(), failed);
        for f in ALL_FAULTS {
            assert!(proxy.stats().injected(f) > 0, "{f:?} never injected");
        }
        proxy.set_rate(0.0);
        let req = Request::get(format!("{}/x", proxy.endpoint()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200);
    }
}
