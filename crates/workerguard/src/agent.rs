//! Protection requests out, the ECS agent's answers in: the task scale-in protection
//! endpoint, `${ECS_AGENT_URI}/task-protection/v1/state`.
//!
//! The contract, from the Amazon ECS developer guide ("Task scale-in protection
//! endpoint") and the agent's handler (aws/amazon-ecs-agent,
//! `ecs-agent/tmds/handlers/taskprotection/v1/handlers/handlers.go`):
//! - `PUT` with `{"ProtectionEnabled": bool, "ExpiresInMinutes": n}` sets it; the agent
//!   decodes with unknown fields disallowed (400), so exactly those two fields are sent;
//!   `GET` reads it.
//! - 200 with `{"protection": {"ProtectionEnabled", "ExpirationDate", "TaskArn"}}` is
//!   success; 200 with `{"failure": {"Arn", "Reason", "Detail"}}` is ECS refusing for this
//!   task (for example `TASK_NOT_VALID` for a task outside a service), a failure.
//! - Errors carry `{"error": {"Code", "Message", "Arn"}}`: 403 `AccessDeniedException`
//!   when the task has no task-role credentials; ECS's own errors pass through with ECS's
//!   status, so the role lacking `ecs:UpdateTaskProtection` comes back as 400
//!   `AccessDeniedException` and throttling as 400 `ThrottlingException`: the code decides
//!   the class before the status does. A timed-out ECS call is 504 `RequestCanceled`.

use std::time::{Duration, SystemTime};

use airside_core::aws::{ErrorClass, classify_code};
use serde::Deserialize;

/// The protection state the agent reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// Whether the task is protected.
    pub enabled: bool,
    /// When ECS clears it, if protected (the agent's `ExpirationDate`).
    pub expires: Option<SystemTime>,
}

/// A request the agent did not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// No answer: refused, dropped or timed-out connection.
    #[error("no answer from the ECS agent at {url}: {reason}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// An error answer.
    #[error("the ECS agent answered HTTP {status} {code}: {message}")]
    Error {
        /// The HTTP status.
        status: u16,
        /// `error.Code` (empty when the body had none).
        code: String,
        /// `error.Message`, or the body.
        message: String,
    },
    /// HTTP 200 with a `failure`: ECS refused to change this task's protection.
    #[error("ECS refused task protection: {reason} {detail}")]
    Failure {
        /// `failure.Reason`.
        reason: String,
        /// `failure.Detail`.
        detail: String,
    },
    /// HTTP 200 with a body that is neither.
    #[error("the ECS agent's answer is not the documented JSON: {0}")]
    Malformed(String),
}

impl AgentError {
    /// The class for the shared retry policy: a failure answer is retried like a transient
    /// error (ECS may accept the next call: a task still being registered with its service).
    pub fn class(&self) -> ErrorClass {
        match self {
            AgentError::Unreachable { .. }
            | AgentError::Failure { .. }
            | AgentError::Malformed(_) => ErrorClass::Transient,
            AgentError::Error { status, code, .. } => {
                let code = (!code.is_empty()).then_some(code.as_str());
                match (code, *status) {
                    // A timed-out ECS call behind the agent.
                    (Some("RequestCanceled" | "RequestTimeout" | "RequestError"), _) => {
                        ErrorClass::Transient
                    }
                    _ => classify_code(code, Some(*status)),
                }
            }
        }
    }

