//! A database's outbox: the objects its capture steps spooled, uploaded in chain order by one
//! upload job at a time.
//!
//! Capture and upload are separate jobs so that a slow or stalled upload (a large snapshot over
//! a thin link, a connection that went dead without a reset) never stops a database from being
//! captured: its committed frames keep moving from the WAL into the spool, the pin keeps
//! leapfrogging, and the application's checkpoints keep the WAL bounded (SPEC section 4,
//! guarantee 5). The outbox is the only state the two share, behind one short-held mutex; the
//! daemon runs at most one upload job per database, so objects reach the replica in order.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};
use sha2::{Digest, Sha256};

use super::capture::Appendable;
use super::lease::Lease;
use super::status::json_str;
use crate::compress::{self, Compression};
use crate::digest;
use crate::error::{Error, Result};
use crate::layout::{self, Meta};
use crate::storage::Storage;
use crate::time::Stamp;
use crate::wal::WalHeader;

/// A captured object waiting in the spool for upload.
#[derive(Debug, Clone)]
pub struct Pending {
    pub file: PathBuf,
    pub key: String,
    pub meta: Meta,
    pub len: u64,
    /// Set on a segment later captures may append to (see `capture`).
    pub append: Option<Appendable>,
    /// When it was first queued (set by `Outbox::push`, kept by a merge): the oldest commit
    /// it holds was captured then.
    pub queued: Option<Stamp>,
}

/// What a database's uploads shipped so far (since the daemon started).
#[derive(Debug, Default, Clone)]
pub struct Shipped {
    pub snapshots: u64,
    pub segments: u64,
    pub bytes: u64,
    /// When the last object was uploaded (none yet: `None`), and its key.
    pub last_at: Option<Stamp>,
    pub last_key: String,
    pub generation: u32,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Pending>,
    /// The first item is being uploaded: nothing may append to it.
    in_flight: bool,
    /// Key, generation and WAL frame of the newest object uploaded, and the key `state.json`
    /// last named.
    last: Option<(String, u32, u32)>,
    state_written: Option<String>,
    state_written_at: Option<Instant>,
    shipped: Shipped,
}

/// A pending segment grows by merged captures only up to this size; later captures start a
/// new object. So the one object an upload may be reading when the spool limit drops the rest
/// is at most this (or one capture) in size, not the whole backlog (which once kept the spool
/// at twice its limit during an outage), and no single request carries more than a multipart
/// part.
pub const MERGE_CAP: u64 = 16 << 20;

/// `state.json` is written at most this often while something changes, and at shutdown:
/// PUTs cost money (LS#261).
const STATE_INTERVAL: Duration = Duration::from_secs(60);

/// What a database's uploads follow, changed by a SIGHUP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Every point in time of this window stays restorable (None: forever).
    pub retention: Option<Duration>,
    pub compression: Compression,
}

/// The temporary compressed copy of a spool file, beside it.
fn compressed_file(file: &Path) -> PathBuf {
    let mut z = file.as_os_str().to_owned();
    z.push(compress::LZ4_SUFFIX);
    PathBuf::from(z)
}

pub struct Outbox {
    /// The database, for the logs and `state.json`.
    path: PathBuf,
    ns: String,
    storage: Arc<dyn Storage>,
    inner: Mutex<Inner>,
    /// Held by the upload running now: a second one for the same database waits.
    uploading: Mutex<()>,
    /// Retention (applied after each snapshot upload, see `prune`) and how segments are
    /// stored.
    policy: Mutex<Policy>,
    /// The namespace's lease (`lease.rs`): taken before the chain is loaded, kept before
    /// each upload.
    lease: Mutex<Lease>,
}

impl Outbox {
    pub fn new(path: PathBuf, ns: String, storage: Arc<dyn Storage>, policy: Policy) -> Outbox {
        Outbox {
            lease: Mutex::new(Lease::new(&ns, &path)),
            path,
            ns,
            storage,
            inner: Mutex::new(Inner::default()),
            uploading: Mutex::new(()),
            policy: Mutex::new(policy),
        }
    }

    /// Let the lease go (at exit), so the next holder takes it at once.
    pub fn release_lease(&self) {
        let mut l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        l.release(self.storage.as_ref());
    }

