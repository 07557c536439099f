//! AWS client setup and error classification shared by every daemon.
//!
//! * Configuration comes from the standard chain (environment including
//!   `AWS_ENDPOINT_URL`, ECS container credentials, web identity, IMDS) via
//!   `aws-config`.
//! * Names are resolved by hickory (pure Rust, reads `/etc/resolv.conf` and
//!   `/etc/hosts`), because a static glibc binary in an empty image cannot load
//!   glibc's NSS modules and `getaddrinfo` would fail there.
//! * TLS is rustls with the system CA bundle (`/etc/ssl/certs`, or `SSL_CERT_FILE`).
//! * [`classify`] turns any SDK error into an [`ErrorClass`] that retry loops
//!   and exit codes can read.

use std::net::IpAddr;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpClient};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use hickory_resolver::TokioResolver;

/// A DNS resolver for the AWS SDK backed by hickory (no libc NSS involved).
#[derive(Clone)]
pub struct HickoryDns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for HickoryDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HickoryDns")
    }
}

impl HickoryDns {
    /// Builds a resolver from `/etc/resolv.conf` and `/etc/hosts`.
    pub fn from_system() -> Result<Self, AwsSetupError> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| AwsSetupError::Dns(e.to_string()))?
            .build();
        Ok(Self { resolver })
    }

    /// Resolves a name to addresses (IP literals come back as they are).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveDnsError> {
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(vec![ip]);
        }
        let found = self
            .resolver
            .lookup_ip(name)
            .await
            .map_err(ResolveDnsError::new)?;
        Ok(found.iter().collect())
    }
}

impl ResolveDns for HickoryDns {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move { self.lookup(name).await })
    }
}

/// Settings every daemon passes when it builds its AWS clients.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// SDK-level attempts per request (the SDK's own retry: 5xx, throttling, dropped connections).
    pub max_attempts: u32,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// AWS setup failed before any request was made.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    /// The system resolver configuration could not be read.
    #[error("cannot set up DNS resolution: {0} (is /etc/resolv.conf present?)")]
    Dns(String),
    /// No region could be found.
    #[error(
        "no AWS region configured: set AWS_REGION (ECS sets it for you; for the local emulator any region works, e.g. us-east-1)"
    )]
    NoRegion,
}

impl crate::exit::HasExitCode for AwsSetupError {
    /// Both are the container's setup (no resolver configuration, no region), which
    /// the operator fixes in the task definition: a usage error in every daemon.
    fn exit_code(&self) -> crate::ExitCode {
        crate::ExitCode::Usage
    }
}

/// The HTTP client every airside SDK client uses: rustls (ring) with the system CA bundle,
/// names resolved by [`HickoryDns`]. Tests building their own `SdkConfig` use it too.
pub fn http_client() -> Result<SharedHttpClient, AwsSetupError> {
    let dns = HickoryDns::from_system()?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_with_resolver(dns))
}

/// A bare HTTP connector with the same TLS, DNS and timeouts as the SDK clients built from
/// `config`, for a request path that bypasses the SDK's orchestrator (dagsync's direct
/// GetObject). It keeps a connection pool of its own.
pub fn http_connector(
    config: &SdkConfig,
) -> Result<aws_smithy_http_client::Connector, AwsSetupError> {
    let dns = HickoryDns::from_system()?;
    let timeouts = config.timeout_config();
    let settings = HttpConnectorSettings::builder();
    let settings = match timeouts.and_then(|t| t.connect_timeout()) {
        Some(t) => settings.connect_timeout(t),
        None => settings,
    };
    let settings = match timeouts.and_then(|t| t.read_timeout()) {
        Some(t) => settings.read_timeout(t),
        None => settings,
    };
    Ok(aws_smithy_http_client::Connector::builder()
        .connector_settings(settings.build())
        .sleep_impl(aws_smithy_async::rt::sleep::TokioSleep::new())
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_with_resolver(dns))
}

/// Loads the SDK configuration from the standard chain with airside's HTTP client.
pub async fn load(settings: &AwsSettings) -> Result<SdkConfig, AwsSetupError> {
    let http_client = http_client()?;
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .read_timeout(settings.read_timeout)
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        return Err(AwsSetupError::NoRegion);
    }
    Ok(config)
}

/// Whether S3 requests should use path-style addressing: true when a custom
/// endpoint is configured (emulators, VPC interface endpoints by URL), where
/// virtual-hosted names do not resolve.
pub fn use_path_style(config: &SdkConfig) -> bool {
    config.endpoint_url().is_some()
}

/// What kind of failure an AWS call had, for retry decisions and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Worth retrying: 5xx, timeouts, dropped connections.
    Transient,
    /// Worth retrying more slowly: the service asked us to back off.
    Throttled,
    /// Credentials missing, invalid, expired, or not allowed.
    AccessDenied,
    /// The bucket, stream or other named resource does not exist.
    NotFound,
    /// The request itself is wrong; retrying will not help.
    Invalid,
}