    /// The label counted for a failure answer (`failure.Reason`), if this is one.
    pub fn failure_reason(&self) -> Option<&str> {
        match self {
            AgentError::Failure { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// The task protection endpoint of one task's agent.
#[derive(Debug, Clone)]
pub struct Agent {
    url: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Answer {
    protection: Option<ProtectionDoc>,
    failure: Option<FailureDoc>,
    error: Option<ErrorDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProtectionDoc {
    protection_enabled: bool,
    expiration_date: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailureDoc {
    reason: Option<String>,
    detail: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorDoc {
    code: Option<String>,
    message: Option<String>,
}

impl Agent {
    /// The endpoint under `agent_uri` (the value of `ECS_AGENT_URI`); each request gives
    /// up after `timeout`.
    pub fn new(agent_uri: &str, timeout: Duration) -> Self {
        Self {
            url: format!(
                "{}/task-protection/v1/state",
                agent_uri.trim_end_matches('/')
            ),
            timeout,
        }
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Protects the task for `minutes` (`Some`), or clears its protection (`None`).
    pub async fn set(&self, minutes: Option<u32>) -> Result<Protection, AgentError> {
        let body = match minutes {
            Some(m) => serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": m}),
            None => serde_json::json!({"ProtectionEnabled": false}),
        };
        self.call(http::Method::PUT, Some(body.to_string().into_bytes()))
            .await
    }

    /// Reads the task's protection.
    pub async fn get(&self) -> Result<Protection, AgentError> {
        self.call(http::Method::GET, None).await
    }

    async fn call(
        &self,
        method: http::Method,
        body: Option<Vec<u8>>,
    ) -> Result<Protection, AgentError> {
        let (status, body) = airside_core::ecs::request(method, &self.url, body, self.timeout)
            .await
            .map_err(|reason| AgentError::Unreachable {
                url: self.url.clone(),
                reason,
            })?;
        read_answer(status, &body)
    }
}

/// Reads one answer of the endpoint (see the module documentation).
pub fn read_answer(status: u16, body: &[u8]) -> Result<Protection, AgentError> {
    let parsed: Option<Answer> = serde_json::from_slice(body).ok();
    if status != 200 {
        let error = parsed.and_then(|a| a.error);
        let text = || String::from_utf8_lossy(body).chars().take(300).collect();
        return Err(AgentError::Error {
            status,
            code: error
                .as_ref()
                .and_then(|e| e.code.clone())
                .unwrap_or_default(),
            message: error.and_then(|e| e.message).unwrap_or_else(text),
        });
    }
    let answer = parsed.ok_or_else(|| {
        AgentError::Malformed(String::from_utf8_lossy(body).chars().take(300).collect())
    })?;
    if let Some(f) = answer.failure {
        return Err(AgentError::Failure {
            reason: f.reason.unwrap_or_else(|| "unknown".into()),
            detail: f.detail.unwrap_or_default(),
        });
    }
    if let Some(e) = answer.error {
        return Err(AgentError::Error {
            status,
            code: e.code.unwrap_or_default(),
            message: e.message.unwrap_or_default(),
        });
    }
    let p = answer
        .protection
        .ok_or_else(|| AgentError::Malformed("neither protection nor failure".into()))?;
    let expires = match p.expiration_date.as_deref() {
        Some(text) if p.protection_enabled => Some(
            humantime::parse_rfc3339_weak(text)
                .map_err(|e| AgentError::Malformed(format!("ExpirationDate {text:?}: {e}")))?,
        ),
        _ => None,
    };
    Ok(Protection {
        enabled: p.protection_enabled,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_answers_are_read() {
        let ok = br#"{"protection":{"ExpirationDate":"2022-10-06T02:29:16Z","ProtectionEnabled":true,"TaskArn":"arn:aws:ecs:us-west-2:111122223333:task/1234567890abcdef0"}}"#;
        let p = read_answer(200, ok).unwrap();
        assert!(p.enabled);
        assert_eq!(
            p.expires.unwrap(),
            humantime::parse_rfc3339("2022-10-06T02:29:16Z").unwrap()
        );
        let off =
            br#"{"protection":{"ExpirationDate":null,"ProtectionEnabled":false,"TaskArn":"x"}}"#;
        assert_eq!(
            read_answer(200, off).unwrap(),
            Protection {
                enabled: false,
                expires: None
            }
        );
        let failure = br#"{"failure":{"Arn":"x","Detail":null,"Reason":"TASK_NOT_VALID"}}"#;
        let e = read_answer(200, failure).unwrap_err();
        assert_eq!(e.failure_reason(), Some("TASK_NOT_VALID"));
        assert_eq!(e.class(), ErrorClass::Transient);
    }

    #[test]
    fn errors_are_classed_by_their_code_first() {
        let denied = br#"{"requestID":"1","error":{"Arn":"x","Code":"AccessDeniedException","Message":"not authorized to perform: ecs:UpdateTaskProtection"}}"#;
        // Through the agent, ECS's AccessDeniedException keeps ECS's 400.
        assert_eq!(
            read_answer(400, denied).unwrap_err().class(),
            ErrorClass::AccessDenied
        );
        assert_eq!(
            read_answer(403, denied).unwrap_err().class(),
            ErrorClass::AccessDenied
        );
        let throttled = br#"{"error":{"Code":"ThrottlingException","Message":"Rate exceeded"}}"#;
        assert_eq!(
            read_answer(400, throttled).unwrap_err().class(),
            ErrorClass::Throttled
        );
        let canceled = br#"{"error":{"Code":"RequestCanceled","Message":"Timed out calling Amazon ECS Task Protection API"}}"#;
        assert_eq!(
            read_answer(504, canceled).unwrap_err().class(),
            ErrorClass::Transient
        );
        let invalid = br#"{"error":{"Code":"InvalidParameterException","Message":"UpdateTaskProtection: failed to decode request"}}"#;
        assert_eq!(
            read_answer(400, invalid).unwrap_err().class(),
            ErrorClass::Invalid
        );
        assert_eq!(
            read_answer(500, b"oops").unwrap_err().class(),
            ErrorClass::Transient
        );
        let e = read_answer(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(e.to_string().contains("bad gateway"), "{e}");
        assert!(matches!(
            read_answer(200, b"{}"),
            Err(AgentError::Malformed(_))
        ));
        assert!(matches!(
            read_answer(200, b"not json"),
            Err(AgentError::Malformed(_))
        ));
    }
}
