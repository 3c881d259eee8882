//! The wal-index header at the start of the `-shm` file (SQLite's `WalIndexHdr`, two copies of
//! 48 bytes, then `WalCkptInfo`). SQLite copies this header when a read transaction begins, so
//! reading it just before and just after our `BEGIN` and finding the same bytes tells us the
//! exact WAL position our reader sees, without taking any lock the application could trip on.
//!
//! Fields are in the host's byte order, except the salts, which are copied verbatim from the
//! (big-endian) WAL header.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::checksum::Checksum;
use crate::error::{Error, Result};

const HDR: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalIndex {
    /// Counter SQLite bumps on every commit.
    pub change: u32,
    /// Last committed frame; 0 when the WAL is logically empty.
    pub max_frame: u32,
    /// Running checksum after `max_frame`.
    pub cksum: Checksum,
    pub salt1: u32,
    pub salt2: u32,
    /// Frames already copied into the database file.
    pub backfill: u32,
}

fn ne(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Read the wal-index header through `f`, an open `-shm` file; `Ok(None)` when there is no
/// usable one (not initialised, or a writer is updating it and the two copies differ).
///
/// `f` must stay open for as long as this process has SQLite connections on the database:
/// closing *any* descriptor of a file drops every POSIX lock the process holds on it, which
/// would silently release SQLite's read-mark locks (and with them our pin).
pub fn read(f: &File, path: &Path) -> Result<Option<WalIndex>> {
    let mut b = [0u8; 2 * HDR + 4];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    }
    if b[..HDR] != b[HDR..2 * HDR] || ne(&b, 0) != 3_007_000 || b[12] != 1 {
        return Ok(None);
    }
    Ok(Some(WalIndex {
        change: ne(&b, 8),
        max_frame: ne(&b, 16),
        cksum: Checksum(ne(&b, 24), ne(&b, 28)),
        salt1: u32::from_be_bytes([b[32], b[33], b[34], b[35]]),
        salt2: u32::from_be_bytes([b[36], b[37], b[38], b[39]]),
        backfill: ne(&b, 2 * HDR),
    }))
}

/// Byte offsets of SQLite's WAL write and checkpoint locks in the `-shm` file (its
/// `WALINDEX_LOCK_OFFSET`; locks 0 and 1).
const WRITE_LOCK: i64 = 120;
const CKPT_LOCK: i64 = 121;

/// Does another process hold both the WAL write lock and the checkpoint lock? That is a
/// FULL, RESTART or TRUNCATE checkpoint (or a writer beside a checkpointing connection), and
/// it may be waiting for readers to move on. Our own process's locks never show here: POSIX
/// record locks do not conflict with their owner.
pub fn checkpointer_busy(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    let held = |byte: i64| {
        // SAFETY: `flock` is plain data; all-zero is a valid value to fill in.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = byte as _;
        fl.l_len = 1;
        // SAFETY: a valid descriptor and a pointer to a `flock`, as F_GETLK documents; it
        // only reports, it takes no lock.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
        // F_UNLCK is a c_int on Linux and a c_short on the BSDs; l_type a c_short on both.
        let unlocked = libc::F_UNLCK as libc::c_short;
        rc == 0 && fl.l_type != unlocked
    };
    held(WRITE_LOCK) && held(CKPT_LOCK)
}
