//! The S3 backend. rust-s3 (blocking `sync` mode, no async runtime) provides credentials,
//! SigV4 signing and the XML of LIST and multipart uploads; object bytes travel through
//! attohttpc on presigned URLs, streamed in both directions, so memory stays at one small
//! buffer whatever the object size: a PUT streams from the spool file, each multipart part is
//! a byte range of it, and a GET hands its body to the caller as a reader, metadata first.
//!
//! Metadata travels as `x-amz-meta-*` headers (set at PUT or multipart initiation, read from
//! the GET or HEAD response). Errors are classified for the workers: connection failures,
//! timeouts, 408, 429 and 5xx are transient; 403 and a missing bucket are not, and say which
//! bucket and endpoint.

use std::io::{self, Read, Write};
use std::time::Duration;

use attohttpc::body::{Body as HttpBody, BodyKind};
use attohttpc::header::{HeaderMap, HeaderName, HeaderValue};
use log::debug;
use s3::creds::Credentials;
use s3::{Bucket, Region};

use super::{Body, Entry, Storage};
use crate::error::{Error, Result, StorageKind};
use crate::layout::Meta;

/// Objects larger than this go up as multipart uploads, in parts of this size (the S3 minimum,
/// so that the one part buffer stays small), or larger when 10,000 parts would not suffice.
const PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
const PRESIGN_SECS: u32 = 3600;
const META_PREFIX: &str = "x-amz-meta-";

pub struct S3Storage {
    bucket: Box<Bucket>,
    endpoint: String,
    describe: String,
}

/// Where and how to reach S3; every field falls back to the `AWS_*` environment.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The request body of a PUT: `len` bytes from a reader, written once.
struct ReadBody<'a> {
    src: &'a mut dyn Read,
    len: u64,
    used: bool,
}

impl HttpBody for ReadBody<'_> {
    fn kind(&mut self) -> io::Result<BodyKind> {
        Ok(BodyKind::KnownLength(self.len))
    }
    fn write<W: Write>(&mut self, mut w: W) -> io::Result<()> {
        if self.used {
            return Err(io::Error::other("request body cannot be sent twice"));
        }
        self.used = true;
        let n = io::copy(&mut (&mut *self.src).take(self.len), &mut w)?;
        if n != self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("body ended after {n} of {} bytes", self.len),
            ));
        }
        Ok(())
    }
}

