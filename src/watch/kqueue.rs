//! kqueue (BSD, macOS): vnode events on each database file, its WAL and its directory. kqueue
//! reports no names for directory changes, so a directory event marks that directory's
//! databases changed, and WAL files that appear later are added to the watch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;
use kqueue::{EventData, EventFilter, FilterFlag, Ident, Watcher};
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

fn wal_of(db: &std::path::Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

pub fn spawn(files: &[PathBuf], tx: Sender<WatchEvent>) -> Result<JoinHandle<()>> {
    let mut w = Watcher::new().map_err(|e| Error::io("initialise kqueue for", "/", e))?;
    let mut by_dir: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    for f in files {
        let dir = f
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        by_dir.entry(dir).or_default().push(f.clone());
        w.add_filename(f, EventFilter::EVFILT_VNODE, flags())
            .map_err(|e| Error::io("watch", f, e))?;
        let _ = w.add_filename(wal_of(f), EventFilter::EVFILT_VNODE, flags());
    }
    for d in by_dir.keys() {
        w.add_filename(d, EventFilter::EVFILT_VNODE, flags())
            .map_err(|e| Error::io("watch directory", d, e))?;
    }
    w.watch()
        .map_err(|e| Error::io("start kqueue watch", "/", e))?;
    thread::Builder::new()
        .name("walsync-watch".into())
        .spawn(move || loop {
            let Some(ev) = w.poll_forever(None) else {
                error!("watch: kqueue stopped");
                return;
            };
            let path = match ev.ident {
                Ident::Filename(_, p) => PathBuf::from(p),
                _ => continue,
            };
            if !matches!(ev.data, EventData::Vnode(_)) {
                continue;
            }
            let targets: Vec<PathBuf> = match by_dir.get(&path) {
                Some(dbs) => {
                    for db in dbs {
                        // A WAL created since the last look gets its own watch.
                        let _ = w.add_filename(wal_of(db), EventFilter::EVFILT_VNODE, flags());
                    }
                    let _ = w.watch();
                    dbs.clone()
                }
                None => vec![path],
            };
            for t in targets {
                if tx.send(WatchEvent::Changed(t)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("spawn thread", "walsync-watch", e))
}
