//! A stand-in for the ECS agent's task scale-in protection endpoint
//! (`${ECS_AGENT_URI}/task-protection/v1/state`), on loopback, stricter than the agent
//! where it can be: each rule below quotes the documentation or the agent's code it
//! follows. Sources: the Amazon ECS developer guide, "Task scale-in protection endpoint"
//! (DOC), the API reference of UpdateTaskProtection (API), and the agent's handler,
//! aws/amazon-ecs-agent `ecs-agent/tmds/handlers/taskprotection/v1/handlers/handlers.go`
//! (AGENT).
//!
//! Tests read what the task's protection was over time ([`EcsAgent::timeline`], with
//! lapses at expiry included) and every request ([`EcsAgent::requests`]); they switch
//! the agent into the documented failure answers with [`EcsAgent::set_mode`]. Transport
//! faults (500s, dropped connections) come from a [`crate::FaultProxy`] in front of it.
//! A process outside Rust (the Airflow tests) runs it as the `ecs-agent-standin` binary
//! and reads the same through `GET /_standin/state` and `PUT /_standin/mode`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::ServerThread;

/// The path the agent serves under `ECS_AGENT_URI` (AGENT: `TaskProtectionPath`).
pub const PROTECTION_PATH: &str = "/task-protection/v1/state";

const TASK_ARN: &str = "arn:aws:ecs:us-east-1:000000000000:task/standin/0123456789abcdef0";

/// How the stand-in answers, besides the request rules that always hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMode {
    /// Carries out valid requests.
    Normal,
    /// The task has no task-role credentials: 403 `AccessDeniedException` (AGENT:
    /// `getTaskCredentials`, "Invalid Request: no task IAM role credentials available for
    /// task", `http.StatusForbidden`).
    NoCredentials,
    /// The task role lacks the permission: ECS's `AccessDeniedException`, passed through
    /// with ECS's HTTP status 400 (AGENT: `logAndHandleECSError` returns the status of the
    /// ECS error; DOC's "Error" example is this answer).
    RoleDenied,
    /// ECS answers with a failure for this task: HTTP 200 and `{"failure": {...}}` (AGENT:
    /// `logAndValidateECSResponse`, one failure → `http.StatusOK` with the failure; DOC:
    /// "Failure", for example `TASK_NOT_VALID`).
    Failure(String),
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRequest {
    /// Since the stand-in started.
    pub at: Duration,
    /// `GET` or `PUT` (or what else was sent).
    pub method: String,
    /// The body as text.
    pub body: String,
    /// The status answered.
    pub status: u16,
}

struct State {
    started: Instant,
    minute: Duration,
    mode: AgentMode,
    enabled: bool,
    expires_at: Option<Instant>,
    /// Changes of the effective protection: `(when, protected)`.
    changes: Vec<(Instant, bool)>,
    requests: Vec<AgentRequest>,
}

impl State {
    /// Applies a lapse that happened by `now` (API: "Task-protection, by default, expires
    /// after 2 hours at which point Amazon ECS clears the protectionEnabled property").
    fn settle(&mut self, now: Instant) {
        if self.enabled
            && let Some(at) = self.expires_at
            && at <= now
        {
            self.enabled = false;
            self.expires_at = None;
            self.changes.push((at, false));
        }
    }

    fn set(&mut self, now: Instant, enabled: bool, minutes: Option<i64>) {
        self.settle(now);
        let was = self.enabled;
        self.enabled = enabled;
        // DOC: "If you don't specify the time, then the task is automatically protected for
        // 120 minutes (2 hours)." API: "The expiresInMinutes property is always reset when
        // you invoke this operation for a task that already has protectionEnabled set to true."
        self.expires_at = enabled.then(|| now + self.minute * minutes.unwrap_or(120) as u32);
        if was != enabled {
            self.changes.push((now, enabled));
        }
    }

    fn protection_doc(&self, now: Instant) -> Value {
        let expires = self.expires_at.map(|at| {
            let wall = SystemTime::now() + at.saturating_duration_since(now);
            humantime::format_rfc3339_millis(wall).to_string()
        });
        // DOC: "ExpirationDate: The epoch time when protection for the task will expire. If
        // the task is not protected, this value will be null."
        json!({"protection": {
            "ExpirationDate": expires,
            "ProtectionEnabled": self.enabled,
            "TaskArn": TASK_ARN,
        }})
    }
}

