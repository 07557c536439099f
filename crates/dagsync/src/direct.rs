//! GetObject without the SDK's per-request machinery.
//!
//! A full sync of a 2,000-file DAG tree is 2,000 GetObject calls, and for DAG-sized
//! objects the SDK's orchestrator cost more CPU than everything else together: endpoint
//! rules, auth-scheme resolution, a dozen interceptors (the user-agent one formats its
//! header anew for every call), a SigV4 signer that derives its key and builds the
//! canonical request through `fmt` on every call, and the response deserialiser
//! (callgrind: about 0.45 M of the 0.75 M instructions per object). This module sends the
//! same signed GET over the same TLS and DNS stack with none of that.
//!
//! Nothing about *where* and *how* to call S3 is decided here:
//! * the endpoint, the addressing style and the signing scope come from one presigned
//!   GetObject made by the S3 client itself ([`DirectGet::prepare`]), so
//!   `AWS_ENDPOINT_URL*`, FIPS, dual-stack and path-style settings apply exactly as they do
//!   to every other call; an endpoint that needs anything but plain SigV4 (S3 Express,
//!   multi-region access points) is left to the SDK;
//! * credentials come from the client's own credentials provider, refreshed before they
//!   expire;
//! * the signing key and the signature are `aws_sigv4`'s; a property test checks that the
//!   Authorization header built here equals the one `aws_sigv4`'s request signer builds;
//! * the connection comes from `aws_smithy_http_client` with airside's TLS and DNS.
//!
//! Only the happy path runs here. Anything but 200 or 412 (an error status, a redirect, a
//! throttle, a dropped connection, a stalled body, a skewed clock) is handed back, and the
//! caller repeats the request through the SDK, which retries and classifies it as it does
//! every other call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_smithy_runtime_api::client::http::{HttpConnector, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::verify::CHECKSUM_MODE;

/// What S3 wants percent-encoded in a key's path: everything but RFC 3986's unreserved
/// characters and `/` (the SDK's "greedy label" rule; S3 does not encode twice).
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// SHA-256 of the empty body, the payload hash of every GET.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Credentials that expire sooner than this are refreshed first (ECS task-role
/// credentials are rotated well before this; static ones have no expiry).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Where and under which scope to send, as the SDK resolved it for this bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `scheme://authority`.
    origin: String,
    /// The Host header (the authority).
    host: String,
    /// The path before the key: `/BUCKET` (path-style) or empty (virtual-hosted).
    base_path: String,
    /// Signing region.
    region: String,
    /// Signing name (`s3`).
    service: String,
}

/// The answer to one direct GET.
pub(crate) enum Answer {
    /// 200: the object's bytes follow, with how to verify them (from the answer's
    /// checksum and encryption headers).
    Body(ByteStream, crate::verify::Check),
    /// 412: the object is no longer the listed version.
    Changed,
}

/// Credentials with the signing key derived for one day.
struct Signer {
    credentials: Credentials,
    date: String,
    key: Vec<u8>,
}

/// Sends GetObject requests directly (see the module docs).
pub(crate) struct DirectGet {
    target: Target,
    connector: SharedHttpConnector,
    provider: SharedCredentialsProvider,
    signer: tokio::sync::Mutex<Option<Signer>>,
    /// The longest silence while reading a body.
    body_timeout: Duration,
}

