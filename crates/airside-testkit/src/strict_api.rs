//! Strict CloudWatch and Firehose: the documented request limits that moto does not
//! enforce, answered as the real services answer them.
//!
//! moto stores a PutMetricData datum with an empty dimension value or a NaN, and a
//! PutRecordBatch of 600 records, without complaint. CloudWatch and Firehose reject the
//! whole request. A daemon tested only against moto can therefore lose a whole request
//! (in metricship's case, the autoscaling signal) to one bad datum without any test
//! noticing. This layer of the [`crate::FaultProxy`] checks each request before it is
//! forwarded and answers a violation the way the service does, so the request never
//! reaches moto:
//!
//! **CloudWatch PutMetricData** (RPCv2 CBOR, as the current SDKs send it; gzip bodies
//! are inflated first, as "You can send a payload compressed by gzip"). Answer: 400
//! `InvalidParameterValue` for the whole request (413 for the size limit), as CloudWatch
//! does. The rules, each from the API reference:
//!
//! 1. "Each PutMetricData request is limited to 1 MB in size for HTTP POST requests"
//!    (checked on the inflated body, which is stricter than the wire size).
//! 2. "Each request is also limited to no more than 1000 different metrics."
//! 3. MetricName: "Length Constraints: Minimum length of 1. Maximum length of 255."
//! 4. Dimensions: "Array Members: Maximum number of 30 items."
//! 5. Dimension Name: "Dimension names must contain only ASCII characters, must include
//!    at least one non-whitespace character, and cannot start with a colon (:). ASCII
//!    control characters are not supported as part of dimension names." Length 1–255.
//! 6. Dimension Value: "Dimension values must contain only ASCII characters and must
//!    include at least one non-whitespace character. ASCII control characters are not
//!    supported as part of dimension values." Length 1–1,024.
//! 7. Value: "Values must be in the range of -2^360 to 2^360. In addition, special values
//!    (for example, NaN, +Infinity, -Infinity) are not supported." Applied to `Value`,
//!    each of `Values` and `Counts`, and the four members of `StatisticValues`.
//! 8. Values: "You can include up to 150 unique values in each PutMetricData action that
//!    specifies a Values array"; Counts: "If you include a Counts array, it must include
//!    the same amount of values as the Values array."
//! 9. Timestamp: "You can specify time stamps that are as much as two weeks before the
//!    current date, and as much as 2 hours after the current day and time."
//! 10. StorageResolution: "Valid values are 1 and 60."
//!
//! **Firehose PutRecordBatch** (and PutRecord; awsJson1.1). Answer: 400
//! `InvalidArgumentException`. From the PutRecordBatch reference: "Each PutRecordBatch
//! request supports up to 500 records. Each record in the request can be as large as
//! 1,000 KB (before base64 encoding), up to a limit of 4 MB for the entire request.
//! These limits cannot be changed." (KB and MB read as KiB and MiB, the quotas page's
//! units.)
//!
//! What passed the rules and was then stored by moto is kept in a ledger
//! ([`StrictApi::accepted`]), so a test can say exactly which datums reached the emulator.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// The largest magnitude CloudWatch accepts, 2^360.
const MAX_MAGNITUDE: f64 = 2.348_542_582_773_833_2e108;
/// "1 MB" per PutMetricData request.
const MAX_PUT_METRIC_DATA_BYTES: usize = 1_000_000;
/// "1,000 KB (before base64 encoding)" per Firehose record.
pub const MAX_FIREHOSE_RECORD: usize = 1000 * 1024;
/// "4 MB for the entire request".
pub const MAX_FIREHOSE_CALL: usize = 4 * 1024 * 1024;
/// "up to 500 records".
pub const MAX_FIREHOSE_RECORDS: usize = 500;

/// One datum CloudWatch accepted (it passed the rules and moto stored it).
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedDatum {
    /// MetricName.
    pub name: String,
    /// Dimensions, in request order.
    pub dimensions: Vec<(String, String)>,
    /// `Value`, when the datum had one.
    pub value: Option<f64>,
    /// The values of `Values`, when it had them.
    pub values: Vec<f64>,
    /// Seconds since the epoch.
    pub timestamp: Option<f64>,
}

/// A request the rules refused, as the service would have answered it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// AWS's error code.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

/// What the proxy does with a request after the rules looked at it.
pub(crate) enum Verdict {
    /// Not a request these rules cover.
    NotCovered,
    /// Forward it; on a 2xx answer, record these datums as accepted.
    Forward(Vec<AcceptedDatum>),
    /// Answer with this error instead.
    Refuse(Refusal),
}

