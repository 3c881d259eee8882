//! A large snapshot is downloaded as byte ranges in parallel (`THREADS` GETs in flight, one
//! `PART` each), written at their offsets into the output, and hashed in order from the file
//! (the page cache) by one more thread as soon as each part is complete, while later parts
//! still download: one stream of a few hundred MB is what bounded a restore, while the
//! segments after it were already fetched ahead. Memory stays at one 256 KiB buffer per thread
//! (1 MiB for the hasher). A
//! range whose transfer breaks off is fetched again (`retrying`); a server that ignores
//! `Range` gets one stream, as for a small snapshot.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use sha2::{Digest, Sha256};

use super::read::broke_off;
use crate::digest;
use crate::error::{Error, Result};
use crate::layout::Meta;
use crate::storage::retry::retrying;
use crate::storage::Storage;

/// Snapshots from this size on are fetched in ranges.
pub const MIN_SIZE: u64 = 64 << 20;
const PART: u64 = 16 << 20;
const THREADS: usize = 6;

/// Fetch `key` (`size` bytes) into `out` at `path` by ranges; `report(bytes so far)` is
/// called on this thread after each part it finishes.
/// Returns the object's metadata and the SHA-256 (hex) of what was written, or None when the
/// server does not serve ranges (the caller then streams it whole).
pub fn fetch(
    storage: &dyn Storage,
    key: &str,
    size: u64,
    (out, path): (&File, &Path),
    report: &mut dyn FnMut(u64),
) -> Result<Option<(Meta, String)>> {
    let head = format!("fetching {key} (bytes 0+{})", PART.min(size));
    let first = retrying(&head, || storage.get_range(key, 0, PART.min(size)));
    let first = match first {
        Ok(b) if b.size == PART.min(size) => b,
        Ok(_) => return Ok(None),
        Err(e) if !e.is_transient() && !e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    out.set_len(size).map_err(|e| Error::io("write", path, e))?;
    let meta = first.meta.clone();
    let parts = size.div_ceil(PART);
    let job = Job {
        storage,
        backend: storage.describe(),
        key,
        size,
        parts,
        out: (out, path),
        next: AtomicU64::new(1),
        total: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        failed: Mutex::new(None),
        complete: (Mutex::new(vec![false; parts as usize]), Condvar::new()),
    };
    let hashed = std::thread::scope(|s| {
        let hasher = std::thread::Builder::new()
            .name("walsync-hash".into())
            .stack_size(256 << 10)
            .spawn_scoped(s, || job.hash());
        let work = || {
            while let Some(i) = job.take() {
                if let Err(e) = job.write_part(i, None) {
                    job.fail(e);
                }
            }
        };
        for _ in 1..THREADS.min(parts as usize) {
            // Fewer threads if one cannot start: the others fetch its parts.
            let _ = std::thread::Builder::new()
                .name("walsync-range".into())
                .stack_size(256 << 10)
                .spawn_scoped(s, work);
        }
        let mut i = Some(0);
        let mut body = Some(first);
        while let Some(part) = i {
            match job.write_part(part, body.take()) {
                Ok(()) => report(job.total.load(Ordering::Relaxed)),
                Err(e) => job.fail(e),
            }
            i = job.take();
        }
        match hasher {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::other("the hashing thread failed"))),
            // No thread for it: hash here, now that every part is in.
            Err(_) => job.hash(),
        }
    });
    if let Some(e) = job.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let sha = hashed?.ok_or_else(|| Error::other(format!("{key}: a part was not fetched")))?;
    Ok(Some((meta, sha)))
}

/// What the range threads and the hasher share.
struct Job<'a> {
    storage: &'a dyn Storage,
    backend: String,
    key: &'a str,
    size: u64,
    parts: u64,
    out: (&'a File, &'a Path),
    /// The next part to hand out.
    next: AtomicU64,
    /// Bytes written so far.
    total: AtomicU64,
    /// Set when a part failed: nothing more is fetched and the hasher gives up.
    stop: AtomicBool,
    failed: Mutex<Option<Error>>,
    /// Which parts are in the file, for the hasher (woken at each).
    complete: (Mutex<Vec<bool>>, Condvar),
}

