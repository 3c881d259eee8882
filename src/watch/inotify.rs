//! inotify: one watch per directory holding databases.

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchMask};
use log::{error, warn};

use super::WatchEvent;
use crate::error::{Error, Result};

pub fn spawn(files: &[PathBuf], tx: Sender<WatchEvent>) -> Result<JoinHandle<()>> {
    let mut ino = Inotify::init().map_err(|e| Error::io("initialise inotify for", "/", e))?;
    let mut dirs: HashMap<inotify::WatchDescriptor, PathBuf> = HashMap::new();
    let mask = WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO;
    for f in files {
        let dir = f
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        if dirs.values().any(|d| *d == dir) {
            continue;
        }
        let wd = ino.watches().add(&dir, mask).map_err(|e| {
            Error::io("watch directory", &dir, e)
                .with_hint("raise fs.inotify.max_user_watches if it is exhausted")
        })?;
        dirs.insert(wd, dir);
    }
    thread::Builder::new()
        .name("walsync-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let events = match ino.read_events_blocking(&mut buf) {
                    Ok(ev) => ev,
                    Err(e) => {
                        error!("watch: reading inotify events failed: {e}");
                        return;
                    }
                };
                for ev in events {
                    let msg = if ev.mask.contains(EventMask::Q_OVERFLOW) {
                        warn!("watch: inotify queue overflowed; rescanning every database");
                        WatchEvent::Overflow
                    } else {
                        match (dirs.get(&ev.wd), ev.name) {
                            (Some(d), Some(n)) if relevant(ev.mask, n) => {
                                WatchEvent::Changed(d.join(n))
                            }
                            _ => continue,
                        }
                    };
                    if tx.send(msg).is_err() {
                        return; // the event loop is gone: shutting down
                    }
                }
            }
        })
        .map_err(|e| Error::io("spawn thread", "walsync-watch", e))
}

/// In WAL mode every commit goes through the `-wal` file; the database file itself is written
/// only by checkpoints (ours included), which change nothing to ship. So content writes count
/// only on `-wal`, while creations, deletions and renames count for every file (a `-journal`
/// appearing means the database left WAL mode; a database file replaced is a new database).
fn relevant(mask: EventMask, name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    if n.ends_with("-shm") {
        return false;
    }
    !mask.contains(EventMask::MODIFY) || n.ends_with("-wal")
}
