//! Reading a fetched object: its SHA-256 as it streams, and a failure of the transfer itself
//! (a connection reset, a body cut short, a timeout) kept apart from what is stored. A download
//! that breaks off is a transient storage error ("the stored object may be intact"), retried
//! with a fresh GET, never reported as a SHA-256 mismatch of a damaged replica.

use std::io::{self, Read};

use crate::compress;
use crate::digest::HashingReader;
use crate::error::{Error, Result, StorageKind};
use crate::layout::{self, Meta};
use crate::storage::retry::retrying;
use crate::storage::{Body, Storage};
use crate::wal::segment::read_segment;
use crate::wal::{FrameHeader, WalHeader};

/// A body being read: hashed, counted, and its first transfer failure remembered (the parser
/// reading through it only sees an io error and cannot tell).
pub struct Checked<R> {
    r: HashingReader<R>,
    size: u64,
    fault: Option<String>,
}

impl<R: Read> Checked<R> {
    pub fn new(reader: R, size: u64) -> Self {
        Checked {
            r: HashingReader::new(reader),
            size,
            fault: None,
        }
    }

    /// Read what is left, then: a transfer failure as a transient error of `backend`, else the
    /// SHA-256 checked against `want`. Returns the hash (hex).
    pub fn finish(mut self, backend: &str, key: &str, want: &str) -> Result<String> {
        if self.fault.is_none() {
            let _ = io::copy(&mut self, &mut io::sink());
        }
        if let Some(why) = self.fault {
            return Err(broke_off(backend, key, self.r.bytes, self.size, &why));
        }
        let got = self.r.hex();
        check_sha(key, want, &got)?;
        Ok(got)
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.r.read(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                self.fault.get_or_insert_with(|| e.to_string());
                Err(e)
            }
            r => r,
        }
    }
}

/// Metadata `field` of the object at `key`, which it must have.
pub(super) fn need<'a>(m: &'a Meta, key: &str, field: &str) -> Result<&'a String> {
    m.get(field)
        .ok_or_else(|| Error::integrity(key, format!("has no {field} metadata")))
}

/// Read the segment `key` from its body, each frame through `apply`: the stored bytes are
/// checked against the object's `sha256` and, when the segment is compressed, the WAL inside
/// against its `wal-sha256`. Returns the WAL header, the frames and the chain hash
/// (`layout::chain_sha`). A transfer that broke off is reported first (it is retried), then
/// a stored object that is not what its hash says, then a WAL that is not valid.
pub fn read_segment_body(
    body: Body,
    backend: &str,
    key: &str,
    apply: impl FnMut(&FrameHeader, &[u8]) -> io::Result<()>,
) -> Result<(WalHeader, u32, String)> {
    let want = need(&body.meta, key, layout::SHA256)?.clone();
    let mut r = Checked::new(body.reader, body.size);
    let (res, inside) = if compress::is_compressed(key) {
        let want_wal = need(&body.meta, key, layout::WAL_SHA256)?.clone();
        let mut wal = HashingReader::new(compress::decoder(&mut r));
        let res = read_segment(&mut wal, apply);
        (res, Some((want_wal, wal.hex())))
    } else {
        (read_segment(&mut r, apply), None)
    };
    let got = r.finish(backend, key, &want)?;
    let (hdr, frames) =
        res.map_err(|why| Error::integrity(key, format!("invalid segment: {why}")))?;
    match inside {
        None => Ok((hdr, frames, got)),
        Some((want_wal, got_wal)) => {
            if want_wal != got_wal {
                return Err(Error::integrity(
                    key,
                    format!(
                        "SHA-256 mismatch of the WAL inside: stored {want_wal}, computed {got_wal}"
                    ),
                ));
            }
            Ok((hdr, frames, got_wal))
        }
    }
}

/// A GET whose body stopped after `got` of `size` bytes, for `why`.
pub fn broke_off(backend: &str, key: &str, got: u64, size: u64, why: &str) -> Error {
    Error::Storage {
        backend: backend.to_string(),
        key: key.to_string(),
        kind: StorageKind::Transient,
        msg: format!(
            "the download broke off after {got} of {size} bytes ({why}); the stored object may be intact"
        ),
    }
}

pub(super) fn check_sha(key: &str, want: &str, got: &str) -> Result<()> {
    if want != got {
        return Err(Error::integrity(
            key,
            format!("SHA-256 mismatch: stored {want}, computed {got}"),
        ));
    }
    Ok(())
}

/// Run `f` on the body of `key` (`first`: as fetched ahead) and, when fetching or reading it
/// failed transiently, on a fresh GET, as `retrying` allows. `f` must be repeatable: it may
/// have applied part of the object before the transfer broke off.
pub fn with_body<T>(
    storage: &dyn Storage,
    key: &str,
    first: Result<Body>,
    mut f: impl FnMut(Body) -> Result<T>,
) -> Result<T> {
    let mut first = Some(first);
    retrying(&format!("fetching {key}"), || {
        let body = match first.take() {
            Some(b) => b?,
            None => storage.get(key)?,
        };
        f(body)
    })
}
