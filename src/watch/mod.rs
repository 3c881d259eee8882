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

use crossbeam_channel::Sender;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something happened to this path (written, created, deleted, renamed).
    Changed(PathBuf),
    /// The kernel dropped events: treat every database as changed.
    Overflow,
}

#[cfg(target_os = "linux")]
pub use inotify::Watcher;
#[cfg(any(
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
pub use kqueue::Watcher;

/// Start watching `dirs` (the directories holding the databases, and the config's `dir`
/// entries). Events for every file in them are sent; the receiver filters.
pub fn spawn(dirs: &[PathBuf], tx: Sender<WatchEvent>) -> Result<Watcher> {
    #[cfg(target_os = "linux")]
    {
        inotify::spawn(dirs, tx)
    }
    #[cfg(any(
        target_os = "macos",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    ))]
    {
        kqueue::spawn(dirs, tx)
    }
}

/// The directory of a database file.
pub fn dir_of(file: &std::path::Path) -> PathBuf {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf()
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