impl ErrorClass {
    /// Whether a retry may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Throttled)
    }

    /// The exit code a daemon should use when it gives up on this kind of error.
    pub fn exit_code(self) -> crate::ExitCode {
        match self {
            ErrorClass::AccessDenied => crate::ExitCode::AccessDenied,
            ErrorClass::NotFound | ErrorClass::Invalid => crate::ExitCode::Usage,
            ErrorClass::Transient | ErrorClass::Throttled => crate::ExitCode::Other,
        }
    }

    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Throttled => "throttled",
            ErrorClass::AccessDenied => "access_denied",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Invalid => "invalid",
        }
    }
}

const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
];

const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "SlowDown",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "ServiceUnavailableException",
    "LimitExceededException",
];

const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchBucket",
    "ResourceNotFoundException",
    "ResourceNotFound",
];

/// Classifies an error code and HTTP status as returned by an AWS service.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    if let Some(code) = code {
        if DENIED_CODES.contains(&code) {
            return ErrorClass::AccessDenied;
        }
        if THROTTLE_CODES.contains(&code) {
            return ErrorClass::Throttled;
        }
        if NOT_FOUND_CODES.contains(&code) {
            return ErrorClass::NotFound;
        }
    }
    match status {
        Some(429) | Some(503) => ErrorClass::Throttled,
        Some(s) if s >= 500 => ErrorClass::Transient,
        Some(401) | Some(403) => ErrorClass::AccessDenied,
        Some(404) => ErrorClass::NotFound,
        Some(_) => ErrorClass::Invalid,
        None => ErrorClass::Transient,
    }
}

/// Classifies any SDK error.
pub fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    err: &SdkError<E, HttpResponse>,
) -> ErrorClass {
    match err {
        SdkError::ServiceError(ctx) => {
            classify_code(ctx.err().code(), Some(ctx.raw().status().as_u16()))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient
        }
        // Building the request failed: for example no credentials could be loaded at all.
        SdkError::ConstructionFailure(_) => {
            let text = format!("{:?}", err);
            if text.contains("credential") || text.contains("Credential") {
                ErrorClass::AccessDenied
            } else {
                ErrorClass::Invalid
            }
        }
        _ => ErrorClass::Transient,
    }
}

/// An SDK call's result with its error classified and described: what the retry policy
/// and the logs take.
pub fn classified<T, E>(
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Result<T, (ErrorClass, String)>
where
    E: ProvideErrorMetadata + std::error::Error + std::fmt::Debug + 'static,
{
    result.map_err(|e| (classify(&e), describe(&e)))
}

/// Formats an SDK error with its code and message (the SDK's Display says only "service error").
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            match ctx.err().code() {
                Some(code) => {
                    let msg = ctx.err().message().unwrap_or("");
                    format!("{code} (HTTP {status}): {msg}")
                }
                // A HEAD answer (HeadBucket, HeadObject) has no body and so no error code:
                // name what the status means rather than print "unknown".
                None => format!("{} (HTTP {status}, no error body)", status_meaning(status)),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// What an HTTP status means when the answer carries no AWS error code.
fn status_meaning(status: u16) -> &'static str {
    match status {
        401 | 403 => "AccessDenied",
        404 => "NotFound",
        301 | 307 => "PermanentRedirect (the bucket is in another region)",
        429 | 503 => "SlowDown",
        s if s >= 500 => "InternalError",
        _ => "unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_classes() {
        assert_eq!(
            classify_code(Some("SlowDown"), Some(503)),
            ErrorClass::Throttled
        );
        assert_eq!(
            classify_code(Some("AccessDenied"), Some(403)),
            ErrorClass::AccessDenied
        );
        assert_eq!(
            classify_code(Some("NoSuchBucket"), Some(404)),
            ErrorClass::NotFound
        );
        assert_eq!(
            classify_code(Some("InternalError"), Some(500)),
            ErrorClass::Transient
        );
        assert_eq!(classify_code(None, Some(429)), ErrorClass::Throttled);
        assert_eq!(
            classify_code(Some("InvalidArgument"), Some(400)),
            ErrorClass::Invalid
        );
        assert!(ErrorClass::Throttled.is_retryable());
        assert!(!ErrorClass::AccessDenied.is_retryable());
        assert_eq!(
            ErrorClass::AccessDenied.exit_code(),
            crate::ExitCode::AccessDenied
        );
        assert_eq!(ErrorClass::NotFound.exit_code(), crate::ExitCode::Usage);
    }

    #[tokio::test]
    async fn hickory_returns_ip_literals_without_a_query() {
        let dns = HickoryDns::from_system().unwrap();
        assert_eq!(
            dns.lookup("127.0.0.1").await.unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            dns.lookup("[::1]").await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn hickory_reads_etc_hosts() {
        let dns = HickoryDns::from_system().unwrap();
        let found = dns.lookup("localhost").await.unwrap();
        assert!(found.iter().any(|ip| ip.is_loopback()), "{found:?}");
    }
}