/// The stand-in, serving on its own thread until dropped.
pub struct EcsAgent {
    state: Arc<Mutex<State>>,
    server: ServerThread,
}

impl EcsAgent {
    /// Starts with real minutes.
    pub fn start() -> Self {
        Self::start_with_minute(Duration::from_secs(60))
    }

    /// Starts with `minute` as the length of one of `ExpiresInMinutes`' minutes, so that
    /// expiry and renewal can be tested in seconds; `ExpirationDate` is reported on the
    /// same scale.
    pub fn start_with_minute(minute: Duration) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("loopback"), minute)
    }

    /// Starts on `addr` (port 0 for any).
    pub fn start_on(addr: SocketAddr, minute: Duration) -> Self {
        let state = Arc::new(Mutex::new(State {
            started: Instant::now(),
            minute,
            mode: AgentMode::Normal,
            enabled: false,
            expires_at: None,
            changes: Vec::new(),
            requests: Vec::new(),
        }));
        let server = ServerThread::start(addr, state.clone(), handle);
        Self { state, server }
    }

    /// What ECS would put in `ECS_AGENT_URI` for this stand-in.
    pub fn agent_uri(&self) -> String {
        agent_uri(self.server.addr())
    }

    /// Switches how requests are answered.
    pub fn set_mode(&self, mode: AgentMode) {
        self.state.lock().expect("stand-in state").mode = mode;
    }

    /// Protects the task as an earlier process would have, for `minutes`.
    pub fn set_protected(&self, minutes: i64) {
        let mut s = self.state.lock().expect("stand-in state");
        s.set(Instant::now(), true, Some(minutes));
    }

    /// Whether the task is protected now.
    pub fn protected_now(&self) -> bool {
        let mut s = self.state.lock().expect("stand-in state");
        s.settle(Instant::now());
        s.enabled
    }

    /// The protection over time: `(since start, protected)` at every change, lapses at
    /// expiry included. Before the first entry the task was not protected.
    pub fn timeline(&self) -> Vec<(Duration, bool)> {
        let mut s = self.state.lock().expect("stand-in state");
        s.settle(Instant::now());
        let started = s.started;
        s.changes
            .iter()
            .map(|(at, on)| (at.saturating_duration_since(started), *on))
            .collect()
    }

    /// Time since the stand-in started.
    pub fn elapsed(&self) -> Duration {
        self.state.lock().expect("stand-in state").started.elapsed()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<AgentRequest> {
        self.state.lock().expect("stand-in state").requests.clone()
    }
}

/// `http://ADDR/api/<container id>`: ECS_AGENT_URI's form (AGENT: the path is
/// `/api/{endpointContainerID}/task-protection/v1/state`).
pub fn agent_uri(addr: SocketAddr) -> String {
    format!("http://{addr}/api/standin-container-0123")
}

/// Whether `protected` held at `at`, read from a [`EcsAgent::timeline`].
pub fn protected_at(timeline: &[(Duration, bool)], at: Duration) -> bool {
    timeline
        .iter()
        .take_while(|(t, _)| *t <= at)
        .last()
        .is_some_and(|(_, on)| *on)
}

fn error_doc(code: &str, message: &str) -> Value {
    // DOC "Error": {"requestID": ..., "error": {"Arn", "Code", "Message"}}.
    json!({"requestID": "standin-request", "error": {"Arn": TASK_ARN, "Code": code, "Message": message}})
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts")
}