impl std::fmt::Debug for DirectGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectGet")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl DirectGet {
    /// Asks the S3 client to presign a GetObject of `probe_key` and reads the endpoint and
    /// signing scope from it. `Ok(None)`: this endpoint is not for the direct path (no
    /// credentials, or an auth scheme other than SigV4); the reason is logged once.
    /// `Err`: presigning failed (for example credentials could not be loaded); try again
    /// later.
    pub(crate) async fn prepare(
        client: &aws_sdk_s3::Client,
        provider: Option<SharedCredentialsProvider>,
        connector: SharedHttpConnector,
        body_timeout: Duration,
        bucket: &str,
        probe_key: &str,
    ) -> Result<Option<Self>, String> {
        let Some(provider) = provider else {
            tracing::info!("direct GetObject not used: no credentials provider (anonymous)");
            return Ok(None);
        };
        let presign = PresigningConfig::expires_in(Duration::from_secs(60))
            .map_err(|e| format!("presigning config: {e}"))?;
        let presigned = client
            .get_object()
            .bucket(bucket)
            .key(probe_key)
            .presigned(presign)
            .await
            .map_err(|e| format!("presigning GetObject: {}", airside_core::aws::describe(&e)))?;
        match Target::from_presigned(presigned.uri(), presigned.headers(), probe_key) {
            Ok(target) => Ok(Some(DirectGet {
                target,
                connector,
                provider,
                signer: tokio::sync::Mutex::new(None),
                body_timeout,
            })),
            Err(why) => {
                tracing::info!(reason = %why, "direct GetObject not used; every object goes through the SDK");
                Ok(None)
            }
        }
    }

    /// The longest silence while reading a body.
    pub(crate) fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    /// GETs `key` if its ETag is still `etag`. `Err` says why the caller should repeat the
    /// request through the SDK.
    pub(crate) async fn get(&self, key: &str, etag: &str) -> Result<Answer, String> {
        if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            return Err(format!("ETag {etag:?} is not a plain token"));
        }
        let now = SystemTime::now();
        let (credentials, key_bytes, date) = self.signing_material(now).await?;
        let amz_date = amz_date(now);
        let path = format!(
            "{}/{}",
            self.target.base_path,
            utf8_percent_encode(key, KEY_ENCODE)
        );
        let if_match = format!("\"{etag}\"");
        let t = &self.target;
        let authorization = authorization(&Signing {
            access_key: credentials.access_key_id(),
            signing_key: &key_bytes,
            date: &date,
            amz_date: &amz_date,
            region: &t.region,
            service: &t.service,
            host: &t.host,
            path: &path,
            if_match: &if_match,
            session_token: credentials.session_token(),
        });
        let mut request = http::Request::builder()
            .method("GET")
            .uri(format!("{}{}", t.origin, path))
            .header("host", &t.host)
            .header("if-match", &if_match)
            .header(CHECKSUM_MODE.0, CHECKSUM_MODE.1)
            .header("x-amz-content-sha256", EMPTY_SHA256)
            .header("x-amz-date", &amz_date)
            .header("authorization", authorization)
            .header(
                "user-agent",
                concat!("airside-dagsync/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = credentials.session_token() {
            request = request.header("x-amz-security-token", token);
        }
        let request = request
            .body(SdkBody::empty())
            .map_err(|e| format!("building the request: {e}"))?;
        let request = HttpRequest::try_from(request).map_err(|e| format!("request: {e}"))?;
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        match response.status().as_u16() {
            200 => {
                let headers = response.headers();
                let check = crate::verify::Check::from_response(etag, |name| headers.get(name));
                Ok(Answer::Body(ByteStream::new(response.into_body()), check))
            }
            412 => Ok(Answer::Changed),
            status => Err(format!("HTTP {status}")),
        }
    }

    /// Current credentials and the signing key for `now`'s date, refreshing either when
    /// due. Held under one lock so concurrent fetches refresh once.
    async fn signing_material(
        &self,
        now: SystemTime,
    ) -> Result<(Credentials, Vec<u8>, String), String> {
        let mut signer = self.signer.lock().await;
        let fresh = signer.as_ref().is_some_and(|s| {
            s.credentials
                .expiry()
                .is_none_or(|exp| exp > now + REFRESH_BEFORE_EXPIRY)
        });
        if !fresh {
            let credentials = self
                .provider
                .provide_credentials()
                .await
                .map_err(|e| format!("credentials: {e}"))?;
            *signer = Some(Signer {
                credentials,
                date: String::new(),
                key: Vec::new(),
            });
        }
        let s = signer.as_mut().expect("set above");
        let date = amz_date(now)[..8].to_string();
        if s.date != date {
            s.key = aws_sigv4::sign::v4::generate_signing_key(
                s.credentials.secret_access_key(),
                now,
                &self.target.region,
                &self.target.service,
            )
            .as_ref()
            .to_vec();
            s.date = date;
        }
        Ok((s.credentials.clone(), s.key.clone(), s.date.clone()))
    }
}

