//! One writer per namespace across hosts: a lease object, `<ns>/lease.json`, written only with
//! conditional writes (create if absent, replace if its ETag is still the one we wrote). The
//! owner file beside the database (`db/spool.rs`) keeps two walsyncs of one host apart; the
//! lease keeps apart two hosts (or PID namespaces: two containers of a rolling deploy) shipping
//! databases into the same namespace, which would interleave two chains.
//!
//! - Taken when a database's chain is loaded (its first step), before the chain is read: what
//!   this walsync then ships continues what the replica holds. A live lease of another holder refuses the claim with
//!   its host, pid, database and age (the step fails, retried with backoff); an expired or released one is taken over, as is one of
//!   this host's database whose walsync is gone (the owner file proved it).
//! - Renewed lazily, before an upload once half its period has passed: a busy database costs
//!   one PUT per `LEASE_SECONDS / 2`, an idle one nothing. A holder that finds its lease taken
//!   (it was paused or cut off longer than the period) stops shipping that database.
//! - Released (marked so, expired) when the database is let go at exit: the next holder takes
//!   it at once.
//! - Servers that accept the conditions without enforcing them (Garage, some Ceph and
//!   StorageGRID versions) or refuse them (B2) are found by a probe at the first load: create
//!   an object twice with `If-None-Match: *`, expect the second refused. Without enforcement
//!   leases are off, logged once, and the owner file and the namespace-source check remain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use log::{info, warn};

use super::db::process_is_walsync;
use super::status::json_str;
use crate::digest;
use crate::error::{Error, Result};
use crate::layout::{self, Meta};
use crate::storage::Storage;
use crate::time::Stamp;

/// The lease period, seconds (`WALSYNC_LEASE_SECONDS` overrides, at least 2).
const LEASE_SECONDS: u64 = 600;

fn period() -> Duration {
    Duration::from_secs(
        std::env::var("WALSYNC_LEASE_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(LEASE_SECONDS)
            .max(2),
    )
}

/// A namespace's lease as this process holds it.
#[derive(Debug)]
pub struct Lease {
    key: String,
    ns: String,
    db: String,
    /// Ours while held; None once released.
    etag: Option<String>,
    renewed: Stamp,
    period: Duration,
    /// Known after the first `keep`: true when the storage does not enforce conditional
    /// writes (no lease is kept).
    off: Option<bool>,
    /// Another holder took it while we held it: this process ships the database no more.
    lost: Option<String>,
}

/// What a lease object says.
#[derive(Debug, Default, PartialEq)]
struct Holder {
    holder: String,
    host: String,
    pid: u32,
    db: String,
    renewed: Stamp,
    expires: Stamp,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0 {
        let n = buf.iter().position(|&b| b == 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        "localhost".into()
    }
}

/// This process: host, pid and start time (a pid reused later is another holder).
fn me() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            Stamp::now().ms()
        )
    })
}

/// A lease object's body; its times are milliseconds since the epoch.
fn body(db: &str, now: Stamp, expires: Stamp) -> Vec<u8> {
    format!(
        "{{\"holder\":{},\"host\":{},\"pid\":{},\"db\":{},\"renewed\":{},\"expires\":{}}}\n",
        json_str(me()),
        json_str(&hostname()),
        std::process::id(),
        json_str(db),
        now.ms(),
        expires.ms()
    )
    .into_bytes()
}

/// The raw value of `"name":` in a flat JSON object: a string's contents (escapes kept) or
/// a number.
fn field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = json[at..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        let mut end = 0;
        let b = s.as_bytes();
        while end < b.len() && b[end] != b'"' {
            end += if b[end] == b'\\' { 2 } else { 1 };
        }
        s.get(..end)
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

fn parse(json: &str) -> Holder {
    let num = |n: &str| field(json, n).and_then(|v| v.parse().ok()).unwrap_or(0);
    Holder {
        holder: field(json, "holder").unwrap_or("").to_string(),
        host: field(json, "host").unwrap_or("?").to_string(),
        pid: num("pid") as u32,
        db: field(json, "db").unwrap_or("?").to_string(),
        renewed: Stamp::from_ms(num("renewed")),
        expires: Stamp::from_ms(num("expires")),
    }
}

fn meta_of(body: &[u8]) -> Meta {
    use sha2::{Digest, Sha256};
    let mut m = Meta::new();
    m.insert(
        layout::SHA256.into(),
        digest::hex(Sha256::new_with_prefix(body)),
    );
    m
}

/// Whether `storage` enforces conditional writes, probed once per replica and process; a
/// probe the storage could not answer (unreachable, 5xx) is its error, and is made again.
pub fn enforced(storage: &dyn Storage, ns: &str) -> Result<bool> {
    static SEEN: Mutex<Option<HashMap<String, bool>>> = Mutex::new(None);
    let name = storage.describe();
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&v) = seen.get_or_insert_with(HashMap::new).get(&name) {
        return Ok(v);
    }
    let parent = ns.rsplit_once('/').map_or("", |(p, _)| p);
    let token = me().replace(':', "-");
    let key = layout::join(parent, &format!(".walsync-lease-probe-{token}"));
    let b = b"probe\n";
    let first = storage.put_if(&key, b, &meta_of(b), None);
    let second = first
        .as_ref()
        .ok()
        .map(|_| storage.put_if(&key, b, &meta_of(b), None));
    let _ = storage.delete(&key);
    let ok = matches!((&first, &second), (Ok(Some(_)), Some(Ok(None))));
    if !ok {
        let why = match (&first, &second) {
            (Err(e), _) => format!("conditional writes failed: {e}"),
            (_, Some(Ok(Some(_)))) => "it accepts If-None-Match without enforcing it".into(),
            (_, Some(Err(e))) => format!("conditional writes failed: {e}"),
            _ => "conditional writes are not enforced".into(),
        };
        for r in [Some(first), second] {
            if let Some(Err(e)) = r {
                if e.is_transient() {
                    return Err(e);
                }
            }
        }
        // info, not warn: a property of the server, not news to every cron run.
        info!(
            "leases are unavailable on {name} ({why}): one walsync per database rests on the owner file beside it and on the namespace's source check"
        );
    } else {
        info!("leases: {name} enforces conditional writes; one lease per namespace");
    }
    seen.get_or_insert_with(HashMap::new).insert(name, ok);
    Ok(ok)
}

