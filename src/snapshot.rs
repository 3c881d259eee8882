//! Consistent snapshots: a copy of the database as seen by a read transaction that the caller
//! holds at an exact WAL position, made with SQLite's online backup API in bounded steps (a few
//! MB of pages per step, a tiny page cache on the destination), never a raw copy of a live file
//! and never the whole file in memory. The copy keeps the WAL-mode header bytes (18 and 19 = 2).

use std::path::Path;
use std::thread;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use crate::error::{Error, Result};

const PAGES_PER_STEP: std::os::raw::c_int = 256;

/// Copy the database seen by `src` (inside its open read transaction) to a new file `dst`,
/// fsynced. Returns the size in bytes.
pub fn backup_to_file(src: &Connection, src_path: &Path, dst: &Path) -> Result<u64> {
    let _ = std::fs::remove_file(dst);
    let mut out = Connection::open(dst).map_err(|e| Error::sqlite("create snapshot", dst, e))?;
    out.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-256;")
        .map_err(|e| Error::sqlite("prepare snapshot", dst, e))?;
    {
        let b = Backup::new(src, &mut out)
            .map_err(|e| Error::sqlite("start backup of", src_path, e))?;
        loop {
            match b
                .step(PAGES_PER_STEP)
                .map_err(|e| Error::sqlite("back up", src_path, e))?
            {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => thread::sleep(Duration::from_millis(10)),
                _ => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    out.close()
        .map_err(|(_, e)| Error::sqlite("close snapshot", dst, e))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| Error::io("open snapshot", dst, e))?;
    f.sync_all()
        .map_err(|e| Error::io("fsync snapshot", dst, e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat snapshot", dst, e))?
        .len();
    Ok(len)
}