impl Job<'_> {
    /// Part `i`'s offset and length.
    fn span(&self, i: u64) -> (u64, u64) {
        (i * PART, PART.min(self.size - i * PART))
    }

    /// The next part to fetch, None when all are taken or one failed.
    fn take(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (!self.stop.load(Ordering::Relaxed) && i < self.parts).then_some(i)
    }

    /// Fetch part `i` (or write `body`, its first answer) at its offset, again while the
    /// transfer breaks off; then tell the hasher.
    fn write_part(&self, i: u64, body: Option<crate::storage::Body>) -> Result<()> {
        let (start, len) = self.span(i);
        let mut body = Some(body);
        retrying(
            &format!("fetching {} (bytes {start}+{len})", self.key),
            || {
                let b = match body.take().flatten() {
                    Some(b) => b,
                    None => self.storage.get_range(self.key, start, len)?,
                };
                copy_at(b.reader, self.out, start, len, &self.backend, self.key)
            },
        )?;
        start_writeback(self.out.0, start, len);
        self.total.fetch_add(len, Ordering::Relaxed);
        self.complete.0.lock().unwrap_or_else(|p| p.into_inner())[i as usize] = true;
        self.complete.1.notify_all();
        Ok(())
    }

    fn fail(&self, e: Error) {
        self.stop.store(true, Ordering::Relaxed);
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        // Under the hasher's lock, so that it cannot miss the wake-up between its check of
        // `stop` and its wait.
        let _held = self.complete.0.lock().unwrap_or_else(|p| p.into_inner());
        self.complete.1.notify_all();
    }

    /// The hash, in order, of what is in the file: each part once it is complete (None when
    /// a part failed).
    fn hash(&self) -> Result<Option<String>> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let path = self.out.1;
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        for i in 0..self.parts {
            let mut done = self.complete.0.lock().unwrap_or_else(|p| p.into_inner());
            while !done[i as usize] && !self.stop.load(Ordering::Relaxed) {
                done = self
                    .complete
                    .1
                    .wait(done)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if !done[i as usize] {
                return Ok(None);
            }
            drop(done);
            let (start, len) = self.span(i);
            let mut at = 0;
            while at < len {
                let n = buf.len().min((len - at) as usize);
                file.read_exact_at(&mut buf[..n], start + at)
                    .map_err(|e| Error::io("read", path, e))?;
                h.update(&buf[..n]);
                at += n as u64;
            }
        }
        Ok(Some(digest::hex(h)))
    }
}

/// Start writing a finished part to disk now (Linux: `sync_file_range`, which does not wait),
/// so that the fsync at the end of the restore finds little left to write. Elsewhere nothing:
/// the fsync writes it all.
fn start_writeback(out: &File, start: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor and range; the call only schedules writeback and
        // reports errors, which the final fsync reports again.
        let _ = unsafe {
            libc::sync_file_range(
                out.as_raw_fd(),
                start as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (out, start, len);
}

/// Copy exactly `len` bytes of `src` to `out` at `at`; a short or broken body is a transient
/// error (fetched again), a failed write the disk's.
fn copy_at(
    mut src: Box<dyn Read + Send>,
    (out, path): (&File, &Path),
    at: u64,
    len: u64,
    backend: &str,
    key: &str,
) -> Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    while got < len {
        let want = buf.len().min((len - got) as usize);
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                let why = "the answer ended early";
                return Err(broke_off(backend, key, at + got, at + len, why));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(broke_off(backend, key, at + got, at + len, &e.to_string())),
        };
        out.write_all_at(&buf[..n], at + got)
            .map_err(|e| Error::io("write", path, e))?;
        got += n as u64;
    }
    Ok(())
}