/// The strict CloudWatch and Firehose rules, and what they let through.
#[derive(Debug, Default)]
pub struct StrictApi {
    accepted: Mutex<Vec<AcceptedDatum>>,
    refused: Mutex<Vec<Refusal>>,
    records_accepted: Mutex<u64>,
    lines_accepted: Mutex<u64>,
    also_reject: Mutex<Vec<String>>,
}

impl StrictApi {
    /// From now on, a PutMetricData request holding a datum of metric `name` is refused
    /// (400 InvalidParameterValue) as if it broke a rule: a stand-in for a CloudWatch rule
    /// the client does not know, to test how it narrows a rejected request down.
    pub fn also_reject(&self, name: &str) {
        self.also_reject.lock().unwrap().push(name.to_string());
    }

    /// Every datum moto stored through this proxy, in order.
    pub fn accepted(&self) -> Vec<AcceptedDatum> {
        self.accepted.lock().unwrap().clone()
    }

    /// Every request the rules refused, in order.
    pub fn refused(&self) -> Vec<Refusal> {
        self.refused.lock().unwrap().clone()
    }

    /// Firehose records forwarded to moto and stored (2xx answers).
    pub fn firehose_records_accepted(&self) -> u64 {
        *self.records_accepted.lock().unwrap()
    }

    /// Newline-terminated lines inside the Firehose records stored (a producer that packs
    /// NDJSON lines into records is counted by line).
    pub fn firehose_lines_accepted(&self) -> u64 {
        *self.lines_accepted.lock().unwrap()
    }

    pub(crate) fn on_request(&self, path: &str, headers: &HeaderMap, body: &Bytes) -> Verdict {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let verdict = if path.ends_with("/operation/PutMetricData") {
            let extra = self.also_reject.lock().unwrap().clone();
            match put_metric_data(headers, body, SystemTime::now()) {
                Ok(datums) => match datums.iter().position(|d| extra.contains(&d.name)) {
                    Some(i) => Verdict::Refuse(invalid(format!(
                        "The value {} for parameter MetricData.member.{}.MetricName is invalid.",
                        datums[i].name,
                        i + 1
                    ))),
                    None => Verdict::Forward(datums),
                },
                Err(r) => Verdict::Refuse(r),
            }
        } else if target.ends_with(".PutRecordBatch") || target.ends_with(".PutRecord") {
            match firehose(body, target.ends_with(".PutRecordBatch")) {
                // One entry per record; its value is the record's line count.
                Ok(lines) => Verdict::Forward(
                    lines
                        .into_iter()
                        .map(|n| AcceptedDatum {
                            name: String::new(),
                            dimensions: Vec::new(),
                            value: Some(n as f64),
                            values: Vec::new(),
                            timestamp: None,
                        })
                        .collect(),
                ),
                Err(r) => Verdict::Refuse(r),
            }
        } else {
            Verdict::NotCovered
        };
        if let Verdict::Refuse(r) = &verdict {
            self.refused.lock().unwrap().push(r.clone());
        }
        verdict
    }

    pub(crate) fn on_stored(&self, path: &str, accepted: Vec<AcceptedDatum>) {
        if path.ends_with("/operation/PutMetricData") {
            self.accepted.lock().unwrap().extend(accepted);
        } else {
            *self.records_accepted.lock().unwrap() += accepted.len() as u64;
            *self.lines_accepted.lock().unwrap() +=
                accepted.iter().filter_map(|a| a.value).sum::<f64>() as u64;
        }
    }
}

fn invalid(message: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "InvalidParameterValue",
        message,
    }
}

