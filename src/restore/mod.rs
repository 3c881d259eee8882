//! The way back: plan from a LIST alone, then fetch the snapshot and the segments after it,
//! verifying every object's SHA-256, the segment format, and the chain (each segment names the
//! hash of the object before it, and its WAL position continues the previous one). The result is
//! written to a temporary file, checked with `PRAGMA integrity_check`, and only then renamed
//! onto the output. Also `list` and `verify`, which read the same chain.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use log::info;
use rusqlite::Connection;

use crate::dbfile;
use crate::error::{Error, Result};
use crate::layout::{self, Kind, Meta, Object, Position};
use crate::storage::{Body, Storage};

mod ahead;
mod pages;
mod parts;
mod read;
mod verify;
use crate::storage::retry::retrying;
use crate::time::Stamp;

use pages::Pages;
use read::{need, read_segment_body, with_body};
pub use verify::{verify, Verified};

/// Every object of one namespace, in replay order.
pub fn objects(storage: &dyn Storage, ns: &str) -> Result<Vec<Object>> {
    // No retry here: the daemon's retention calls this from an upload job, whose scheduler
    // has its own backoff; the read commands retry in `objects_of_backup`.
    let mut objs = Vec::new();
    storage.list(&format!("{ns}/"), &mut |e| {
        if let Some((n, o)) = layout::parse_key(&e.key, e.size) {
            if n == ns {
                objs.push(o);
            }
        }
    })?;
    layout::sort(&mut objs);
    Ok(objs)
}

/// The objects of a namespace that must exist: none is an error naming it.
fn objects_of_backup(storage: &dyn Storage, ns: &str) -> Result<Vec<Object>> {
    let objs = retrying(&format!("listing {ns}"), || objects(storage, ns))?;
    if objs.is_empty() {
        return Err(
            Error::other(format!("no backup of '{ns}' in {}", storage.describe())).with_hint(
                format!(
                    "check the name with 'walsync list -b {}'",
                    storage.describe()
                ),
            ),
        );
    }
    Ok(objs)
}

/// What a restore (or verify) needs to walk: the snapshot and the segments after it.
pub struct Plan {
    pub snapshot: Object,
    pub segments: Vec<Object>,
}

/// The latest snapshot at or before `pit` (or the latest), and the segments after it up to `pit`.
pub fn plan(storage: &dyn Storage, ns: &str, pit: Option<Stamp>) -> Result<Plan> {
    let objs = objects_of_backup(storage, ns)?;
    let limit = pit.unwrap_or(Stamp::from_ms(u64::MAX));
    let snap = objs
        .iter()
        .rfind(|o| o.kind == Kind::Snapshot && o.ts <= limit)
        .cloned();
    let Some(snapshot) = snap else {
        let first = objs.iter().find(|o| o.kind == Kind::Snapshot);
        let msg = match (pit, first) {
            (Some(t), Some(f)) => format!(
                "no snapshot of '{ns}' at or before {t}; the earliest is at {}",
                f.ts
            ),
            _ => format!("no snapshot of '{ns}' in {}", storage.describe()),
        };
        return Err(Error::other(msg)
            .with_hint("choose a later --point-in-time, or run 'walsync snapshot'"));
    };
    let segments = objs
        .into_iter()
        .filter(|o| matches!(o.kind, Kind::Segment { .. }) && o.ts > snapshot.ts && o.ts <= limit)
        .collect();
    Ok(Plan { snapshot, segments })
}

/// Walks a chain object by object, checking hashes, links and positions.
pub struct ChainCheck {
    anchor: String,
    pos: Position,
    pub page_size: u32,
}

impl ChainCheck {
    /// Start from a snapshot's metadata and its verified hash.
    pub fn start(key: &str, meta: &Meta, sha: &str, page_size: u32) -> Result<Self> {
        let pos = layout::get_position(meta)
            .ok_or_else(|| Error::integrity(key, "has no chain position metadata"))?;
        let anchor = meta
            .get(layout::PREV)
            .cloned()
            .unwrap_or_else(|| sha.to_string());
        Ok(ChainCheck {
            anchor,
            pos,
            page_size,
        })
    }

