//! ECS task metadata (endpoint v4), when the daemon runs in an ECS task.
//!
//! ECS sets `ECS_CONTAINER_METADATA_URI_V4` in every container; outside ECS
//! it is absent and [`TaskMetadata::from_env`] returns `None`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// The environment variable ECS sets.
pub const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// What the daemons attach to their output about the task they run in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetadata {
    /// The cluster ARN or name.
    pub cluster: String,
    /// The task ARN.
    pub task_arn: String,
    /// The task definition family.
    pub family: String,
    /// The task definition revision.
    pub revision: String,
    /// This container's name.
    pub container: String,
    /// The availability zone, when reported.
    pub availability_zone: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskDoc {
    #[serde(default)]
    cluster: String,
    #[serde(default, rename = "TaskARN")]
    task_arn: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    revision: String,
    #[serde(default)]
    availability_zone: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDoc {
    #[serde(default)]
    name: String,
}

/// Reading task metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The endpoint could not be reached or answered with an error.
    #[error("ECS metadata request to {url} failed: {reason}")]
    Request {
        /// The URL requested.
        url: String,
        /// Why.
        reason: String,
    },
    /// The answer was not the expected JSON.
    #[error("ECS metadata from {url} is not valid: {source}")]
    Parse {
        /// The URL requested.
        url: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl TaskMetadata {
    /// Reads the metadata if `ECS_CONTAINER_METADATA_URI_V4` is set; `None` outside ECS.
    pub async fn from_env() -> Option<Result<Self, MetadataError>> {
        let base = std::env::var(METADATA_ENV).ok().filter(|v| !v.is_empty())?;
        Some(Self::fetch(&base).await)
    }

    /// Reads `{base}/task` and `{base}` (this container).
    pub async fn fetch(base: &str) -> Result<Self, MetadataError> {
        let base = base.trim_end_matches('/');
        let task: TaskDoc = get_json(&format!("{base}/task")).await?;
        let container: ContainerDoc = get_json(base).await?;
        Ok(Self {
            cluster: task.cluster,
            task_arn: task.task_arn,
            family: task.family,
            revision: task.revision,
            container: container.name,
            availability_zone: task.availability_zone,
        })
    }

    /// The task id (last segment of the ARN), handy for object names.
    pub fn task_id(&self) -> &str {
        self.task_arn.rsplit('/').next().unwrap_or("")
    }
}

async fn get_json<T: for<'de> Deserialize<'de>>(url: &str) -> Result<T, MetadataError> {
    let (status, body) = request(http::Method::GET, url, None, Duration::from_secs(5))
        .await
        .map_err(|reason| MetadataError::Request {
            url: url.to_string(),
            reason,
        })?;
    if !(200..300).contains(&status) {
        return Err(MetadataError::Request {
            url: url.to_string(),
            reason: format!("HTTP {status}"),
        });
    }
    serde_json::from_slice(&body).map_err(|source| MetadataError::Parse {
        url: url.to_string(),
        source,
    })
}

/// One plain-HTTP request to an endpoint the ECS agent serves inside the task (task
/// metadata, task protection), with a JSON body when `body` is given: the status and the
/// whole answer, or why there was none (a bad URL, a refused or dropped connection, no
/// answer within `timeout`). The agent's endpoints are link-local HTTP, never TLS.
pub async fn request(
    method: http::Method,
    url: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = http::Request::builder().method(method).uri(uri);
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // hyper's Display says only "client error (Connect)": the cause says which.
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    #[tokio::test]
    async fn reads_task_and_container_documents() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let body = if req.uri().path().ends_with("/task") {
                            r#"{"Cluster":"arn:aws:ecs:eu-west-1:000000000000:cluster/airflow","TaskARN":"arn:aws:ecs:eu-west-1:000000000000:task/airflow/abc123","Family":"airflow-worker","Revision":"7","AvailabilityZone":"eu-west-1a","Containers":[]}"#
                        } else {
                            r#"{"Name":"logship","DockerId":"x"}"#
                        };
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let md = TaskMetadata::fetch(&format!("http://{addr}/v4/abc"))
            .await
            .unwrap();
        assert_eq!(md.family, "airflow-worker");
        assert_eq!(md.container, "logship");
        assert_eq!(md.task_id(), "abc123");
        assert_eq!(md.revision, "7");
    }
}
