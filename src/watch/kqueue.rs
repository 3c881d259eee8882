//! kqueue (BSD, macOS): vnode events on each database file, its WAL and its directory. kqueue
//! reports no names for directory changes, so a directory event is sent as a change of the
//! directory itself (the daemon rescans it). A vnode watch follows a file, not a name: a WAL
//! deleted (the application's last connection closing) drops its watch, and on every event of
//! a directory each watched database's WAL that exists but has no watch gets one, so commits
//! after the application reopens still wake walsync at once.
//!
//! Limitation: watches requested while running (new databases) reach the watcher thread through
//! a channel it checks between events and at least once a second; this once-a-second wake-up
//! exists only on the kqueue build (inotify needs none).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use kqueue::{EventData, EventFilter, FilterFlag, Ident, Vnode};
use log::error;

use super::WatchEvent;
use crate::error::{Error, Result};

fn flags() -> FilterFlag {
    FilterFlag::NOTE_WRITE
        | FilterFlag::NOTE_EXTEND
        | FilterFlag::NOTE_DELETE
        | FilterFlag::NOTE_RENAME
        | FilterFlag::NOTE_ATTRIB
}

fn wal_of(db: &Path) -> PathBuf {
    crate::dbfile::wal_path(db)
}

pub struct Watcher {
    add: Sender<PathBuf>,
}

impl Watcher {
    /// Watch a directory (for databases appearing in it).
    pub fn add_dir(&self, dir: &Path) -> Result<()> {
        self.add
            .try_send(dir.to_path_buf())
            .map_err(|_| Error::other("the watcher is not keeping up"))
    }

    /// Watch a database: its file, its WAL and its directory.
    pub fn add_db(&self, db: &Path) -> Result<()> {
        self.add_dir(&super::dir_of(db))?;
        self.add
            .try_send(db.to_path_buf())
            .map_err(|_| Error::other("the watcher is not keeping up"))
    }
}

fn watch_path(w: &mut kqueue::Watcher, p: &Path, known: &mut HashSet<PathBuf>) {
    if known.insert(p.to_path_buf())
        && w.add_filename(p, EventFilter::EVFILT_VNODE, flags())
            .is_err()
    {
        known.remove(p);
    }
}

pub fn spawn(dirs: &[PathBuf], tx: Sender<WatchEvent>) -> Result<Watcher> {
    let mut w = kqueue::Watcher::new().map_err(|e| Error::io("initialise kqueue for", "/", e))?;
    let mut known = HashSet::new();
    for d in dirs {
        watch_path(&mut w, d, &mut known);
    }
    w.watch()
        .map_err(|e| Error::io("start kqueue watch", "/", e))?;
    let (add_tx, add_rx): (Sender<PathBuf>, Receiver<PathBuf>) = bounded(4096);
    // Databases watched, by directory.
    let mut dbs: HashSet<PathBuf> = HashSet::new();
    thread::Builder::new()
        .name("walsync-watch".into())
        .spawn(move || loop {
            let mut changed = false;
            for p in add_rx.try_iter() {
                watch_path(&mut w, &p, &mut known);
                if p.is_file() {
                    watch_path(&mut w, &wal_of(&p), &mut known);
                    dbs.insert(p);
                }
                changed = true;
            }
            if changed && w.watch().is_err() {
                error!("watch: kqueue re-registration failed");
            }
            let Some(ev) = w.poll(Some(Duration::from_secs(1))) else {
                continue;
            };
            let path = match ev.ident {
                Ident::Filename(_, p) => PathBuf::from(p),
                _ => continue,
            };
            let EventData::Vnode(what) = ev.data else {
                continue;
            };
            let mut rewatch = false;
            if matches!(what, Vnode::Delete | Vnode::Rename) && known.remove(&path) {
                // The watch followed the file away; the name may come back.
                let _ = w.remove_filename(&path, EventFilter::EVFILT_VNODE);
                rewatch = true;
            }
            if path.is_dir() {
                for db in dbs.iter().filter(|d| super::dir_of(d) == path) {
                    // The database itself too: replaced by a rename, or recreated.
                    for f in [db.clone(), wal_of(db)] {
                        if !known.contains(&f) && f.exists() {
                            watch_path(&mut w, &f, &mut known);
                            rewatch = true;
                        }
                    }
                }
            }
            if rewatch && w.watch().is_err() {
                error!("watch: kqueue re-registration failed");
            }
            if tx.send(WatchEvent::Changed(path)).is_err() {
                return;
            }
        })
        .map_err(|e| Error::io("spawn thread", "walsync-watch", e))?;
    Ok(Watcher { add: add_tx })
}