/// The answer to one protection request (not yet recorded).
fn protection(state: &mut State, method: &Method, body: &[u8]) -> (StatusCode, Value) {
    let now = Instant::now();
    state.settle(now);
    let invalid = |message: &str| {
        (
            StatusCode::BAD_REQUEST,
            error_doc("InvalidParameterException", message),
        )
    };
    let no_credentials = (
        StatusCode::FORBIDDEN,
        error_doc(
            "AccessDeniedException",
            "Invalid Request: no task IAM role credentials available for task",
        ),
    );
    let ecs_denied = |action: &str| {
        (
            StatusCode::BAD_REQUEST,
            error_doc(
                "AccessDeniedException",
                &format!(
                    "User: arn:aws:sts::000000000000:assumed-role/standin-task-role/0123 is not authorized to perform: ecs:{action} on resource: {TASK_ARN} because no identity-based policy allows the ecs:{action} action"
                ),
            ),
        )
    };
    let failure = |reason: &str| {
        (
            StatusCode::OK,
            json!({"failure": {"Arn": TASK_ARN, "Detail": null, "Reason": reason}}),
        )
    };
    match *method {
        Method::GET => match &state.mode {
            AgentMode::NoCredentials => no_credentials,
            AgentMode::RoleDenied => ecs_denied("GetTaskProtection"),
            AgentMode::Failure(reason) => failure(reason),
            AgentMode::Normal => (StatusCode::OK, state.protection_doc(now)),
        },
        Method::PUT => {
            // AGENT: `jsonDecoder.DisallowUnknownFields()`; a body that does not decode
            // into {ProtectionEnabled *bool, ExpiresInMinutes *int64} is 400
            // "UpdateTaskProtection: failed to decode request". Stricter than the agent:
            // Go matches field names case-insensitively, the stand-in wants them exact.
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
                return invalid("UpdateTaskProtection: failed to decode request");
            };
            let mut enabled = None;
            let mut minutes = None;
            for (name, value) in &fields {
                match (name.as_str(), value) {
                    ("ProtectionEnabled", Value::Bool(b)) => enabled = Some(*b),
                    ("ProtectionEnabled", Value::Null) => {}
                    ("ExpiresInMinutes", Value::Number(n)) if n.as_i64().is_some() => {
                        minutes = n.as_i64()
                    }
                    ("ExpiresInMinutes", Value::Null) => {}
                    _ => return invalid("UpdateTaskProtection: failed to decode request"),
                }
            }
            // AGENT: "Invalid request: does not contain 'ProtectionEnabled' field", 400.
            let Some(enabled) = enabled else {
                return invalid("Invalid request: does not contain 'ProtectionEnabled' field");
            };
            match &state.mode {
                AgentMode::NoCredentials => return no_credentials,
                AgentMode::RoleDenied => return ecs_denied("UpdateTaskProtection"),
                AgentMode::Failure(reason) => return failure(reason),
                AgentMode::Normal => {}
            }
            if let Some(m) = minutes {
                // API: "You can specify a custom expiration period for task protection
                // from 1 minute to up to 2,880 minutes (48 hours)."
                if !(1..=2880).contains(&m) {
                    return invalid("expiresInMinutes must be between 1 and 2880");
                }
                // Stricter than documented: an expiry only means something with
                // protection on (DOC: "If you set protectionEnabled to true, you can use
                // the expiresInMinutes parameter").
                if !enabled {
                    return invalid("expiresInMinutes applies only when protectionEnabled is true");
                }
            }
            state.set(now, enabled, minutes);
            (StatusCode::OK, state.protection_doc(now))
        }
        // The agent routes only GET and PUT to this path.
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            error_doc("InvalidParameterException", "method not allowed"),
        ),
    }
}

