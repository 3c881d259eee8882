//! Fetching ahead: the objects of a restore or verify are applied one by one in replay order,
//! but fetched by up to `THREADS` concurrent GETs, at most `WINDOW` objects ahead of the one
//! being applied, so a restore at 30 ms from storage costs about one round trip per `THREADS`
//! objects instead of one per object. A fetched object waits in memory when small, otherwise
//! in an unlinked temporary file beside the output (nothing is left behind, even by `kill -9`):
//! memory stays under `WINDOW * MEM_MAX` whatever the objects' sizes. Its SHA-256 is checked
//! by the caller as it reads, as for a direct GET; an error fetching an object is reported
//! when that object's turn comes, so the first failing object in replay order is the one named.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use super::read;
use crate::error::{Error, Result};
use crate::storage::{Body, Storage};

/// Concurrent GETs.
const THREADS: usize = 8;
/// Objects fetched but not yet applied, at most.
const WINDOW: usize = 16;
/// Objects up to this size wait in memory; larger ones in a temporary file.
const MEM_MAX: u64 = 256 << 10;

#[derive(Default)]
struct State {
    /// Next index a worker takes.
    next: usize,
    /// Objects handed to the consumer so far.
    taken: usize,
    /// Fetched objects; None: too large to hold with nowhere to spill, fetched when taken.
    ready: HashMap<usize, Option<Result<Body>>>,
    stop: bool,
}

/// The consumer's side: `next` gives the objects in order.
pub struct Ahead<'a> {
    storage: &'a dyn Storage,
    keys: &'a [(String, u64)],
    shared: &'a (Mutex<State>, Condvar),
}

impl Ahead<'_> {
    /// The next object in order (None after the last), waiting for its fetch.
    pub fn next(&mut self) -> Option<Result<Body>> {
        let (m, cv) = self.shared;
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        if s.taken >= self.keys.len() {
            return None;
        }
        let i = s.taken;
        loop {
            if let Some(r) = s.ready.remove(&i) {
                s.taken += 1;
                cv.notify_all();
                drop(s);
                return Some(r.unwrap_or_else(|| self.storage.get(&self.keys[i].0)));
            }
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Run `f` with the objects `keys` (key, listed size) being fetched ahead of it; the fetching
/// stops when `f` returns (what was fetched and not taken is dropped). Without `spill_dir`,
/// objects too large for memory are fetched when taken (a stream, as a direct GET).
pub fn with_ahead<R>(
    storage: &dyn Storage,
    keys: &[(String, u64)],
    spill_dir: Option<&Path>,
    f: impl FnOnce(&mut Ahead) -> Result<R>,
) -> Result<R> {
    let shared = (Mutex::new(State::default()), Condvar::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS.min(keys.len()) {
            std::thread::Builder::new()
                .name("walsync-fetch".into())
                .stack_size(256 << 10)
                .spawn_scoped(scope, || worker(storage, keys, spill_dir, &shared))
                .map_err(|e| Error::other(format!("cannot start a fetch thread: {e}")))?;
        }
        let out = f(&mut Ahead {
            storage,
            keys,
            shared: &shared,
        });
        let (m, cv) = &shared;
        m.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        cv.notify_all();
        out
    })
}

fn worker(
    storage: &dyn Storage,
    keys: &[(String, u64)],
    dir: Option<&Path>,
    shared: &(Mutex<State>, Condvar),
) {
    let (m, cv) = shared;
    loop {
        let i = {
            let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
            while !s.stop && s.next < keys.len() && s.next >= s.taken + WINDOW {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.stop || s.next >= keys.len() {
                return;
            }
            s.next += 1;
            s.next - 1
        };
        let (key, size) = &keys[i];
        let r = match dir {
            _ if *size <= MEM_MAX => Some(fetch(storage, key, None)),
            Some(d) => {
                let name = format!(".walsync-fetch-{}-{i}", std::process::id());
                Some(fetch(storage, key, Some(d.join(name))))
            }
            None => None,
        };
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        s.ready.insert(i, r);
        cv.notify_all();
    }
}

/// GET `key` whole, into memory or the temporary file `spill` (unlinked once open); an
/// object larger than its listing said, with nowhere to spill, stays a stream. A body that
/// breaks off is a transient error (`read::broke_off`), retried by the consumer.
fn fetch(storage: &dyn Storage, key: &str, spill: Option<PathBuf>) -> Result<Body> {
    let mut body = storage.get(key)?;
    let size = body.size;
    let failed = |got: u64, e: io::Error| {
        read::broke_off(&storage.describe(), key, got, size, &e.to_string())
    };
    let reader: Box<dyn Read + Send> = match spill {
        None if body.size > MEM_MAX => return Ok(body),
        None => {
            let mut v = Vec::with_capacity(body.size as usize);
            if let Err(e) = body.reader.read_to_end(&mut v) {
                return Err(failed(v.len() as u64, e));
            }
            Box::new(io::Cursor::new(v))
        }
        Some(path) => {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io("create", &path, e))?;
            let _ = fs::remove_file(&path);
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0u64;
            loop {
                let n = match body.reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(failed(got, e)),
                };
                f.write_all(&buf[..n])
                    .map_err(|e| Error::io("write", &path, e))?;
                got += n as u64;
            }
            f.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io("seek", &path, e))?;
            Box::new(io::BufReader::with_capacity(64 << 10, f))
        }
    };
    Ok(Body {
        meta: body.meta,
        size: body.size,
        reader,
    })
}
