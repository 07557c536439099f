//! What a downloaded object is checked against, chosen from what S3 actually guarantees.
//!
//! S3's ETag is the MD5 of the content only for objects stored in one PUT (or POST or
//! copy) in plaintext or with SSE-S3. The S3 API reference (Object, ETag): "Objects
//! created by the PUT Object, POST Object, or Copy operation, or through the AWS
//! Management Console, and are encrypted by SSE-C or SSE-KMS, have ETags that are not an
//! MD5 digest of their object data. If an object is created by either the Multipart
//! Upload or Part Copy operation, the ETag is not an MD5 digest, regardless of the method
//! of encryption." A KMS-encrypted ETag is still 32 hex characters, so the shape of the
//! ETag says nothing: only the response's `x-amz-server-side-encryption*` headers do.
//!
//! What S3 does guarantee for every object uploaded since the end of 2024 is a checksum
//! (API reference, Checksum: CRC64NVME "is present if the object was uploaded with the
//! CRC64NVME checksum algorithm, or if the object was uploaded without a checksum (and
//! Amazon S3 added the default checksum, CRC64NVME)"), returned by GetObject when the
//! request carries `x-amz-checksum-mode: ENABLED`. A multipart object may instead carry a
//! COMPOSITE checksum (a checksum of part checksums, written `VALUE-N`), which cannot be
//! checked against the bytes without the part boundaries, so it is not used.
//!
//! So, per object: a full-object checksum when the answer has one (it is also cheaper
//! than MD5); else the ETag as MD5 when the answer says plaintext or SSE-S3 and the ETag
//! is a plain MD5; the size always. There is never a check that cannot pass.

use aws_smithy_checksums::ChecksumAlgorithm;
use md5::{Digest, Md5};

use crate::source::{RemoteObject, SourceError};

/// The response header that asks for checksums, and its value.
pub const CHECKSUM_MODE: (&str, &str) = ("x-amz-checksum-mode", "ENABLED");

/// Full-object checksum headers in the order they are preferred (the cheapest first).
const CHECKSUM_HEADERS: [(&str, &str); 5] = [
    ("x-amz-checksum-crc64nvme", "crc64nvme"),
    ("x-amz-checksum-crc32c", "crc32c"),
    ("x-amz-checksum-crc32", "crc32"),
    ("x-amz-checksum-sha256", "sha256"),
    ("x-amz-checksum-sha1", "sha1"),
];

/// How a body is checked, besides its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// S3's full-object checksum: the algorithm's name and the base64 value S3 sent.
    Checksum {
        /// `crc64nvme`, `crc32c`, `crc32`, `sha256` or `sha1`.
        algorithm: &'static str,
        /// The base64 value.
        expected: String,
    },
    /// The ETag is the MD5 of the content (plaintext or SSE-S3, one PUT).
    EtagMd5,
    /// Nothing but the size can be checked (SSE-KMS, DSSE-KMS or SSE-C without a
    /// checksum, or a multipart object with a composite one).
    SizeOnly,
}

impl Check {
    /// The label of `dagsync_objects_verified_total` and of error messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Check::Checksum { algorithm, .. } => algorithm,
            Check::EtagMd5 => "etag-md5",
            Check::SizeOnly => "size",
        }
    }

    /// Decides the check from a GetObject answer's headers (`header(name)` returns the
    /// value of a header, names in lower case) and the listed ETag.
    pub fn from_response<'a>(etag: &str, header: impl Fn(&str) -> Option<&'a str>) -> Self {
        let composite =
            header("x-amz-checksum-type").is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"));
        if !composite {
            for (name, algorithm) in CHECKSUM_HEADERS {
                if let Some(value) = header(name) {
                    // A `-N` suffix marks a composite checksum even without the type header.
                    if !value.is_empty() && !value.contains('-') {
                        return Check::Checksum {
                            algorithm,
                            expected: value.to_string(),
                        };
                    }
                }
            }
        }
        let sse = header("x-amz-server-side-encryption");
        let plain_or_s3 = sse.is_none_or(|v| v.eq_ignore_ascii_case("AES256"));
        let sse_c = header("x-amz-server-side-encryption-customer-algorithm").is_some();
        if plain_or_s3 && !sse_c && etag_is_md5_shaped(etag) {
            Check::EtagMd5
        } else {
            Check::SizeOnly
        }
    }

    /// A running verifier for one body.
    pub fn start(&self) -> Verifier {
        let hasher = match self {
            Check::Checksum { algorithm, .. } => Hasher::Checksum(
                algorithm
                    .parse::<ChecksumAlgorithm>()
                    .expect("names come from CHECKSUM_HEADERS")
                    .into_impl(),
            ),
            Check::EtagMd5 => Hasher::Md5(Md5::new()),
            Check::SizeOnly => Hasher::None,
        };
        Verifier {
            check: self.clone(),
            hasher,
            len: 0,
        }
    }
}