impl Target {
    /// Reads the target from a presigned GetObject of `key`: the URI up to the key, and the
    /// algorithm and scope from its query. `Err` says why the direct path does not apply.
    pub(crate) fn from_presigned<'a>(
        uri: &str,
        mut headers: impl Iterator<Item = (&'a str, &'a str)>,
        key: &str,
    ) -> Result<Target, String> {
        if let Some((name, _)) = headers.find(|(n, _)| !n.eq_ignore_ascii_case("host")) {
            return Err(format!("the request needs the header {name}"));
        }
        let uri: http::Uri = uri.parse().map_err(|e| format!("presigned URI: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err("presigned URI has no scheme or host".into());
        };
        let suffix = format!("/{}", utf8_percent_encode(key, KEY_ENCODE));
        let Some(base_path) = uri.path().strip_suffix(suffix.as_str()) else {
            return Err(format!(
                "presigned path {} does not end with the key",
                uri.path()
            ));
        };
        let mut algorithm = None;
        let mut credential = None;
        for pair in uri.query().unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(value).decode_utf8_lossy().to_string();
            match name {
                "X-Amz-Algorithm" => algorithm = Some(value),
                "X-Amz-Credential" => credential = Some(value),
                "X-Amz-Security-Token"
                | "X-Amz-Date"
                | "X-Amz-Expires"
                | "X-Amz-Signature"
                | "X-Amz-SignedHeaders"
                | "x-id" => {}
                other => return Err(format!("the request needs the query parameter {other}")),
            }
        }
        if algorithm.as_deref() != Some("AWS4-HMAC-SHA256") {
            return Err(format!("signing algorithm {algorithm:?} is not SigV4"));
        }
        // ACCESS_KEY/DATE/REGION/SERVICE/aws4_request
        let credential = credential.ok_or("presigned URI has no credential scope")?;
        let mut scope = credential.rsplit('/');
        let (Some("aws4_request"), Some(service), Some(region)) =
            (scope.next(), scope.next(), scope.next())
        else {
            return Err(format!("unexpected credential scope {credential:?}"));
        };
        if service != "s3" {
            return Err(format!("signing name {service:?} is not s3"));
        }
        Ok(Target {
            origin: format!("{scheme}://{authority}"),
            host: authority.to_string(),
            base_path: base_path.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        })
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let text = aws_smithy_types::DateTime::from_secs(secs as i64)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default();
    text.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// What goes into one request's signature.
pub(crate) struct Signing<'a> {
    pub(crate) access_key: &'a str,
    pub(crate) signing_key: &'a [u8],
    /// `YYYYMMDD`, the day the signing key was derived for.
    pub(crate) date: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub(crate) amz_date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) host: &'a str,
    /// The percent-encoded path, exactly as sent.
    pub(crate) path: &'a str,
    /// The If-Match value, quotes included.
    pub(crate) if_match: &'a str,
    pub(crate) session_token: Option<&'a str>,
}

