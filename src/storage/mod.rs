//! Where replicas live. One small blocking, byte-level trait; what the bytes mean (WAL,
//! segments, chains) stays in `layout` and `replicate`. Backends are shared as
//! `Arc<dyn Storage>` between all databases and worker threads.

pub(crate) mod http;

/// Requests to storage by type, since the start (for the metrics): `put`, `get`, `head`,
/// `list`, `delete`, and `post` (multipart initiation and completion on S3).
pub const REQUEST_TYPES: [&str; 6] = ["put", "get", "head", "list", "delete", "post"];
static REQUESTS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Count one request of type `t` (one of `REQUEST_TYPES`).
pub fn count_request(t: &str) {
    if let Some(i) = REQUEST_TYPES.iter().position(|x| *x == t) {
        REQUESTS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests so far, by type, in `REQUEST_TYPES` order.
pub fn requests() -> [u64; 6] {
    std::array::from_fn(|i| REQUESTS[i].load(Ordering::Relaxed))
}
pub mod local;
pub mod retry;
pub mod s3;
mod sigv4;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result, StorageKind};
use crate::layout::Meta;

/// A listed object: its key and size.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub size: u64,
}

/// An object being read: its metadata and a stream of its bytes.
pub struct Body {
    pub meta: Meta,
    pub size: u64,
    pub reader: Box<dyn Read + Send>,
}

pub trait Storage: Send + Sync {
    /// Human name for messages, e.g. `file:///var/backups` or `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Store `len` bytes from `src` under `key` with `meta`. Atomic for readers: a `get` or
    /// `list` sees either nothing or the whole object with its metadata. Overwrites.
    fn put(&self, key: &str, src: &mut dyn Read, len: u64, meta: &Meta) -> Result<()>;

    /// `put` from a file (the spool), read from its start. Backends that can read it twice
    /// do better than a stream: S3 signs each multipart part's own SHA-256.
    fn put_file(&self, key: &str, file: &std::fs::File, len: u64, meta: &Meta) -> Result<()> {
        let mut f = file;
        self.put(key, &mut f, len, meta)
    }

    /// Open an object for reading. A missing key returns `StorageKind::NotFound`.
    fn get(&self, key: &str) -> Result<Body>;

    /// Bytes `start .. start + len` of an object, with its metadata (`Body::size` is what
    /// comes: `len` unless the object is shorter). The default reads the whole object and
    /// skips; backends that can seek or ask for a range do.
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Body> {
        let mut b = self.get(key)?;
        let skipped = io::copy(&mut (&mut b.reader).take(start), &mut io::sink()).map_err(|e| {
            Error::Storage {
                backend: self.describe(),
                key: key.into(),
                kind: StorageKind::Transient,
                msg: format!("reading: {e}"),
            }
        })?;
        let size = b.size.saturating_sub(skipped).min(len);
        Ok(Body {
            meta: b.meta,
            size,
            reader: Box::new(b.reader.take(len)),
        })
    }

    /// An object's metadata without its bytes. A missing key returns `NotFound`.
    fn head(&self, key: &str) -> Result<Meta>;

    /// Call `f` for every object whose key starts with `prefix` and sorts after `after` (all
    /// of them when `after` is empty), in key order. Memory does not grow with the number of
    /// objects; on S3 the listing starts at `after` (`start-after`), so the requests made
    /// depend only on what follows it.
    fn list_from(&self, prefix: &str, after: &str, f: &mut dyn FnMut(Entry)) -> Result<()>;

