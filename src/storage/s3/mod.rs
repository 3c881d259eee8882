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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use log::debug;

mod creds;
mod delete;
mod errors;
mod multipart;
pub mod profile;
mod route;
mod xml;

use errors::classify;
use xml::{xml_blocks, xml_tag};

use super::http::{ReqBody, Response};
use super::sigv4::{self, Keys};
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

    /// Classify an HTTP status.
    fn status_err(&self, key: &str, status: u16, body: &str) -> Error {
        let (kind, mut msg) = classify(status, body, &self.bucket, &self.endpoint());
        if matches!(status, 401 | 403) {
            // Which keys were refused: the first thing to check.
            msg.push_str(&format!(" (keys from {})", self.creds.source()));
        }
        self.err(key, kind, msg)
    }

    /// Send a signed request and check its status (a non-2xx answer is the classified error).
    /// `key` is the object key ("" for the bucket itself), `query` raw pairs, `headers` extra
    /// headers to sign (metadata).
    fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        body: ReqBody,
    ) -> Result<Response> {
        self.request_signed(method, key, query, headers, body, None)
    }

    /// `request` with the streamed body's SHA-256 signed as its payload hash
    /// (`x-amz-content-sha256`), when known: the server then checks every byte it receives
    /// against it and refuses the object if one differs.
    fn request_signed(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        body: ReqBody,
        body_sha256: Option<&str>,
    ) -> Result<Response> {
        // A body that can be sent again is, once, when the answer moved the route to the
        // bucket's region; a streamed one fails as transient and its caller retries.
        let again = match &body {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Bytes(b) => Some(ReqBody::Bytes(b)),
            ReqBody::Stream(..) => None,
        };
        let moves = self.moves.load(Ordering::Relaxed);
        let resp = self.send_signed(method, key, query, headers, body, body_sha256)?;
        match (self.expect_2xx(key, resp), again) {
            (Err(_), Some(body)) if self.moves.load(Ordering::Relaxed) != moves => {
                let resp = self.send_signed(method, key, query, headers, body, body_sha256)?;
                self.expect_2xx(key, resp)
            }
            (r, _) => r,
        }
    }

    /// The answer says the bucket lives in another region (301/307, or 400
    /// AuthorizationHeaderMalformed, naming it): move the route there, logged, at most
    /// `route::MAX_MOVES` times. Returns whether requests now go elsewhere.
    fn follow(&self, status: u16, body: &str) -> bool {
        let code = xml_tag(body, "Code").unwrap_or_default();
        let moved = matches!(status, 301 | 307)
            || (status == 400 && code == "AuthorizationHeaderMalformed");
        let Some(region) = xml_tag(body, "Region").filter(|r| self.plan.usable_region(r)) else {
            return false;
        };
        let seen = self.route();
        if !moved || seen.region == region {
            return false;
        }
        let mut current = self.route.write().unwrap_or_else(|e| e.into_inner());
        if current.region != seen.region {
            return true; // another request moved it meanwhile
        }
        if self.moves.load(Ordering::Relaxed) >= route::MAX_MOVES {
            return false;
        }
        let Ok(next) = self.plan.route(&region) else {
            return false;
        };
        log::warn!(
            "s3://{}: the bucket is in region {region}, not {} ({} answered HTTP {status} {code}); \
             following it (set AWS_REGION={region}, or region in [storage], to go there directly)",
            self.bucket,
            current.region,
            current.endpoint
        );
        *current = Arc::new(next);
        self.moves.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Sign and send; the answer whatever its status.
    fn send_signed(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        body: ReqBody,
        body_sha256: Option<&str>,
    ) -> Result<Response> {
        super::count_request(match method {
            "GET" if query.iter().any(|(k, _)| *k == "list-type") => "list",
            m => match m {
                "PUT" => "put",
                "GET" => "get",
                "HEAD" => "head",
                "DELETE" => "delete",
                _ => "post",
            },
        });
        let route = self.route();
        let path = if key.is_empty() {
            format!("{}/", route.base)
        } else {
            format!("{}/{}", route.base, sigv4::encode(key, true))
        };
        let hash = match &body {
            ReqBody::Empty => sigv4::sha256_hex(b""),
            ReqBody::Bytes(b) => sigv4::sha256_hex(b),
            ReqBody::Stream(..) => match body_sha256 {
                Some(h) => h.to_string(),
                None => sigv4::UNSIGNED.to_string(),
            },
        };
        let host = route.client.target().host_header();
        let req = sigv4::Request {
            method,
            host: &host,
            path: &path,
            query,
            headers,
            payload_hash: &hash,
        };
        let c = self.creds.get();
        let keys = Keys {
            access: c.access,
            secret: c.secret,
            token: c.token,
            region: route.region.clone(),
        };
        let (qs, head) = sigv4::sign(&keys, &req, crate::time::now_ms());
        let target = if qs.is_empty() {
            path
        } else {
            format!("{path}?{qs}")
        };
        route
            .client
            .send(method, &target, &head, body)
            .map_err(|e| {
                self.err(
                    key,
                    StorageKind::Transient,
                    format!("cannot reach {}: {e}", route.endpoint),
                )
            })
    }

    /// `request`, then its answer's body as text (at most `limit` bytes), read to the end so
    /// the connection is reused.
    fn request_text(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        body: ReqBody,
        limit: u64,
    ) -> Result<String> {
        let resp = self.request(method, key, query, headers, body)?;
        self.body_text(key, resp, limit)
    }

    /// Ok with the response for a 2xx status; otherwise the classified error.
    fn expect_2xx(&self, key: &str, resp: Response) -> Result<Response> {
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            let status = resp.status;
            if status == 403 || status == 400 {
                // Expired or revoked temporary keys: fetch new ones for the next request.
                self.creds.refused();
            }
            let region = resp.header("x-amz-bucket-region").map(str::to_string);
            let mut body = resp.text(ERROR_BODY_LIMIT).unwrap_or_default();
            if let (Some(r), false) = (region, body.contains("<Region>")) {
                body.push_str(&format!("<Region>{r}</Region>"));
            }
            let err = self.status_err(key, status, &body);
            if self.follow(status, &body) {
                // Sent to the wrong region: the same request succeeds at the new route.
                if let Error::Storage {
                    backend, key, msg, ..
                } = err
                {
                    return Err(Error::Storage {
                        backend,
                        key,
                        kind: StorageKind::Transient,
                        msg,
                    });
                }
            }
            Err(err)
        }
    }

    /// A 2xx answer's body (bounded), read to the end so the connection is reused.
    fn body_text(&self, key: &str, resp: Response, limit: u64) -> Result<String> {
        resp.text(limit).map_err(|e| {
            self.err(
                key,
                StorageKind::Transient,
                format!("reading the answer from {}: {e}", self.endpoint()),
            )
        })
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
