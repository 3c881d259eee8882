//! Sending signed requests: SigV4 over the current route, the answer's status classified,
//! and the bucket's region followed when the server names another (`route`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::http::{ReqBody, Response};
use super::super::sigv4::{self, Keys};
use super::errors::classify;
use super::xml::xml_tag;
use super::{route, S3Storage, ERROR_BODY_LIMIT};
use crate::error::{Error, Result, StorageKind};

impl S3Storage {
    /// Classify an HTTP status.
    pub(super) fn status_err(&self, key: &str, status: u16, body: &str) -> Error {
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
    pub(super) fn request(
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
    pub(super) fn request_signed(
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
    pub(super) fn send_signed(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
        body: ReqBody,
        body_sha256: Option<&str>,
    ) -> Result<Response> {
        super::super::count_request(match method {
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
            service: "s3",
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
        let (qs, head) = sigv4::sign(&keys, &req, crate::time::Stamp::now());
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
    pub(super) fn request_text(
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
    pub(super) fn expect_2xx(&self, key: &str, resp: Response) -> Result<Response> {
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
    pub(super) fn body_text(&self, key: &str, resp: Response, limit: u64) -> Result<String> {
        resp.text(limit).map_err(|e| {
            self.err(
                key,
                StorageKind::Transient,
                format!("reading the answer from {}: {e}", self.endpoint()),
            )
        })
    }
}