/// A single-part ETag has 32 hex digits; a multipart one ends in `-N`.
fn etag_is_md5_shaped(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

enum Hasher {
    Checksum(Box<dyn aws_smithy_checksums::http::HttpChecksum>),
    Md5(Md5),
    None,
}

/// Hashes a body as it arrives and checks it at the end.
pub struct Verifier {
    check: Check,
    hasher: Hasher,
    len: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("check", &self.check)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        match &mut self.hasher {
            Hasher::Checksum(c) => c.update(chunk),
            Hasher::Md5(m) => m.update(chunk),
            Hasher::None => {}
        }
    }

    /// Checks size and digest against the listing and the answer; returns the check used.
    pub fn finish(self, obj: &RemoteObject) -> Result<Check, SourceError> {
        let fail = |detail: String| SourceError::Integrity {
            key: obj.rel_key.clone(),
            check: self.check.as_str(),
            detail,
        };
        if self.len != obj.size {
            return Err(fail(format!(
                "expected {} bytes, got {}",
                obj.size, self.len
            )));
        }
        match self.hasher {
            Hasher::Checksum(c) => {
                let got = aws_smithy_types::base64::encode(&c.finalize()[..]);
                if let Check::Checksum {
                    expected,
                    algorithm,
                } = &self.check
                    && &got != expected
                {
                    return Err(fail(format!(
                        "{algorithm} {got} differs from S3's {expected}"
                    )));
                }
            }
            Hasher::Md5(m) => {
                let got = format!("{:x}", m.finalize());
                if !got.eq_ignore_ascii_case(&obj.etag) {
                    return Err(fail(format!("MD5 {got} differs from ETag {}", obj.etag)));
                }
            }
            Hasher::None => {}
        }
        Ok(self.check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::UNIX_EPOCH;

    fn obj(etag: &str, data: &[u8]) -> RemoteObject {
        RemoteObject {
            rel_key: "dags/a.py".into(),
            etag: etag.into(),
            size: data.len() as u64,
            last_modified: UNIX_EPOCH,
        }
    }

    fn check(etag: &str, headers: &[(&str, &str)]) -> Check {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Check::from_response(etag, |name| map.get(name).map(String::as_str))
    }

    fn md5_hex(data: &[u8]) -> String {
        format!("{:x}", Md5::digest(data))
    }

    fn crc64(data: &[u8]) -> String {
        let mut c = ChecksumAlgorithm::Crc64Nvme.into_impl();
        c.update(data);
        aws_smithy_types::base64::encode(&c.finalize()[..])
    }

    #[test]
    fn the_etag_is_md5_only_for_plaintext_and_sse_s3_single_part_objects() {
        let etag = md5_hex(b"x");
        assert_eq!(check(&etag, &[]), Check::EtagMd5);
        assert_eq!(
            check(&etag, &[("x-amz-server-side-encryption", "AES256")]),
            Check::EtagMd5
        );
        for kms in ["aws:kms", "aws:kms:dsse"] {
            assert_eq!(
                check(&etag, &[("x-amz-server-side-encryption", kms)]),
                Check::SizeOnly
            );
        }
        assert_eq!(
            check(
                &etag,
                &[("x-amz-server-side-encryption-customer-algorithm", "AES256")]
            ),
            Check::SizeOnly
        );
        assert_eq!(check(&format!("{etag}-3"), &[]), Check::SizeOnly);
    }

    #[test]
    fn a_full_object_checksum_wins_and_a_composite_one_is_ignored() {
        let etag = md5_hex(b"x");
        let c = check(
            &etag,
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-checksum-crc32", "AAAAAA=="),
                ("x-amz-checksum-crc64nvme", "AAAAAAAAAAA="),
            ],
        );
        assert_eq!(c.as_str(), "crc64nvme");
        assert_eq!(
            check(
                &format!("{etag}-2"),
                &[("x-amz-checksum-crc32", "AAAAAA==-2")]
            ),
            Check::SizeOnly
        );
        assert_eq!(
            check(
                &etag,
                &[
                    ("x-amz-checksum-crc32", "AAAAAA=="),
                    ("x-amz-checksum-type", "COMPOSITE")
                ]
            ),
            Check::EtagMd5
        );
    }

    #[test]
    fn a_kms_object_whose_etag_is_not_its_md5_passes_on_its_checksum() {
        let data = b"from airflow import DAG\n";
        let o = obj("0123456789abcdef0123456789abcdef", data);
        let c = check(
            &o.etag,
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-checksum-crc64nvme", &crc64(data)),
            ],
        );
        let mut v = c.start();
        v.update(&data[..5]);
        v.update(&data[5..]);
        assert_eq!(v.finish(&o).unwrap().as_str(), "crc64nvme");
        // Without a checksum, the same object is checked by size only, and passes.
        let c = check(&o.etag, &[("x-amz-server-side-encryption", "aws:kms")]);
        let mut v = c.start();
        v.update(data);
        assert_eq!(v.finish(&o).unwrap(), Check::SizeOnly);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum_and_the_md5_and_names_key_and_check() {
        let data = b"from airflow import DAG\n".to_vec();
        let mut bad = data.clone();
        bad[3] ^= 0x20;
        let o = obj(&md5_hex(&data), &data);
        for headers in [vec![], vec![("x-amz-checksum-crc64nvme", crc64(&data))]] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let c = check(&o.etag, &h);
            let mut v = c.start();
            v.update(&bad);
            let e = v.finish(&o).unwrap_err().to_string();
            assert!(e.contains("dags/a.py") && e.contains(c.as_str()), "{e}");
        }
        // A short body fails on its size whatever the check.
        let c = check(&o.etag, &[("x-amz-server-side-encryption", "aws:kms")]);
        let mut v = c.start();
        v.update(&data[1..]);
        assert!(v.finish(&o).unwrap_err().to_string().contains("bytes"));
    }
}