fn put_metric_data(
    headers: &HeaderMap,
    body: &Bytes,
    now: SystemTime,
) -> Result<Vec<AcceptedDatum>, Refusal> {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let raw: Vec<u8> = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("cannot inflate the gzip body: {e}")))?;
        out
    } else {
        body.to_vec()
    };
    if raw.len() > MAX_PUT_METRIC_DATA_BYTES {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "RequestEntityTooLarge",
            message: format!("Request size {} exceeded 1000000 bytes", raw.len()),
        });
    }
    let request = Cbor::decode(&raw).map_err(|e| invalid(format!("malformed CBOR: {e}")))?;
    let data = request.get("MetricData").map(Cbor::items).unwrap_or(&[]);
    if data.len() > 1000 {
        return Err(invalid(format!(
            "The collection MetricData must not have a size greater than 1000 ({}).",
            data.len()
        )));
    }
    let mut accepted = Vec::with_capacity(data.len());
    for (i, d) in data.iter().enumerate() {
        let n = i + 1;
        let param = |p: &str| format!("MetricData.member.{n}.{p}");
        let bad = |p: &str, v: &str| {
            invalid(format!(
                "The value {v} for parameter {} is invalid.",
                param(p)
            ))
        };
        let name = d.get("MetricName").and_then(Cbor::text).unwrap_or("");
        if name.is_empty() || name.len() > 255 {
            return Err(bad("MetricName", name));
        }
        let dims = d.get("Dimensions").map(Cbor::items).unwrap_or(&[]);
        if dims.len() > 30 {
            return Err(invalid(format!(
                "The collection {} must not have a size greater than 30.",
                param("Dimensions")
            )));
        }
        let mut dimensions = Vec::with_capacity(dims.len());
        for (j, dim) in dims.iter().enumerate() {
            let m = j + 1;
            let k = dim.get("Name").and_then(Cbor::text).unwrap_or("");
            let v = dim.get("Value").and_then(Cbor::text).unwrap_or("");
            if !printable_ascii(k) || k.len() > 255 || k.starts_with(':') {
                return Err(bad(&format!("Dimensions.member.{m}.Name"), k));
            }
            if !printable_ascii(v) || v.len() > 1024 {
                return Err(bad(&format!("Dimensions.member.{m}.Value"), v));
            }
            dimensions.push((k.to_string(), v.to_string()));
        }
        let value = d.get("Value").and_then(Cbor::number);
        if let Some(v) = value
            && !finite_in_range(v)
        {
            return Err(bad("Value", &v.to_string()));
        }
        let values: Vec<f64> = d
            .get("Values")
            .map(Cbor::items)
            .unwrap_or(&[])
            .iter()
            .filter_map(Cbor::number)
            .collect();
        let counts: Vec<f64> = d
            .get("Counts")
            .map(Cbor::items)
            .unwrap_or(&[])
            .iter()
            .filter_map(Cbor::number)
            .collect();
        if values.len() > 150 {
            return Err(invalid(format!(
                "The collection {} must not have a size greater than 150.",
                param("Values")
            )));
        }
        if !counts.is_empty() && counts.len() != values.len() {
            return Err(invalid(format!(
                "The parameters {} and {} must be of the same size.",
                param("Values"),
                param("Counts")
            )));
        }
        if let Some(v) = values.iter().chain(&counts).find(|v| !finite_in_range(**v)) {
            return Err(bad("Values", &v.to_string()));
        }
        if let Some(stats) = d.get("StatisticValues") {
            for member in ["SampleCount", "Sum", "Minimum", "Maximum"] {
                match stats.get(member).and_then(Cbor::number) {
                    Some(v) if finite_in_range(v) => {}
                    other => {
                        return Err(bad(
                            &format!("StatisticValues.{member}"),
                            &format!("{other:?}"),
                        ));
                    }
                }
            }
        }
        let timestamp = d.get("Timestamp").and_then(Cbor::number);
        if let Some(t) = timestamp {
            let now = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let past = Duration::from_secs(14 * 24 * 3600).as_secs_f64();
            let ahead = Duration::from_secs(2 * 3600).as_secs_f64();
            if t < now - past || t > now + ahead {
                return Err(bad("Timestamp", &t.to_string()));
            }
        }
        if let Some(r) = d.get("StorageResolution").and_then(Cbor::number)
            && r != 1.0
            && r != 60.0
        {
            return Err(bad("StorageResolution", &r.to_string()));
        }
        accepted.push(AcceptedDatum {
            name: name.to_string(),
            dimensions,
            value,
            values,
            timestamp,
        });
    }
    Ok(accepted)
}

/// Checks a PutRecordBatch (`batch`) or PutRecord body; returns each record's count of
/// newline-terminated lines.
fn firehose(body: &Bytes, batch: bool) -> Result<Vec<usize>, Refusal> {
    let refuse = |message: String| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "InvalidArgumentException",
        message,
    };
    let request: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| refuse(format!("malformed JSON: {e}")))?;
    let records: Vec<&serde_json::Value> = if batch {
        request["Records"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    } else {
        vec![&request["Record"]]
    };
    if records.is_empty() || records.len() > MAX_FIREHOSE_RECORDS {
        return Err(refuse(format!(
            "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length less than or equal to 500 (had {})",
            records.len()
        )));
    }
    let mut total = 0usize;
    let mut lines = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let data = r["Data"].as_str().unwrap_or("");
        let bytes = aws_smithy_types::base64::decode(data)
            .map_err(|e| refuse(format!("record {i}: Data is not base64: {e}")))?;
        if bytes.len() > MAX_FIREHOSE_RECORD {
            return Err(refuse(format!(
                "Record size {} exceeds the 1,000 KiB limit (record {i})",
                bytes.len()
            )));
        }
        total += bytes.len();
        lines.push(bytes.iter().filter(|&&b| b == b'\n').count());
    }
    if total > MAX_FIREHOSE_CALL {
        return Err(refuse(format!(
            "Request size {total} exceeds the 4 MiB limit of PutRecordBatch"
        )));
    }
    Ok(lines)
}