    /// Every object whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str, f: &mut dyn FnMut(Entry)) -> Result<()> {
        self.list_from(prefix, "", f)
    }

    /// Remove an object; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;

    /// Remove several objects (S3: one multi-object DELETE per 1,000 keys), calling `done` for
    /// each key once it is gone. The order in which they go is not promised, and an error may
    /// leave any subset deleted: callers delete only sets whose every subset is safe to lose.
    fn delete_many(&self, keys: &[String], done: &mut dyn FnMut(&str)) -> Result<()> {
        for k in keys {
            self.delete(k)?;
            done(k);
        }
        Ok(())
    }

    /// Write the small object `body` only if a condition holds (leases): with `if_match`
    /// None only when `key` is absent (`If-None-Match: *`), with Some(etag) only when its
    /// ETag is still `etag` (`If-Match`). Ok(Some(new ETag)) when written, Ok(None) when the
    /// condition failed. A backend without conditional writes fails `Permanent`; one that
    /// ignores the conditions is found out by `replicate::lease::probe`.
    fn put_if(
        &self,
        key: &str,
        body: &[u8],
        meta: &Meta,
        if_match: Option<&str>,
    ) -> Result<Option<String>> {
        let _ = (body, meta, if_match);
        Err(Error::Storage {
            backend: self.describe(),
            key: key.into(),
            kind: StorageKind::Permanent,
            msg: "conditional writes are not supported".into(),
        })
    }

    /// A small object (at most `limit` bytes): its bytes, metadata and ETag.
    fn get_tagged(&self, key: &str, limit: u64) -> Result<(Vec<u8>, Meta, String)> {
        let mut b = self.get(key)?;
        let mut v = Vec::new();
        (&mut b.reader)
            .take(limit)
            .read_to_end(&mut v)
            .map_err(|e| Error::Storage {
                backend: self.describe(),
                key: key.into(),
                kind: StorageKind::Transient,
                msg: format!("reading: {e}"),
            })?;
        let tag = b
            .meta
            .get(crate::layout::SHA256)
            .cloned()
            .unwrap_or_default();
        Ok((v, b.meta, tag))
    }

    /// Let go of idle resources (pooled connections); called when the daemon goes quiet.
    fn release_idle(&self) {}
}

/// A replica location parsed from `-b URL` or the config's `bucket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Url {
    Local { dir: PathBuf },
    S3 { bucket: String, prefix: String },
}

pub fn parse_url(s: &str) -> Result<Url> {
    let bad = |why: &str| {
        Error::usage(format!("invalid replica URL '{s}': {why}"))
            .with_hint("use s3://bucket[/prefix], file:///absolute/dir or a directory path")
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        return Ok(Url::S3 {
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
        });
    }
    if let Some(rest) = s.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("a file:// URL needs an absolute path (file:///dir)"));
        }
        return Ok(Url::Local {
            dir: PathBuf::from(rest),
        });
    }
    if s.contains("://") {
        return Err(bad("unknown scheme"));
    }
    Ok(Url::Local {
        dir: PathBuf::from(s),
    })
}

/// Open the backend for a URL; returns it and the key prefix inside it. An S3 bucket is
/// checked (one single-key LIST) so that wrong credentials or a missing bucket fail at once.
pub fn open(url: &Url, s3: &s3::S3Options) -> Result<(Arc<dyn Storage>, String)> {
    match url {
        Url::Local { dir } => Ok((Arc::new(local::LocalStorage::open(dir)?), String::new())),
        Url::S3 { bucket, prefix } => {
            let st = s3::S3Storage::open(bucket, s3)?;
            st.check()?;
            Ok((Arc::new(st), prefix.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            (
                "s3://b",
                Url::S3 {
                    bucket: "b".into(),
                    prefix: "".into(),
                },
            ),
            (
                "s3://b/x/y/",
                Url::S3 {
                    bucket: "b".into(),
                    prefix: "x/y".into(),
                },
            ),
            (
                "file:///var/b",
                Url::Local {
                    dir: "/var/b".into(),
                },
            ),
            (
                "./rel",
                Url::Local {
                    dir: "./rel".into(),
                },
            ),
        ];
        for (s, want) in ok {
            assert_eq!(parse_url(s).unwrap(), want, "{s}");
        }
        for s in ["", "s3://", "file://rel", "gs://b"] {
            assert!(parse_url(s).is_err(), "{s}");
        }
    }
}