    /// Take (or renew) the namespace's lease: before the chain is loaded, and before each
    /// upload. A lease held by another walsync, or lost to one, is the error.
    pub fn keep_lease(&self) -> Result<()> {
        let mut l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        l.keep(self.storage.as_ref())
    }

    /// A new retention and compression (SIGHUP), from the next upload on.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn policy(&self) -> Policy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, mut p: Pending) {
        p.queued.get_or_insert_with(Stamp::now);
        self.lock().items.push_back(p);
    }

    /// What was shipped so far.
    pub fn shipped(&self) -> Shipped {
        self.lock().shipped.clone()
    }

    /// When the oldest object waiting was queued, if any waits.
    pub fn oldest_queued(&self) -> Option<Stamp> {
        self.lock().items.iter().filter_map(|p| p.queued).min()
    }

    /// Take the newest pending segment if frames from `from_frame` on, in `gen` and WAL
    /// cycle `hdr`, continue it, it is smaller than `MERGE_CAP` and no upload is reading it;
    /// the caller appends and pushes it back (it stays last: order is kept).
    pub fn take_appendable(&self, gen: u32, hdr: &WalHeader, from_frame: u32) -> Option<Pending> {
        let mut i = self.lock();
        let busy = i.in_flight && i.items.len() == 1;
        let ok = i.items.back().is_some_and(|p| {
            p.len < MERGE_CAP
                && p.append
                    .as_ref()
                    .is_some_and(|a| a.continues(gen, hdr, from_frame))
        });
        if busy || !ok {
            return None;
        }
        i.items.pop_back()
    }

    /// Drop every object waiting (not the one an upload is reading now) and its spool file.
    /// Returns how many and their bytes.
    pub fn drop_unsent(&self) -> (usize, u64) {
        let mut i = self.lock();
        let keep = usize::from(i.in_flight).min(i.items.len());
        let dropped: Vec<Pending> = i.items.drain(keep..).collect();
        drop(i);
        let bytes = dropped.iter().map(|p| p.len).sum();
        for p in &dropped {
            let _ = fs::remove_file(&p.file);
        }
        (dropped.len(), bytes)
    }

    /// Pending objects and their bytes.
    pub fn size(&self) -> (usize, u64) {
        let i = self.lock();
        (i.items.len(), i.items.iter().map(|p| p.len).sum())
    }

    /// Objects waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Upload the objects waiting, in order, at most `max` of them (a database written without
    /// pause must not keep a worker forever); stops at the first failure, which leaves the
    /// object first in line for the next attempt. Returns how many were uploaded.
    pub fn upload(&self, max: usize) -> Result<usize> {
        let _only_one = self.uploading.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = 0;
        while done < max {
            let p = {
                let mut i = self.lock();
                let Some(p) = i.items.front().cloned() else {
                    break;
                };
                i.in_flight = true;
                p
            };
            if let Err(e) = self.keep_lease() {
                self.lock().in_flight = false;
                return Err(e);
            }
            let (key, len) = match self.put(&p) {
                Ok(stored) => stored,
                Err(e) => {
                    self.lock().in_flight = false;
                    return Err(e);
                }
            };
            debug!("db={} uploaded {key} ({len} bytes)", self.path.display());
            let _ = fs::remove_file(&p.file);
            let (gen, frame) = layout::get_position(&p.meta)
                .map_or((0, 0), |pos| (pos.gen, pos.wal.map_or(0, |(_, e)| e.frame)));
            let snapshot = p.key.contains("/snapshots/");
            let mut i = self.lock();
            i.items.pop_front();
            i.in_flight = false;
            let s = &mut i.shipped;
            if snapshot {
                s.snapshots += 1;
            } else {
                s.segments += 1;
            }
            s.bytes += len;
            s.last_at = Some(Stamp::now());
            s.last_key.clone_from(&key);
            s.generation = gen;
            i.last = Some((key, gen, frame));
            done += 1;
            drop(i);
            if snapshot {
                self.prune();
            }
        }
        Ok(done)
    }

    /// Store one pending object: a segment compressed first when the policy says so (see
    /// `compress`), into a file beside its spool file. Returns the key and bytes stored.
    fn put(&self, p: &Pending) -> Result<(String, u64)> {
        let compress = self.policy().compression == Compression::Lz4
            && !p.key.contains("/snapshots/")
            && !compress::is_compressed(&p.key);
        if !compress {
            let f = File::open(&p.file).map_err(|e| Error::io("open spool file", &p.file, e))?;
            self.storage.put_file(&p.key, &f, p.len, &p.meta)?;
            return Ok((p.key.clone(), p.len));
        }
        let z = compressed_file(&p.file);
        let put = compress::compress_file(&p.file, &z).and_then(|(len, sha)| {
            let mut meta = p.meta.clone();
            if let Some(wal_sha) = meta.insert(layout::SHA256.into(), sha) {
                meta.insert(layout::WAL_SHA256.into(), wal_sha);
            }
            let key = format!("{}{}", p.key, compress::LZ4_SUFFIX);
            let f = File::open(&z).map_err(|e| Error::io("open spool file", &z, e))?;
            self.storage.put_file(&key, &f, len, &meta)?;
            Ok((key, len))
        });
        // Made again from the spool file if the upload is tried again.
        let _ = fs::remove_file(&z);
        put
    }

    /// Retention after a snapshot upload, still as this namespace's only upload: nothing of
    /// it is being written meanwhile. A failure is logged and retried after the next one;
    /// it never fails the upload.
    fn prune(&self) {
        if let Some(keep) = self.policy().retention {
            if let Err(e) = crate::prune::prune(self.storage.as_ref(), &self.ns, keep, false) {
                warn!(
                    "db={} retention: {e}; retried after the next snapshot",
                    self.path.display()
                );
            }
        }
    }

    /// `state.json`: a small human-readable summary (never needed to restore), written when
    /// something new was uploaded, at most once a minute unless `force`d (at shutdown).
    pub fn write_state(&self, force: bool) -> Result<()> {
        let (last, gen, frame) = {
            let i = self.lock();
            let Some(last) = i.last.clone() else {
                return Ok(());
            };
            if i.state_written.as_deref() == Some(last.0.as_str()) {
                return Ok(());
            }
            if !force
                && i.state_written_at
                    .is_some_and(|t| t.elapsed() < STATE_INTERVAL)
            {
                return Ok(());
            }
            last
        };
        let json = format!(
            "{{\"database\":{},\"generation\":{gen},\"last_object\":{},\"wal_frame\":{frame},\"updated\":\"{}\"}}\n",
            json_str(&self.path.display().to_string()),
            json_str(&last),
            Stamp::now()
        );
        let mut meta = Meta::new();
        meta.insert(
            layout::SHA256.into(),
            digest::hex(Sha256::new_with_prefix(json.as_bytes())),
        );
        let key = layout::state_key(&self.ns);
        self.storage
            .put(&key, &mut json.as_bytes(), json.len() as u64, &meta)?;
        let mut i = self.lock();
        i.state_written = Some(last);
        i.state_written_at = Some(Instant::now());
        Ok(())
    }
}

/// What `state.json` says of the chain: the newest object's key and its generation when it
/// was written. Only a place to start listing from (see `Shipper::load`), never trusted for
/// the chain itself. None for anything not written by `write_state`.
pub fn parse_state(json: &str) -> Option<(u32, String)> {
    let gen = json
        .split_once("\"generation\":")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let rest = json.split_once("\"last_object\":\"")?.1;
    let mut key = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => return Some((gen, key)),
            '\\' => match chars.next()? {
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    key.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c => key.push(c),
            },
            c => key.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_json_round_trips_its_hint() {
        for key in [
            "app/wal/00000003-20261203190012473.wal",
            "a \"b\"\\c\u{1}é/x",
        ] {
            let json = format!(
                "{{\"database\":\"/x\",\"generation\":7,\"last_object\":{},\"wal_frame\":3}}",
                json_str(key)
            );
            assert_eq!(parse_state(&json), Some((7, key.to_string())));
        }
        for bad in [
            "",
            "{}",
            "{\"generation\":x,\"last_object\":\"k\"}",
            "{\"generation\":1,\"last_object\":\"k",
        ] {
            assert_eq!(parse_state(bad), None, "{bad}");
        }
    }
}