impl Lease {
    /// The lease of namespace `ns` for the database at `db`, not taken yet: loading the
    /// chain takes it (`keep`); an idle database costs no request.
    pub fn new(ns: &str, db: &Path) -> Lease {
        Lease {
            key: format!("{ns}/lease.json"),
            ns: ns.to_string(),
            db: db.display().to_string(),
            etag: None,
            renewed: Stamp::default(),
            period: period(),
            off: None,
            lost: None,
        }
    }

    fn write(&mut self, storage: &dyn Storage, if_match: Option<&str>) -> Result<bool> {
        let now = Stamp::now();
        let b = body(&self.db, now, now.after(self.period));
        match storage.put_if(&self.key, &b, &meta_of(&b), if_match)? {
            Some(tag) => {
                self.etag = Some(tag);
                self.renewed = now;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Create the lease, or take over one that expired, was released, or was left by a walsync
    /// of this host and database that is gone.
    fn take(&mut self, storage: &dyn Storage) -> Result<()> {
        for _ in 0..3 {
            if self.write(storage, None)? {
                return Ok(());
            }
            let (bytes, _, tag) = match storage.get_tagged(&self.key, 4096) {
                Ok(x) => x,
                Err(e) if e.is_not_found() => continue, // released and deleted meanwhile
                Err(e) => return Err(e),
            };
            let h = parse(&String::from_utf8_lossy(&bytes));
            let now = Stamp::now();
            let ours_gone = h.host == hostname()
                && h.db == json_str(&self.db).trim_matches('"')
                && h.pid != std::process::id()
                && !process_is_walsync(h.pid);
            if h.holder != me() && h.expires > now && !ours_gone {
                return Err(self.held_by(&h, now));
            }
            if h.holder != me() {
                info!(
                    "namespace {}: taking the lease of {} (pid {}) over ({})",
                    self.ns,
                    h.host,
                    h.pid,
                    if h.expires == h.renewed {
                        "released"
                    } else if ours_gone {
                        "its walsync is gone"
                    } else {
                        "expired"
                    }
                );
            }
            if self.write(storage, Some(&tag))? {
                return Ok(());
            }
        }
        Err(Error::Busy {
            what: format!("namespace {}: the lease keeps changing hands", self.ns),
        })
    }

    fn held_by(&self, h: &Holder, now: Stamp) -> Error {
        Error::other(format!(
            "namespace {} is leased by walsync on {} (pid {}, database {}), renewed {} s ago",
            self.ns,
            h.host,
            h.pid,
            h.db,
            now.since(h.renewed).as_secs()
        ))
        .with_hint(format!(
            "one walsync per database: stop the other one (its lease is released at exit), or wait {} s for the lease to expire",
            (h.expires.since(now).as_millis()).div_ceil(1000)
        ))
    }

    /// Before an upload: take the lease if not held, renew it once half the period has
    /// passed. A lease another holder took in between is an error, now and for the rest of
    /// this process: what it captured may no longer continue the replica's chain.
    pub fn keep(&mut self, storage: &dyn Storage) -> Result<()> {
        if let Some(why) = &self.lost {
            return Err(Error::other(why.clone())
                .with_hint("check which host should replicate this database, and stop the other"));
        }
        let off = match self.off {
            Some(off) => off,
            None => {
                let off = !enforced(storage, &self.ns)?;
                self.off = Some(off);
                off
            }
        };
        if off {
            return Ok(());
        }
        let Some(tag) = self.etag.clone() else {
            return self.take(storage);
        };
        if Stamp::now().since(self.renewed) < self.period / 2 {
            return Ok(());
        }
        if self.write(storage, Some(&tag))? {
            return Ok(());
        }
        self.etag = None;
        let h = storage
            .get_tagged(&self.key, 4096)
            .map(|(b, _, _)| parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let why = format!(
            "namespace {}: lost the lease to walsync on {} (pid {}, database {}): this walsync was cut off for longer than the lease period; it stops shipping this database",
            self.ns, h.host, h.pid, h.db
        );
        self.lost = Some(why);
        self.keep(storage)
    }

    /// Mark the lease released (expired at once), if still ours.
    pub fn release(&mut self, storage: &dyn Storage) {
        let Some(tag) = self.etag.take() else {
            return;
        };
        let now = Stamp::now();
        let b = body(&self.db, now, now);
        if let Err(e) = storage.put_if(&self.key, &b, &meta_of(&b), Some(&tag)) {
            warn!("namespace {}: releasing the lease: {e}", self.ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_bodies_round_trip() {
        let (renewed, expires) = (Stamp::from_ms(1000), Stamp::from_ms(601_000));
        let b = body("/srv/a \"x\".db", renewed, expires);
        let h = parse(std::str::from_utf8(&b).unwrap());
        assert_eq!(h.holder, me());
        assert_eq!(h.pid, std::process::id());
        assert_eq!((h.renewed, h.expires), (renewed, expires));
        assert_eq!(h.db, "/srv/a \\\"x\\\".db");
        assert_eq!(h.host, hostname());
    }
}