/// "must contain only ASCII characters and must include at least one non-whitespace
/// character. ASCII control characters are not supported".
fn printable_ascii(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii() && !b.is_ascii_control())
        && s.bytes().any(|b| !b.is_ascii_whitespace())
}

fn finite_in_range(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_MAGNITUDE
}

/// The error answer a refusal becomes: RPCv2 CBOR for CloudWatch (with the
/// awsQuery-compatible error header CloudWatch sends), awsJson for Firehose.
pub(crate) fn refusal_response(
    r: &Refusal,
    cbor: bool,
) -> http::Response<http_body_util::Full<Bytes>> {
    let builder = http::Response::builder().status(r.status);
    let resp = if cbor {
        builder
            .header("smithy-protocol", "rpc-v2-cbor")
            .header("content-type", "application/cbor")
            .header("x-amzn-query-error", format!("{};Sender", r.code))
            .body(http_body_util::Full::new(Bytes::from(
                crate::fault_proxy::cbor_error(r.code, &r.message),
            )))
    } else {
        builder
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", r.code)
            .body(http_body_util::Full::new(Bytes::from(
                serde_json::json!({"__type": r.code, "message": r.message}).to_string(),
            )))
    };
    resp.unwrap_or_else(|_| http::Response::new(http_body_util::Full::new(Bytes::new())))
}

/// A decoded CBOR value: just what these rules read (numbers keep NaN and infinities,
/// which JSON cannot carry).
#[derive(Debug, Clone)]
enum Cbor {
    Number(f64),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(String, Cbor)>),
    Other,
}

impl Cbor {
    fn decode(bytes: &[u8]) -> Result<Self, minicbor::decode::Error> {
        let mut d = minicbor::Decoder::new(bytes);
        Self::read(&mut d, 0)
    }