fn control(state: &mut State, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
    match (method, path) {
        (&Method::GET, "/_standin/state") => {
            state.settle(Instant::now());
            let started = state.started;
            let timeline: Vec<Value> = state
                .changes
                .iter()
                .map(|(at, on)| json!([at.saturating_duration_since(started).as_secs_f64(), on]))
                .collect();
            let requests: Vec<Value> = state
                .requests
                .iter()
                .map(|r| json!({"at": r.at.as_secs_f64(), "method": r.method, "body": r.body, "status": r.status}))
                .collect();
            (
                StatusCode::OK,
                json!({"now": started.elapsed().as_secs_f64(), "protected": state.enabled, "timeline": timeline, "requests": requests}),
            )
        }
        (&Method::PUT, "/_standin/mode") => {
            let text = String::from_utf8_lossy(body);
            state.mode = match text.trim() {
                "normal" => AgentMode::Normal,
                "no_credentials" => AgentMode::NoCredentials,
                "role_denied" => AgentMode::RoleDenied,
                other => match other.strip_prefix("failure:") {
                    Some(reason) => AgentMode::Failure(reason.to_string()),
                    None => return (StatusCode::BAD_REQUEST, json!({"unknown mode": other})),
                },
            };
            (StatusCode::OK, json!({}))
        }
        _ => (StatusCode::NOT_FOUND, json!({"not found": path})),
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut s = state.lock().expect("stand-in state");
    if path.starts_with("/_standin/") {
        let (status, doc) = control(&mut s, &method, &path, &body);
        return Ok(answer(status, doc));
    }
    let (status, doc) = if path.starts_with("/api/") && path.ends_with(PROTECTION_PATH) {
        protection(&mut s, &method, &body)
    } else {
        // AGENT: an unknown container id is 404 ResourceNotFoundException.
        (
            StatusCode::NOT_FOUND,
            error_doc(
                "ResourceNotFoundException",
                "Failed to find a task for the request",
            ),
        )
    };
    let at = s.started.elapsed();
    s.requests.push(AgentRequest {
        at,
        method: method.to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: status.as_u16(),
    });
    Ok(answer(status, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(agent: &EcsAgent, method: &str, body: &str) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("{}{PROTECTION_PATH}", agent.agent_uri());
        let method: Method = method.parse().unwrap();
        let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
        let (status, bytes) = rt
            .block_on(airside_core::ecs::request(
                method,
                &url,
                body,
                Duration::from_secs(5),
            ))
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn the_documented_request_rules_hold() {
        let agent = EcsAgent::start_with_minute(Duration::from_millis(100));
        for bad in [
            r#"{"ProtectionEnabled":true,"TaskArn":"x"}"#,
            r#"{"protectionEnabled":true}"#,
            r#"{"ProtectionEnabled":"yes"}"#,
            "not json",
        ] {
            let (status, doc) = call(&agent, "PUT", bad);
            assert_eq!(status, 400, "{bad}");
            assert_eq!(doc["error"]["Code"], "InvalidParameterException");
        }
        let (status, doc) = call(&agent, "PUT", r#"{"ExpiresInMinutes":5}"#);
        assert_eq!(status, 400);
        assert!(
            doc["error"]["Message"]
                .as_str()
                .unwrap()
                .contains("ProtectionEnabled")
        );
        for minutes in [0, 2881] {
            let body = format!(r#"{{"ProtectionEnabled":true,"ExpiresInMinutes":{minutes}}}"#);
            assert_eq!(call(&agent, "PUT", &body).0, 400);
        }
        assert!(agent.timeline().is_empty());

        let (status, doc) = call(
            &agent,
            "PUT",
            r#"{"ProtectionEnabled":true,"ExpiresInMinutes":2}"#,
        );
        assert_eq!(status, 200);
        assert_eq!(doc["protection"]["ProtectionEnabled"], true);
        assert!(doc["protection"]["ExpirationDate"].is_string());
        assert!(agent.protected_now());
        // Two stand-in minutes later the protection has lapsed.
        std::thread::sleep(Duration::from_millis(250));
        assert!(!agent.protected_now());
        let (_, doc) = call(&agent, "GET", "");
        assert_eq!(doc["protection"]["ProtectionEnabled"], false);
        assert!(doc["protection"]["ExpirationDate"].is_null());
        let timeline = agent.timeline();
        assert_eq!(timeline.len(), 2);
        assert!(timeline[0].1 && !timeline[1].1);
        let lasted = timeline[1].0 - timeline[0].0;
        assert!(
            lasted >= Duration::from_millis(200) && lasted < Duration::from_millis(250),
            "{lasted:?}"
        );
        assert!(protected_at(
            &timeline,
            timeline[0].0 + Duration::from_millis(100)
        ));

        // Without an expiry: 120 minutes.
        let (_, doc) = call(&agent, "PUT", r#"{"ProtectionEnabled":true}"#);
        let expires =
            humantime::parse_rfc3339_weak(doc["protection"]["ExpirationDate"].as_str().unwrap())
                .unwrap();
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_millis(11_500) && left <= Duration::from_millis(12_100),
            "{left:?}"
        );
    }

    #[test]
    fn the_documented_failure_answers() {
        let agent = EcsAgent::start();
        agent.set_mode(AgentMode::NoCredentials);
        let (status, doc) = call(&agent, "PUT", r#"{"ProtectionEnabled":true}"#);
        assert_eq!(
            (status, doc["error"]["Code"].as_str()),
            (403, Some("AccessDeniedException"))
        );
        agent.set_mode(AgentMode::RoleDenied);
        let (status, doc) = call(&agent, "GET", "");
        assert_eq!(
            (status, doc["error"]["Code"].as_str()),
            (400, Some("AccessDeniedException"))
        );
        agent.set_mode(AgentMode::Failure("TASK_NOT_VALID".into()));
        let (status, doc) = call(&agent, "PUT", r#"{"ProtectionEnabled":true}"#);
        assert_eq!(
            (status, doc["failure"]["Reason"].as_str()),
            (200, Some("TASK_NOT_VALID"))
        );
        assert!(!agent.protected_now());
        assert_eq!(agent.requests().len(), 3);
    }
}
