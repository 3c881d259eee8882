//! The S3 backend. Requests are signed here (SigV4, `sigv4`) and sent over walsync's own
//! keep-alive HTTP/1.1 client (`http`: a small pool of connections, TLS through rustls); keys
//! come from `creds` (the AWS chain) and `profile` (the shared files). Object bytes stream in both
//! directions, so memory stays at one small buffer whatever the object size: a PUT streams
//! from the spool file, each multipart part is a byte range of it, and a GET hands its body to
//! the caller as a reader, metadata first.
//!
//! Metadata travels as `x-amz-meta-*` headers (set at PUT or multipart initiation, read from
//! the GET or HEAD response). Errors are classified for the workers: connection failures,
//! timeouts, 408, 429 and 5xx are transient; 403 and a missing bucket are not, and say which
//! bucket and endpoint.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, RwLock};

use log::debug;

mod creds;
mod delete;
mod errors;
mod multipart;
pub mod profile;
mod request;
mod route;
mod xml;

use xml::{xml_blocks, xml_tag};

use super::http::{ReqBody, Response};
use super::sigv4;
use super::{Body, Entry, Storage};
use crate::error::{Error, Result, StorageKind};
use crate::layout::{self, Meta};

/// Objects larger than this go up as multipart uploads, in parts of this size (or larger when
/// 10,000 parts would not suffice). Parts are streamed from the source, so the size costs
/// no memory; larger parts mean fewer requests.
const PART_SIZE: u64 = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
const META_PREFIX: &str = "x-amz-meta-";
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// A LIST page or multipart XML answer is read into memory up to this size.
const XML_LIMIT: u64 = 4 * 1024 * 1024;

pub struct S3Storage {
    creds: creds::Provider,
    plan: route::Plan,
    /// The current route (client, region, base path); replaced when the server says the
    /// bucket is in another region.
    route: RwLock<Arc<route::Route>>,
    /// How often the route was moved to another region (at most `route::MAX_MOVES`).
    moves: AtomicU32,
    bucket: String,
    /// The server answered a multi-object DELETE with NotImplemented: delete one by one.
    no_multi_delete: AtomicBool,
}

pub use route::Addressing;