    /// Check a segment's metadata against the chain before its bytes are applied.
    pub fn check_links(&self, key: &str, meta: &Meta) -> Result<Position> {
        let prev = need(meta, key, layout::PREV)?;
        if *prev != self.anchor {
            return Err(Error::integrity(
                key,
                "does not follow the object before it (a gap in the chain, or an object of another chain)",
            ));
        }
        let pos = layout::get_position(meta)
            .ok_or_else(|| Error::integrity(key, "has no chain position metadata"))?;
        let first: u32 = need(meta, key, layout::FIRST)?
            .parse()
            .map_err(|_| Error::integrity(key, "bad 'first' metadata"))?;
        let Some((h, e)) = pos.wal else {
            return Err(Error::integrity(key, "has no WAL position metadata"));
        };
        let ok = match &self.pos.wal {
            Some((ph, pe)) if h.same_wal(ph) => first == pe.frame + 1 && pos.gen == self.pos.gen,
            Some((ph, _)) => {
                let base_db = meta.get(layout::BASE).map(String::as_str) == Some(layout::BASE_DB);
                (h.is_restart_of(ph) || base_db) && first == 1 && pos.gen > self.pos.gen
            }
            None => first == 1,
        };
        if !ok || e.frame < first {
            return Err(Error::integrity(
                key,
                "its WAL position does not continue the object before it",
            ));
        }
        if h.page_size != self.page_size {
            return Err(Error::integrity(
                key,
                format!(
                    "page size {} differs from the snapshot's {}",
                    h.page_size, self.page_size
                ),
            ));
        }
        Ok(pos)
    }

    pub fn advance(&mut self, sha: String, pos: Position) {
        self.anchor = sha;
        self.pos = pos;
    }
}

/// Page size from a database file's header.
fn db_page_size(path: &Path) -> Result<u32> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    dbfile::page_size(&f, path)
}

/// Verify and apply one fetched segment onto the database file's `pages` (at `path`).
/// Repeatable: a segment cut off mid-way is applied again whole from a fresh GET (its page
/// writes and sizes are absolute, so the second pass ends where one whole pass would).
fn apply_segment(
    body: Body,
    backend: &str,
    key: &str,
    chain: &mut ChainCheck,
    (pages, path): (&mut Pages, &Path),
) -> Result<u32> {
    let pos = chain.check_links(key, &body.meta)?;
    // A failed write is the local disk's, reported as such, not as a bad segment.
    let mut written = Ok(());
    let res = read_segment_body(body, backend, key, |fh, page| {
        let w = pages.put(fh.pgno, page).and_then(|()| match fh {
            _ if fh.is_commit() => pages.commit(fh.commit),
            _ => Ok(()),
        });
        if let Err(e) = w {
            written = Err(Error::io(
                "write",
                path,
                io::Error::new(e.kind(), e.to_string()),
            ));
            return Err(e);
        }
        Ok(())
    });
    written?;
    let (hdr, frames, got) = res?;
    let (mh, _) = pos.wal.expect("checked by check_links");
    if !hdr.same_wal(&mh) {
        return Err(Error::integrity(
            key,
            "segment header does not match its metadata",
        ));
    }
    chain.advance(got, pos);
    Ok(frames)
}

pub struct Restored {
    pub snapshot: String,
    pub segments: usize,
    pub frames: u64,
    pub bytes: u64,
    pub restored_to: Stamp,
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.walsync-restore-{}", std::process::id()))
}

fn side_files(p: &Path) -> [PathBuf; 2] {
    [dbfile::wal_path(p), dbfile::shm_path(p)]
}

/// Restore namespace `ns` into `out` (latest, or the state at `pit`).
pub fn restore(
    storage: &dyn Storage,
    ns: &str,
    out: &Path,
    pit: Option<Stamp>,
    force: bool,
) -> Result<Restored> {
    restore_with(storage, ns, out, pit, force, &mut |_| {})
}

/// How far a restore has come, for a progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub objects: usize,
    pub objects_total: usize,
    pub bytes: u64,
    pub bytes_total: u64,
}

/// `restore`, calling `progress` as bytes arrive (at least once per object and per MiB).
pub fn restore_with(
    storage: &dyn Storage,
    ns: &str,
    out: &Path,
    pit: Option<Stamp>,
    force: bool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Restored> {
    if out.exists() && !force {
        return Err(
            Error::other(format!("output {} already exists", out.display()))
                .with_hint("choose another -o path, or pass --force to replace it"),
        );
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(
                Error::other(format!("output directory {} does not exist", dir.display()))
                    .with_hint("create it first"),
            );
        }
    }
    let plan = plan(storage, ns, pit)?;
    let tmp = temp_path(out);
    let res = restore_into(storage, &plan, &tmp, progress);
    let restored = match res {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            for p in side_files(&tmp) {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
    };
    for p in side_files(out) {
        // A stale WAL beside the output would be replayed onto the restored database.
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove stale", p, e)),
        }
    }
    fs::rename(&tmp, out).map_err(|e| Error::io("rename restored database to", out, e))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(restored)
}

