//! File-system change notification: one thread (`walsync-watch`) blocks on the kernel's
//! notification queue (inotify on Linux, kqueue on BSD and macOS) and turns what it reads into
//! `WatchEvent`s on a bounded channel. It does no other I/O and never polls.

#[cfg(target_os = "linux")]
mod inotify;
#[cfg(any(
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
mod kqueue;

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something happened to this path (written, created, deleted, renamed).
    Changed(PathBuf),
    /// The kernel dropped events: treat every database as changed.
    Overflow,
}

/// Start watching `files` (databases) through their directories. Events for other files in
/// those directories are sent too; the receiver filters.
pub fn spawn(files: &[PathBuf], tx: Sender<WatchEvent>) -> Result<JoinHandle<()>> {
    #[cfg(target_os = "linux")]
    {
        inotify::spawn(files, tx)
    }
    #[cfg(any(
        target_os = "macos",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    ))]
    {
        kqueue::spawn(files, tx)
    }
}

/// The database a changed path belongs to: `x.db-wal`, `x.db-shm`, `x.db-journal` -> `x.db`.
pub fn database_of(path: &std::path::Path) -> PathBuf {
    let s = path.as_os_str().to_string_lossy();
    for suf in ["-wal", "-shm", "-journal"] {
        if let Some(b) = s.strip_suffix(suf) {
            return PathBuf::from(b);
        }
    }
    path.to_path_buf()
}