    fn read(d: &mut minicbor::Decoder<'_>, depth: u32) -> Result<Self, minicbor::decode::Error> {
        use minicbor::data::Type as T;
        if depth > 32 {
            return Err(minicbor::decode::Error::message("nested too deeply"));
        }
        Ok(match d.datatype()? {
            T::U8 | T::U16 | T::U32 | T::U64 => Cbor::Number(d.u64()? as f64),
            T::I8 | T::I16 | T::I32 | T::I64 => Cbor::Number(d.i64()? as f64),
            T::Int => Cbor::Number(i128::from(d.int()?) as f64),
            T::F16 | T::F32 => Cbor::Number(f64::from(d.f32()?)),
            T::F64 => Cbor::Number(d.f64()?),
            T::String => Cbor::Text(d.str()?.to_string()),
            T::StringIndef => {
                let mut s = String::new();
                for part in d.str_iter()? {
                    s.push_str(part?);
                }
                Cbor::Text(s)
            }
            T::Array | T::ArrayIndef => {
                let len = d.array()?;
                let mut items = Vec::new();
                match len {
                    Some(n) => {
                        for _ in 0..n {
                            items.push(Self::read(d, depth + 1)?);
                        }
                    }
                    None => {
                        while d.datatype()? != T::Break {
                            items.push(Self::read(d, depth + 1)?);
                        }
                        d.skip()?;
                    }
                }
                Cbor::Array(items)
            }
            T::Map | T::MapIndef => {
                let len = d.map()?;
                let mut pairs = Vec::new();
                let mut pair =
                    |d: &mut minicbor::Decoder<'_>| -> Result<(), minicbor::decode::Error> {
                        let k = match Self::read(d, depth + 1)? {
                            Cbor::Text(k) => k,
                            _ => String::new(),
                        };
                        pairs.push((k, Self::read(d, depth + 1)?));
                        Ok(())
                    };
                match len {
                    Some(n) => {
                        for _ in 0..n {
                            pair(d)?;
                        }
                    }
                    None => {
                        while d.datatype()? != T::Break {
                            pair(d)?;
                        }
                        d.skip()?;
                    }
                }
                Cbor::Map(pairs)
            }
            T::Tag => {
                // Tag 1 (epoch seconds) is how timestamps travel: the number is what counts.
                d.tag()?;
                Self::read(d, depth + 1)?
            }
            _ => {
                d.skip()?;
                Cbor::Other
            }
        })
    }

    fn get(&self, key: &str) -> Option<&Cbor> {
        match self {
            Cbor::Map(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn items(&self) -> &[Cbor] {
        match self {
            Cbor::Array(items) => items,
            _ => &[],
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Cbor::Text(s) => Some(s),
            _ => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Cbor::Number(v) => Some(*v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PutMetricData body in CBOR with one datum built by `datum`.
    fn body(datum: impl FnOnce(&mut minicbor::Encoder<&mut Vec<u8>>)) -> Bytes {
        let mut buf = Vec::new();
        let mut e = minicbor::Encoder::new(&mut buf);
        e.map(2).unwrap();
        e.str("Namespace").unwrap().str("Airflow").unwrap();
        e.str("MetricData").unwrap().array(1).unwrap();
        datum(&mut e);
        Bytes::from(buf)
    }

    fn check(b: &Bytes) -> Result<Vec<AcceptedDatum>, Refusal> {
        put_metric_data(&HeaderMap::new(), b, SystemTime::now())
    }

    fn with_dimension(value: &str) -> Bytes {
        body(|e| {
            e.map(3).unwrap();
            e.str("MetricName").unwrap().str("QueueDepth").unwrap();
            e.str("Dimensions").unwrap().array(1).unwrap();
            e.map(2).unwrap();
            e.str("Name").unwrap().str("pool").unwrap();
            e.str("Value").unwrap().str(value).unwrap();
            e.str("Value").unwrap().f64(3.0).unwrap();
        })
    }

    #[test]
    fn dimension_values_follow_the_documented_rules() {
        let ok = check(&with_dimension("default_pool")).unwrap();
        assert_eq!(ok[0].name, "QueueDepth");
        assert_eq!(ok[0].value, Some(3.0));
        assert_eq!(ok[0].dimensions, [("pool".into(), "default_pool".into())]);
        for bad in ["", "   ", "a\tb", "é", &"x".repeat(1025)] {
            let r = check(&with_dimension(bad)).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::BAD_REQUEST, "InvalidParameterValue")
            );
            assert!(
                r.message.contains("Dimensions.member.1.Value"),
                "{}",
                r.message
            );
        }
    }

    #[test]
    fn special_values_and_old_timestamps_are_rejected() {
        for v in [f64::NAN, f64::INFINITY, 1e300] {
            let b = body(|e| {
                e.map(2).unwrap();
                e.str("MetricName").unwrap().str("m").unwrap();
                e.str("Value").unwrap().f64(v).unwrap();
            });
            assert_eq!(check(&b).unwrap_err().code, "InvalidParameterValue", "{v}");
        }
        let old = SystemTime::now() - Duration::from_secs(15 * 24 * 3600);
        let b = body(|e| {
            e.map(2).unwrap();
            e.str("MetricName").unwrap().str("m").unwrap();
            e.str("Timestamp")
                .unwrap()
                .tag(minicbor::data::Tag::new(1))
                .unwrap();
            e.f64(old.duration_since(UNIX_EPOCH).unwrap().as_secs_f64())
                .unwrap();
        });
        assert!(check(&b).unwrap_err().message.contains("Timestamp"));
    }

    #[test]
    fn firehose_batches_are_limited() {
        let rec =
            |n: usize| serde_json::json!({"Data": aws_smithy_types::base64::encode(vec![b'x'; n])});
        let batch = |records: Vec<serde_json::Value>| {
            Bytes::from(
                serde_json::json!({"DeliveryStreamName": "s", "Records": records}).to_string(),
            )
        };
        assert_eq!(
            firehose(&batch(vec![rec(10); 500]), true).unwrap().len(),
            500
        );
        assert!(firehose(&batch(vec![rec(10); 501]), true).is_err());
        assert!(firehose(&batch(vec![rec(MAX_FIREHOSE_RECORD + 1)]), true).is_err());
        assert!(
            firehose(&batch(vec![rec(900 * 1024); 5]), true).is_err(),
            "4.4 MiB"
        );
        let r = firehose(&batch(vec![]), true).unwrap_err();
        assert_eq!(r.code, "InvalidArgumentException");
    }
}
