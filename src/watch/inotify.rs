//! inotify: one watch per directory holding databases; more can be added while running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use log::{error, warn};

use super::WatchEvent;
use crate::error::{Error, Result};

pub struct Watcher {
    watches: Mutex<Watches>,
    dirs: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
}

fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
}

impl Watcher {
    /// Watch a database (through its directory).
    pub fn add_db(&self, db: &Path) -> Result<()> {
        self.add_dir(&super::dir_of(db))
    }

    pub fn add_dir(&self, dir: &Path) -> Result<()> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if dirs.values().any(|d| d == dir) {
            return Ok(());
        }
        let wd = self
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(dir, mask())
            .map_err(|e| Error::io("watch directory", dir, e))?;
        dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }
}

pub fn spawn(dirs: &[PathBuf], tx: Sender<WatchEvent>) -> Result<Watcher> {
    let mut ino = Inotify::init().map_err(|e| Error::io("initialise inotify for", "/", e))?;
    let w = Watcher {
        watches: Mutex::new(ino.watches()),
        dirs: Arc::new(Mutex::new(HashMap::new())),
    };
    for d in dirs {
        w.add_dir(d)?;
    }
    let map = Arc::clone(&w.dirs);
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
                        let dir = map
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&ev.wd)
                            .cloned();
                        match (dir, ev.name) {
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
        .map_err(|e| Error::io("spawn thread", "walsync-watch", e))?;
    Ok(w)
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