/// Where and how to reach S3; every field falls back to the `AWS_*` environment (and the
/// shared config file's profile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub addressing: Addressing,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Storage {
    pub fn open(bucket: &str, opts: &S3Options) -> Result<Self> {
        let cfg = |msg: String| Error::Config {
            file: "environment".into(),
            key: String::new(),
            msg,
        };
        let profile = profile::load()?;
        let region = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile.region.clone())
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint_given = opts.endpoint.is_some()
            || env("AWS_ENDPOINT_URL_S3").is_some()
            || env("AWS_ENDPOINT_URL").is_some();
        // "auto" (R2, Tigris, Fly) means: whatever the endpoint is; AWS itself has no such region.
        let region = if region == "auto" && !endpoint_given {
            "us-east-1".to_string()
        } else {
            region
        };
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let creds = creds::Provider::discover(bucket, endpoint.is_none(), &profile)?;
        if endpoint.is_none() && !route::valid_region(&region) {
            return Err(cfg(format!(
                "invalid AWS region '{region}' (a name such as us-east-1 or eu-central-2)"
            )));
        }
        let addressing = match opts.addressing {
            Addressing::Auto => profile.addressing,
            a => a,
        };
        let plan = route::Plan {
            bucket: bucket.to_string(),
            endpoint,
            addressing,
        };
        let route = plan.route(&region).map_err(|e| {
            // The client could not be set up (TLS roots); else the endpoint given is at fault.
            if e.starts_with("S3 endpoint ") {
                cfg(e)
            } else {
                Error::usage(e)
            }
        })?;
        Ok(S3Storage {
            creds,
            plan,
            route: RwLock::new(Arc::new(route)),
            moves: AtomicU32::new(0),
            bucket: bucket.to_string(),
            no_multi_delete: AtomicBool::new(false),
        })
    }

    fn route(&self) -> Arc<route::Route> {
        self.route.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The endpoint as messages show it.
    fn endpoint(&self) -> String {
        self.route().endpoint.clone()
    }

    /// Connections the client opened so far (for the benchmark's figures).
    pub fn connects(&self) -> u64 {
        self.route().client.connects()
    }

    fn err(&self, key: &str, kind: StorageKind, msg: String) -> Error {
        Error::Storage {
            backend: self.describe(),
            key: key.into(),
            kind,
            msg,
        }
    }

    fn meta_headers(&self, key: &str, meta: &Meta) -> Result<Vec<(String, String)>> {
        let mut h = Vec::with_capacity(meta.len());
        for (k, v) in meta {
            let name_ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let value_ok = v.bytes().all(|b| (0x20..0x7f).contains(&b));
            if !name_ok || !value_ok {
                return Err(self.err(
                    key,
                    StorageKind::Permanent,
                    format!("invalid metadata {k}={v:?}"),
                ));
            }
            h.push((
                format!("{META_PREFIX}{}", k.to_ascii_lowercase()),
                v.clone(),
            ));
        }
        Ok(h)
    }

    fn meta_of(resp: &Response) -> Meta {
        resp.headers
            .iter()
            .filter_map(|(k, v)| {
                let k = k.to_ascii_lowercase();
                k.strip_prefix(META_PREFIX)
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect()
    }

    /// Check that the bucket exists and the credentials work, with a one-key listing
    /// (`Bucket::exists()` lists every bucket and fails on some servers).
    pub fn check(&self) -> Result<()> {
        let q = [("list-type", "2"), ("max-keys", "1")];
        self.request_text("GET", "", &q, &[], ReqBody::Empty, XML_LIMIT)
            .map(|_| ())
    }

    fn put_single(
        &self,
        key: &str,
        src: &mut dyn Read,
        len: u64,
        headers: &[(String, String)],
        sha256: Option<&str>,
    ) -> Result<()> {
        let body = ReqBody::Stream(src, len);
        let resp = self.request_signed("PUT", key, &[], headers, body, sha256)?;
        self.body_text(key, resp, ERROR_BODY_LIMIT).map(|_| ())
    }
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint())
    }

    fn put_file(&self, key: &str, file: &std::fs::File, len: u64, meta: &Meta) -> Result<()> {
        if len > PART_SIZE {
            let headers = self.meta_headers(key, meta)?;
            return self.put_multipart(key, multipart::Source::File(file), len, &headers);
        }
        let mut f = file;
        self.put(key, &mut f, len, meta)
    }

    fn put(&self, key: &str, src: &mut dyn Read, len: u64, meta: &Meta) -> Result<()> {
        let headers = self.meta_headers(key, meta)?;
        if len > PART_SIZE {
            self.put_multipart(key, multipart::Source::Stream(src), len, &headers)
        } else {
            // The object's own SHA-256, signed as the payload hash: S3 verifies the upload.
            let sha = meta
                .get(layout::SHA256)
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|h| h.to_ascii_lowercase());
            self.put_single(key, src, len, &headers, sha.as_deref())
        }
    }

    fn get(&self, key: &str) -> Result<Body> {
        let resp = self.request("GET", key, &[], &[], ReqBody::Empty)?;
        let meta = Self::meta_of(&resp);
        let size = resp
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        debug!("GET {key}: {size} bytes");
        Ok(Body {
            meta,
            size,
            reader: Box::new(resp.body),
        })
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Body> {
        if len == 0 {
            let meta = self.head(key)?;
            return Ok(Body {
                meta,
                size: 0,
                reader: Box::new(std::io::empty()),
            });
        }
        let range = [(
            "range".to_string(),
            format!("bytes={start}-{}", start + len - 1),
        )];
        let resp = self.request("GET", key, &[], &range, ReqBody::Empty)?;
        if resp.status != 206 {
            // The server ignored the range (200: the whole object): say so; the caller
            // falls back to one stream.
            return Err(self.err(
                key,
                StorageKind::Permanent,
                format!(
                    "{} ignored a Range request (HTTP {})",
                    self.endpoint(),
                    resp.status
                ),
            ));
        }
        let meta = Self::meta_of(&resp);
        let size = resp
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Body {
            meta,
            size,
            reader: Box::new(resp.body),
        })
    }

    fn put_if(
        &self,
        key: &str,
        body: &[u8],
        meta: &Meta,
        if_match: Option<&str>,
    ) -> Result<Option<String>> {
        let mut headers = self.meta_headers(key, meta)?;
        match if_match {
            None => headers.push(("if-none-match".into(), "*".into())),
            Some(tag) => headers.push(("if-match".into(), format!("\"{tag}\""))),
        }
        let resp = self.send_signed("PUT", key, &[], &headers, ReqBody::Bytes(body), None)?;
        match resp.status {
            // 409 ConditionalRequestConflict: another conditional write raced this one.
            412 | 409 => {
                let _ = resp.text(ERROR_BODY_LIMIT);
                Ok(None)
            }
            501 => Err(self.err(
                key,
                StorageKind::Permanent,
                "conditional writes are not supported (HTTP 501)".into(),
            )),
            _ => {
                let resp = self.expect_2xx(key, resp)?;
                let tag = resp
                    .header("etag")
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string();
                self.body_text(key, resp, ERROR_BODY_LIMIT)?;
                Ok(Some(tag))
            }
        }
    }

    fn get_tagged(&self, key: &str, limit: u64) -> Result<(Vec<u8>, Meta, String)> {
        let resp = self.request("GET", key, &[], &[], ReqBody::Empty)?;
        let meta = Self::meta_of(&resp);
        let tag = resp
            .header("etag")
            .unwrap_or("")
            .trim_matches('"')
            .to_string();
        let text = self.body_text(key, resp, limit)?;
        Ok((text.into_bytes(), meta, tag))
    }

    fn head(&self, key: &str) -> Result<Meta> {
        let resp = self.request("HEAD", key, &[], &[], ReqBody::Empty)?;
        Ok(Self::meta_of(&resp))
    }

    fn list_from(&self, prefix: &str, after: &str, f: &mut dyn FnMut(Entry)) -> Result<()> {
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            } else if !after.is_empty() {
                q.push(("start-after", after));
            }
            let xml = self.request_text("GET", "", &q, &[], ReqBody::Empty, XML_LIMIT)?;
            for c in xml_blocks(&xml, "Contents") {
                let (Some(key), Some(size)) = (xml_tag(c, "Key"), xml_tag(c, "Size")) else {
                    continue;
                };
                // A server that ignores start-after lists from the start: same answer.
                if key.as_str() <= after {
                    continue;
                }
                f(Entry {
                    key,
                    size: size.trim().parse().unwrap_or(0),
                });
            }
            let truncated = xml_tag(&xml, "IsTruncated").is_some_and(|v| v.trim() == "true");
            match xml_tag(&xml, "NextContinuationToken") {
                Some(t) if truncated => token = Some(t),
                _ if truncated => {
                    return Err(self.err(
                        prefix,
                        StorageKind::Permanent,
                        "a truncated listing came without a continuation token".into(),
                    ))
                }
                _ => return Ok(()),
            }
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.request_text("DELETE", key, &[], &[], ReqBody::Empty, ERROR_BODY_LIMIT) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn delete_many(&self, keys: &[String], done: &mut dyn FnMut(&str)) -> Result<()> {
        self.delete_batches(keys, done)
    }

    fn release_idle(&self) {
        self.route().client.release_idle();
    }
}

/// Keys per multi-object DELETE (S3's limit).
const DELETE_BATCH: usize = 1000;

#[cfg(test)]
mod tests;