/// The SigV4 Authorization header of a GET with no query and an empty body, signing the
/// host, if-match, x-amz-checksum-mode, x-amz-content-sha256, x-amz-date and (with
/// temporary credentials) x-amz-security-token headers. S3's canonical URI is the path as sent: no second
/// encoding, no normalisation. Header values here contain no spaces to fold.
pub(crate) fn authorization(s: &Signing<'_>) -> String {
    let signed_headers = if s.session_token.is_some() {
        "host;if-match;x-amz-checksum-mode;x-amz-content-sha256;x-amz-date;x-amz-security-token"
    } else {
        "host;if-match;x-amz-checksum-mode;x-amz-content-sha256;x-amz-date"
    };
    let mut canonical = format!(
        "GET\n{}\n\nhost:{}\nif-match:{}\n{}:{}\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{}\n",
        s.path, s.host, s.if_match, CHECKSUM_MODE.0, CHECKSUM_MODE.1, s.amz_date
    );
    if let Some(token) = s.session_token {
        canonical.push_str("x-amz-security-token:");
        canonical.push_str(token.trim());
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(signed_headers);
    canonical.push('\n');
    canonical.push_str(EMPTY_SHA256);
    let scope = format!("{}/{}/{}/aws4_request", s.date, s.region, s.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        s.amz_date,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signature =
        aws_sigv4::sign::v4::calculate_signature(s.signing_key, string_to_sign.as_bytes());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        s.access_key
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    };
    use proptest::prelude::*;

    /// The Authorization header `aws_sigv4`'s request signer (what signs every SDK call)
    /// produces for the same request, with S3's settings.
    fn reference(
        creds: &Credentials,
        now: SystemTime,
        region: &str,
        uri: &str,
        if_match: &str,
    ) -> String {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = creds.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let request = SignableRequest::new(
            "GET",
            uri,
            [("if-match", if_match), CHECKSUM_MODE].into_iter(),
            SignableBody::Bytes(&[]),
        )
        .unwrap();
        let (instructions, _) = sign(request, &params).unwrap().into_parts();
        let (headers, _) = instructions.into_parts();
        headers
            .iter()
            .find(|h| h.name() == "authorization")
            .unwrap()
            .value()
            .to_string()
    }

    fn ours(
        creds: &Credentials,
        now: SystemTime,
        region: &str,
        target: &Target,
        key: &str,
        if_match: &str,
    ) -> String {
        let date = amz_date(now)[..8].to_string();
        let signing_key =
            aws_sigv4::sign::v4::generate_signing_key(creds.secret_access_key(), now, region, "s3");
        let path = format!(
            "{}/{}",
            target.base_path,
            utf8_percent_encode(key, KEY_ENCODE)
        );
        authorization(&Signing {
            access_key: creds.access_key_id(),
            signing_key: signing_key.as_ref(),
            date: &date,
            amz_date: &amz_date(now),
            region,
            service: "s3",
            host: &target.host,
            path: &path,
            if_match,
            session_token: creds.session_token(),
        })
    }

    fn target(origin: &str, host: &str, base_path: &str) -> Target {
        Target {
            origin: origin.into(),
            host: host.into(),
            base_path: base_path.into(),
            region: "eu-west-1".into(),
            service: "s3".into(),
        }
    }

    #[test]
    fn amz_date_is_basic_iso8601_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(amz_date(t), "20261118T110640Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
    }

    #[test]
    fn a_known_request_signs_like_the_sdk() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let t = target(
            "https://dags.s3.eu-west-1.amazonaws.com",
            "dags.s3.eu-west-1.amazonaws.com",
            "",
        );
        let key = "prod/team a/dag_ü+1.py";
        let uri = format!("{}/{}", t.origin, utf8_percent_encode(key, KEY_ENCODE));
        assert_eq!(
            uri,
            "https://dags.s3.eu-west-1.amazonaws.com/prod/team%20a/dag_%C3%BC%2B1.py"
        );
        let etag = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        assert_eq!(
            ours(&creds, now, "eu-west-1", &t, key, etag),
            reference(&creds, now, "eu-west-1", &uri, etag)
        );
    }

    proptest! {
        #[test]
        fn any_key_and_credentials_sign_like_the_sdk(
            key in "[a-zA-Z0-9 /._~!$&'()*+,;=:@%ü€-]{1,60}",
            etag in "[0-9a-f]{32}(-[0-9]{1,3})?",
            token in proptest::option::of("[A-Za-z0-9+/=]{20,80}"),
            secret in "[A-Za-z0-9+/]{40}",
            secs in 0u64..4_000_000_000,
            path_style in any::<bool>(),
        ) {
            let creds = Credentials::new("ASIAEXAMPLE", secret, token, None, "test");
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            let t = if path_style {
                target("http://127.0.0.1:9000", "127.0.0.1:9000", "/my-bucket")
            } else {
                target("https://b.s3.eu-west-1.amazonaws.com", "b.s3.eu-west-1.amazonaws.com", "")
            };
            let uri = format!("{}{}/{}", t.origin, t.base_path, utf8_percent_encode(&key, KEY_ENCODE));
            let if_match = format!("\"{etag}\"");
            prop_assert_eq!(
                ours(&creds, now, "eu-west-1", &t, &key, &if_match),
                reference(&creds, now, "eu-west-1", &uri, &if_match)
            );
        }
    }

    #[test]
    fn reads_path_and_virtual_hosted_presigned_uris() {
        let key = "env/a b/dag.py";
        let path_style = "http://127.0.0.1:4566/bench/env/a%20b/dag.py?x-id=GetObject&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261122%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261122T133000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";
        assert_eq!(
            Target::from_presigned(path_style, std::iter::empty(), key).unwrap(),
            Target {
                origin: "http://127.0.0.1:4566".into(),
                host: "127.0.0.1:4566".into(),
                base_path: "/bench".into(),
                region: "us-east-1".into(),
                service: "s3".into(),
            }
        );
        let virtual_hosted = "https://bench.s3.eu-west-1.amazonaws.com/env/a%20b/dag.py?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261122%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Security-Token=t%2Bk";
        let t = Target::from_presigned(virtual_hosted, [("host", "x")].into_iter(), key).unwrap();
        assert_eq!(t.base_path, "");
        assert_eq!(t.host, "bench.s3.eu-west-1.amazonaws.com");
        assert_eq!(t.region, "eu-west-1");
    }

    #[test]
    fn anything_but_plain_sigv4_is_left_to_the_sdk() {
        let key = "k.py";
        let base = "https://b.s3.us-east-1.amazonaws.com/k.py?X-Amz-Credential=A%2F20261122%2Fus-east-1%2Fs3%2Faws4_request";
        // SigV4a (multi-region access points).
        let e = Target::from_presigned(
            &format!("{base}&X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256"),
            std::iter::empty(),
            key,
        )
        .unwrap_err();
        assert!(e.contains("not SigV4"), "{e}");
        // S3 Express signs as s3express.
        let express = "https://b--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com/k.py?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=A%2F20261122%2Fus-east-1%2Fs3express%2Faws4_request";
        let e = Target::from_presigned(express, std::iter::empty(), key).unwrap_err();
        assert!(e.contains("s3express"), "{e}");
        // A header the direct request would not send.
        let ok = format!("{base}&X-Amz-Algorithm=AWS4-HMAC-SHA256");
        let e = Target::from_presigned(&ok, [("x-amz-s3session-token", "t")].into_iter(), key)
            .unwrap_err();
        assert!(e.contains("x-amz-s3session-token"), "{e}");
        // A query parameter it would not send.
        let e = Target::from_presigned(&format!("{ok}&versionId=3"), std::iter::empty(), key)
            .unwrap_err();
        assert!(e.contains("versionId"), "{e}");
        // A key that is not where the direct path would put it.
        let e = Target::from_presigned(&ok, std::iter::empty(), "other.py").unwrap_err();
        assert!(e.contains("does not end with the key"), "{e}");
        assert!(Target::from_presigned(&ok, std::iter::empty(), key).is_ok());
    }
}