/// The snapshot into `tmp`, checked against its SHA-256: by parallel ranges when large
/// (`parts`), else (or when the server has no ranges) as one stream: (metadata, bytes, hash).
fn fetch_snapshot(
    storage: &dyn Storage,
    snap: &Object,
    tmp: &Path,
    p: &mut Progress,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Meta, u64, String)> {
    let (skey, size) = (&snap.key, snap.size);
    if size >= parts::MIN_SIZE {
        let f = File::create(tmp).map_err(|e| Error::io("create", tmp, e))?;
        let report = &mut |n| {
            p.bytes = n;
            progress(p);
        };
        if let Some((meta, sha)) = parts::fetch(storage, skey, size, (&f, tmp), report)? {
            read::check_sha(skey, need(&meta, skey, layout::SHA256)?, &sha)?;
            return Ok((meta, size, sha));
        }
    }
    download(storage, skey, tmp, p, progress)
}

/// The snapshot as one stream (small ones, or a server without ranges), hashed as it comes.
/// A transfer that breaks off resumes where it stopped (a range GET of the rest, which must
/// carry the same SHA-256 in its metadata, i.e. be the same object), as `retrying` allows;
/// a server that answers the range with the whole object starts it over. Returns (metadata,
/// bytes, SHA-256).
fn download(
    storage: &dyn Storage,
    skey: &str,
    tmp: &Path,
    p: &mut Progress,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Meta, u64, String)> {
    use sha2::{Digest, Sha256};
    let backend = storage.describe();
    let mut f = File::create(tmp).map_err(|e| Error::io("create", tmp, e))?;
    // What is in `f` so far, the object's size and metadata (from its first answer).
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut first: Option<(u64, Meta)> = None;
    let mut buf = vec![0u8; 1 << 20];
    retrying(&format!("fetching {skey}"), || {
        let mut body = match &first {
            Some((size, _)) if got > 0 => storage.get_range(skey, got, size - got)?,
            _ => storage.get(skey)?,
        };
        match &first {
            Some((size, meta))
                if got > 0
                    && body.size == size - got
                    && body.meta.get(layout::SHA256) == meta.get(layout::SHA256) => {}
            _ => {
                // The whole object: from its first byte.
                f.set_len(0).map_err(|e| Error::io("write", tmp, e))?;
                f.seek(io::SeekFrom::Start(0))
                    .map_err(|e| Error::io("write", tmp, e))?;
                (h, got) = (Sha256::new(), 0);
                first = Some((body.size, body.meta.clone()));
            }
        }
        let size = first.as_ref().map_or(0, |f| f.0);
        loop {
            let n = match body.reader.read(&mut buf) {
                Ok(0) if got < size => {
                    let why = "the answer ended early";
                    return Err(read::broke_off(&backend, skey, got, size, why));
                }
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read::broke_off(&backend, skey, got, size, &e.to_string())),
            };
            f.write_all(&buf[..n])
                .map_err(|e| Error::io("write", tmp, e))?;
            h.update(&buf[..n]);
            got += n as u64;
            p.bytes = got;
            progress(p);
        }
    })?;
    f.flush().map_err(|e| Error::io("write", tmp, e))?;
    let (_, meta) = first.expect("a first answer");
    let want = need(&meta, skey, layout::SHA256)?;
    let sha = crate::digest::hex(h);
    read::check_sha(skey, want, &sha)?;
    Ok((meta, got, sha))
}