impl S3Storage {
    pub fn open(bucket: &str, opts: &S3Options) -> Result<Self> {
        // walsync retries with its own backoff (and keeps the chain's order); rust-s3's
        // internal retry would sleep inside a worker for seconds.
        s3::set_retries(0);
        let cfg = |msg: String| Error::Config {
            file: "environment".into(),
            key: String::new(),
            msg,
        };
        let region_name = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let creds = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(k), Some(s)) => Credentials::new(Some(&k), Some(&s), env("AWS_SESSION_TOKEN").as_deref(), None, None),
            _ => Credentials::from_profile(env("AWS_PROFILE").as_deref()),
        }
        .map_err(|_| {
            cfg(format!("no S3 credentials for bucket {bucket}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
        })?;
        let (region, shown) = match &endpoint {
            Some(e) => {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err(Error::usage(format!(
                        "invalid S3 endpoint '{e}': it must start with http:// or https://"
                    )));
                }
                (
                    Region::Custom {
                        region: region_name.clone(),
                        endpoint: e.trim_end_matches('/').to_string(),
                    },
                    e.clone(),
                )
            }
            None => {
                let r: Region = region_name
                    .parse()
                    .map_err(|_| cfg(format!("unknown AWS region '{region_name}'")))?;
                let shown = format!("https://s3.{region_name}.amazonaws.com");
                (r, shown)
            }
        };
        let mut b = Bucket::new(bucket, region, creds)
            .map_err(|e| cfg(format!("S3 bucket {bucket}: {e}")))?;
        if endpoint.is_some() {
            // MinIO, Garage, Tigris, R2 and friends: path-style addressing.
            b = b.with_path_style();
        }
        b.set_request_timeout(Some(Duration::from_secs(60)));
        Ok(S3Storage {
            bucket: b,
            endpoint: shown.clone(),
            describe: format!("s3://{bucket} at {shown}"),
        })
    }

    fn err(&self, key: &str, kind: StorageKind, msg: String) -> Error {
        Error::Storage {
            backend: self.describe.clone(),
            key: key.into(),
            kind,
            msg,
        }
    }

    /// Classify an HTTP status.
    fn status_err(&self, key: &str, status: u16, body: &str) -> Error {
        let code = body
            .split("<Code>")
            .nth(1)
            .and_then(|s| s.split("</Code>").next())
            .unwrap_or("");
        let (kind, msg) = match (status, code) {
            (404, "NoSuchBucket") => (
                StorageKind::Permanent,
                format!("bucket {} does not exist at {}", self.bucket.name(), self.endpoint),
            ),
            (404, _) => (StorageKind::NotFound, "not found".to_string()),
            (403, _) | (401, _) => (
                StorageKind::Permanent,
                format!(
                    "access denied to bucket {} at {} ({}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    self.bucket.name(),
                    self.endpoint,
                    if code.is_empty() { status.to_string() } else { code.to_string() }
                ),
            ),
            (408, _) | (429, _) | (500..=599, _) => {
                (StorageKind::Transient, format!("HTTP {status} {code}").trim().to_string())
            }
            _ => (StorageKind::Permanent, format!("HTTP {status} {code}").trim().to_string()),
        };
        self.err(key, kind, msg)
    }

    /// Ok for a 2xx status; otherwise the classified error, reading the body only then.
    fn expect_2xx(&self, key: &str, status: u16, body: impl FnOnce() -> String) -> Result<()> {
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(self.status_err(key, status, &body()))
        }
    }

    fn s3_err(&self, key: &str, e: s3::error::S3Error) -> Error {
        use s3::error::S3Error as E;
        match e {
            E::HttpFailWithBody(status, body) => self.status_err(key, status, &body),
            E::Atto(e) => self.err(
                key,
                StorageKind::Transient,
                format!("cannot reach {}: {e}", self.endpoint),
            ),
            E::Io(e) => self.err(key, StorageKind::Transient, format!("{e}")),
            other => self.err(key, StorageKind::Permanent, other.to_string()),
        }
    }

    fn atto_err(&self, key: &str, e: attohttpc::Error) -> Error {
        self.err(
            key,
            StorageKind::Transient,
            format!("cannot reach {}: {e}", self.endpoint),
        )
    }

    fn meta_headers(&self, key: &str, meta: &Meta) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        for (k, v) in meta {
            let name =
                HeaderName::from_bytes(format!("{META_PREFIX}{k}").as_bytes()).map_err(|_| {
                    self.err(
                        key,
                        StorageKind::Permanent,
                        format!("invalid metadata name {k}"),
                    )
                })?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                self.err(
                    key,
                    StorageKind::Permanent,
                    format!("invalid metadata value for {k}"),
                )
            })?;
            h.insert(name, value);
        }
        Ok(h)
    }

    fn path(key: &str) -> String {
        format!("/{key}")
    }

    /// Check that the bucket exists and the credentials work, with a one-key listing
    /// (`Bucket::exists()` lists every bucket and fails on some servers).
    pub fn check(&self) -> Result<()> {
        self.bucket
            .list_page(String::new(), None, None, None, Some(1))
            .map(|_| ())
            .map_err(|e| self.s3_err("", e))
    }

    fn put_single(
        &self,
        key: &str,
        src: &mut dyn Read,
        len: u64,
        headers: HeaderMap,
    ) -> Result<()> {
        let url = self
            .bucket
            .presign_put(Self::path(key), PRESIGN_SECS, Some(headers.clone()), None)
            .map_err(|e| self.s3_err(key, e))?;
        let mut req = attohttpc::put(url)
            .follow_redirects(false)
            .timeout(Duration::from_secs(300));
        for (k, v) in headers.iter() {
            req = req.header(k, v);
        }
        let resp = req
            .body(ReadBody {
                src,
                len,
                used: false,
            })
            .send()
            .map_err(|e| self.atto_err(key, e))?;
        let status = resp.status().as_u16();
        self.expect_2xx(key, status, || resp.text().unwrap_or_default())
    }

    fn put_multipart(
        &self,
        key: &str,
        src: &mut dyn Read,
        len: u64,
        headers: HeaderMap,
    ) -> Result<()> {
        let with_meta = self
            .bucket
            .with_extra_headers(headers)
            .map_err(|e| self.s3_err(key, e))?;
        let up = with_meta
            .initiate_multipart_upload(&Self::path(key), "application/octet-stream")
            .map_err(|e| self.s3_err(key, e))?;
        let res = (|| -> Result<()> {
            // rust-s3's sync presigning drops query parameters on PUT, so parts cannot be
            // streamed on presigned URLs; they go through rust-s3 from one reused buffer.
            let part_size = PART_SIZE.max(len.div_ceil(MAX_PARTS)) as usize;
            let mut buf = vec![0u8; part_size];
            let mut parts = Vec::new();
            let mut sent = 0u64;
            let mut n = 0u32;
            while sent < len {
                n += 1;
                let part_len = (part_size as u64).min(len - sent) as usize;
                src.read_exact(&mut buf[..part_len]).map_err(|e| {
                    self.err(
                        key,
                        StorageKind::Permanent,
                        format!("reading part {n}: {e}"),
                    )
                })?;
                let part = self
                    .bucket
                    .put_multipart_chunk(
                        &buf[..part_len],
                        &Self::path(key),
                        n,
                        &up.upload_id,
                        "application/octet-stream",
                    )
                    .map_err(|e| self.s3_err(key, e))?;
                parts.push(part);
                sent += part_len as u64;
            }
            match self
                .bucket
                .complete_multipart_upload(&Self::path(key), &up.upload_id, parts)
            {
                Ok(_) => Ok(()),
                // A 200 whose XML root rust-s3 does not expect (moto answers
                // CompleteMultipartUploadResponse) is a success unless it holds an <Error>,
                // which S3 may send with a 200 status.
                Err(s3::error::S3Error::HttpFailWithBody(200, body))
                    if !body.contains("<Error>") =>
                {
                    Ok(())
                }
                Err(e) => Err(self.s3_err(key, e)),
            }
        })();
        if res.is_err() {
            // Best effort: an unfinished multipart upload is invisible to readers anyway.
            let _ = self.bucket.abort_upload(&Self::path(key), &up.upload_id);
        }
        res
    }
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn put(&self, key: &str, src: &mut dyn Read, len: u64, meta: &Meta) -> Result<()> {
        let headers = self.meta_headers(key, meta)?;
        if len > PART_SIZE {
            self.put_multipart(key, src, len, headers)
        } else {
            self.put_single(key, src, len, headers)
        }
    }

    fn get(&self, key: &str) -> Result<Body> {
        let url = self
            .bucket
            .presign_get(Self::path(key), PRESIGN_SECS, None)
            .map_err(|e| self.s3_err(key, e))?;
        let resp = attohttpc::get(url)
            .follow_redirects(false)
            .read_timeout(Duration::from_secs(60))
            .send()
            .map_err(|e| self.atto_err(key, e))?;
        let (status, headers, reader) = resp.split();
        let mut reader = reader;
        self.expect_2xx(key, status.as_u16(), || {
            let mut body = String::new();
            let _ = (&mut reader).take(64 * 1024).read_to_string(&mut body);
            body
        })?;
        let mut meta = Meta::new();
        for (k, v) in headers.iter() {
            if let (Some(name), Ok(v)) = (k.as_str().strip_prefix(META_PREFIX), v.to_str()) {
                meta.insert(name.to_string(), v.to_string());
            }
        }
        let size = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        debug!("GET {key}: {size} bytes");
        Ok(Body {
            meta,
            size,
            reader: Box::new(reader),
        })
    }

    fn head(&self, key: &str) -> Result<Meta> {
        let (h, status) = self
            .bucket
            .head_object(Self::path(key))
            .map_err(|e| self.s3_err(key, e))?;
        self.expect_2xx(key, status, String::new)?;
        Ok(h.metadata.unwrap_or_default().into_iter().collect())
    }

    fn list(&self, prefix: &str, f: &mut dyn FnMut(Entry)) -> Result<()> {
        let mut token = None;
        loop {
            let (page, _) = self
                .bucket
                .list_page(prefix.to_string(), None, token.take(), None, Some(1000))
                .map_err(|e| self.s3_err(prefix, e))?;
            for o in page.contents {
                f(Entry {
                    key: o.key,
                    size: o.size,
                });
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => return Ok(()),
            }
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.bucket.delete_object(Self::path(key)) {
            Ok(_) => Ok(()),
            Err(e) => match self.s3_err(key, e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }
}