fn restore_into(
    storage: &dyn Storage,
    plan: &Plan,
    tmp: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Restored> {
    let mut p = Progress {
        objects_total: 1 + plan.segments.len(),
        bytes_total: plan.snapshot.size + plan.segments.iter().map(|o| o.size).sum::<u64>(),
        ..Progress::default()
    };
    let keys: Vec<(String, u64)> = plan
        .segments
        .iter()
        .map(|o| (o.key.clone(), o.size))
        .collect();
    let dir = tmp
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Where the time goes, for the log: snapshot, segments, fsync, integrity check.
    let began = std::time::Instant::now();
    let mut phases = [0f64; 4];
    let mut saved = 0u64;
    // The segments are fetched ahead while the snapshot downloads.
    let (bytes, frames) = ahead::with_ahead(storage, &keys, Some(dir), |next| {
        let skey = &plan.snapshot.key;
        let backend = storage.describe();
        let (meta, bytes, sha) = fetch_snapshot(storage, &plan.snapshot, tmp, &mut p, progress)?;
        p.objects = 1;
        progress(&p);
        phases[0] = began.elapsed().as_secs_f64();
        let page_size = db_page_size(tmp)?;
        let mut chain = ChainCheck::start(skey, &meta, &sha, page_size)?;
        let out = OpenOptions::new()
            .write(true)
            .open(tmp)
            .map_err(|e| Error::io("open", tmp, e))?;
        let mut frames = 0u64;
        let mut pages = Pages::new(&out, page_size).map_err(|e| Error::io("open", tmp, e))?;
        for seg in &plan.segments {
            let first = next
                .next()
                .ok_or_else(|| Error::integrity(&seg.key, "was not fetched"))?;
            frames += with_body(storage, &seg.key, first, |body| {
                apply_segment(body, &backend, &seg.key, &mut chain, (&mut pages, tmp))
            })? as u64;
            p.objects += 1;
            p.bytes += seg.size;
            progress(&p);
        }
        pages.flush().map_err(|e| Error::io("write", tmp, e))?;
        saved = pages.rewrites;
        phases[1] = began.elapsed().as_secs_f64();
        let (synced, checked) = sync_and_check(&out, tmp, began)?;
        phases[2] = synced - phases[1];
        phases[3] = checked - phases[1];
        Ok((bytes, frames))
    })?;
    let skey = &plan.snapshot.key;
    let restored_to = plan.segments.last().map_or(plan.snapshot.ts, |s| s.ts);
    let total = began.elapsed().as_secs_f64();
    info!(
        "restored {} + {} segments ({frames} frames, {saved} of them written over by later ones before reaching the disk), state as of {}, in {total:.2} s (snapshot {:.2} s, segments {:.2} s, then side by side fsync {:.2} s and integrity check {:.2} s)",
        skey,
        plan.segments.len(),
        restored_to,
        phases[0],
        phases[1] - phases[0],
        phases[2],
        phases[3]
    );
    Ok(Restored {
        snapshot: skey.clone(),
        segments: plan.segments.len(),
        frames,
        bytes,
        restored_to,
    })
}

/// The fsync of the restored file and its integrity check (which reads through the page
/// cache) side by side; both must succeed before the file is renamed into place. Returns
/// when each finished, in seconds since `began`.
fn sync_and_check(out: &File, tmp: &Path, began: std::time::Instant) -> Result<(f64, f64)> {
    std::thread::scope(|s| {
        let sync = s.spawn(|| {
            out.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
            Ok(began.elapsed().as_secs_f64())
        });
        let checked = integrity_check(tmp).map(|()| began.elapsed().as_secs_f64());
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(Error::other("the fsync thread failed")));
        Ok((synced?, checked?))
    })
}

/// `PRAGMA integrity_check` must say "ok".
pub fn integrity_check(path: &Path) -> Result<()> {
    let c = Connection::open(path).map_err(|e| Error::sqlite("open restored database", path, e))?;
    let mut stmt = c
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite("check", path, e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|it| it.collect())
        .map_err(|e| Error::sqlite("check", path, e))?;
    drop(stmt);
    c.close()
        .map_err(|(_, e)| Error::sqlite("close", path, e))?;
    if rows != ["ok"] {
        let first = rows.first().cloned().unwrap_or_default();
        return Err(Error::other(format!(
            "restored database failed integrity_check ({} problems, first: {first})",
            rows.len()
        )));
    }
    Ok(())
}

/// Summary of one database namespace for `list`.
pub struct Summary {
    pub ns: String,
    /// Each snapshot's time and size.
    pub snapshots: Vec<(Stamp, u64)>,
    pub segments: usize,
    pub generations: (u32, u32),
    pub bytes: u64,
    /// The newest object's time, once there is a snapshot to restore from.
    pub latest: Option<Stamp>,
}

/// Every database under `prefix`, with its snapshots, segment count and newest restorable time.
pub fn list(storage: &dyn Storage, prefix: &str) -> Result<Vec<Summary>> {
    let mut by_ns: std::collections::BTreeMap<String, Summary> = Default::default();
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_matches('/'))
    };
    retrying("listing the replica", || {
        by_ns.clear();
        storage.list(&p, &mut |e| {
            let Some((ns, o)) = layout::parse_key(&e.key, e.size) else {
                return;
            };
            let s = by_ns.entry(ns.clone()).or_insert(Summary {
                ns,
                snapshots: vec![],
                segments: 0,
                generations: (u32::MAX, 0),
                bytes: 0,
                latest: None,
            });
            s.bytes += o.size;
            match o.kind {
                Kind::Snapshot => s.snapshots.push((o.ts, o.size)),
                Kind::Segment { gen } => {
                    s.segments += 1;
                    s.generations = (s.generations.0.min(gen), s.generations.1.max(gen));
                }
            }
            if !s.snapshots.is_empty() {
                s.latest = s.latest.max(Some(o.ts));
            }
        })
    })?;
    Ok(by_ns.into_values().collect())
}

#[cfg(test)]
mod tests;
