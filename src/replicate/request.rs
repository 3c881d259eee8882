//! The snapshot-request protocol between a `walsync snapshot` (cron) and the daemon that owns
//! the database: the client writes `snapshot-request.<pid>` (naming the replica) into the
//! database's spool directory and sends SIGUSR1; the daemon takes the snapshot in its own chain
//! and answers in `snapshot-done.<pid>` ("ok" or the error). Both sides live here.

use std::time::Duration;

use log::warn;

use super::db::Shipper;
use crate::error::{Error, Result};

/// `walsync snapshot` run while this daemon owns the database: it writes
/// `snapshot-request.<pid>` into the spool directory and sends SIGUSR1; the daemon takes a
/// snapshot in its own chain and answers in `snapshot-done.<pid>` ("ok" or the error).
pub const REQUEST_PREFIX: &str = "snapshot-request.";
pub const DONE_PREFIX: &str = "snapshot-done.";

/// Collect the pending requests; one naming another replica than ours is answered with an
/// error at once.
pub(super) fn read_requests(spool: &std::path::Path, target: &str, into: &mut Vec<u32>) {
    let Ok(rd) = std::fs::read_dir(spool) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(REQUEST_PREFIX))
            .and_then(|p| p.parse().ok())
        {
            let wanted = std::fs::read_to_string(e.path()).unwrap_or_default();
            if wanted.trim() != target {
                let msg = format!(
                    "error: this database is replicated to {target}, not to {}\n",
                    wanted.trim()
                );
                answer_requests(spool, &[pid], &msg);
            } else if !into.contains(&pid) {
                into.push(pid);
            }
        }
    }
}

pub(super) fn answer_requests(spool: &std::path::Path, pids: &[u32], answer: &str) {
    for pid in pids {
        let tmp = spool.join(format!(".{DONE_PREFIX}{pid}"));
        let done = spool.join(format!("{DONE_PREFIX}{pid}"));
        if std::fs::write(&tmp, answer)
            .and_then(|_| std::fs::rename(&tmp, &done))
            .is_err()
        {
            warn!(
                "cannot answer the snapshot request of pid {pid} in {}",
                spool.display()
            );
        }
        let _ = std::fs::remove_file(spool.join(format!("{REQUEST_PREFIX}{pid}")));
    }
}

/// Ask the walsync daemon `pid` that owns the database for a snapshot and wait for its
/// answer. Ok(false): the daemon went away before answering (the caller takes the snapshot).
pub fn delegate_snapshot(s: &Shipper, pid: u32) -> Result<bool> {
    let me = std::process::id();
    let spool = s.spool_dir();
    let req = spool.join(format!("{REQUEST_PREFIX}{me}"));
    let done = spool.join(format!("{DONE_PREFIX}{me}"));
    let _ = std::fs::remove_file(&done);
    let tmp = spool.join(format!(".{REQUEST_PREFIX}{me}"));
    std::fs::write(&tmp, format!("{}\n", s.target()))
        .and_then(|_| std::fs::rename(&tmp, &req))
        .map_err(|e| Error::io("write", &req, e))?;
    log::info!(
        "db={} is replicated by walsync pid {pid}; asking it for the snapshot",
        s.path.display()
    );
    let cleanup = || {
        let _ = std::fs::remove_file(&req);
        let _ = std::fs::remove_file(&done);
    };
    // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
        cleanup();
        return Ok(false);
    }
    let t0 = std::time::Instant::now();
    let mut signalled = t0;
    loop {
        // The daemon may have missed the signal (it was still starting): say it again now
        // and then; requests already taken are not taken twice.
        if signalled.elapsed() > Duration::from_secs(10) {
            signalled = std::time::Instant::now();
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
        }
        if let Ok(answer) = std::fs::read_to_string(&done) {
            cleanup();
            let answer = answer.trim();
            return match answer.strip_prefix("error: ") {
                None if answer == "ok" => Ok(true),
                Some(msg) => Err(Error::other(format!("walsync pid {pid}: {msg}"))),
                None => Err(Error::other(format!(
                    "walsync pid {pid} answered {answer:?}"
                ))),
            };
        }
        if s.live_owner() != Some(pid) {
            cleanup();
            log::info!(
                "db={} walsync pid {pid} is gone; taking the snapshot here",
                s.path.display()
            );
            return Ok(false);
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            cleanup();
            return Err(Error::other(format!(
                "walsync pid {pid} took no snapshot of {} within an hour",
                s.path.display()
            ))
            .with_hint("see that daemon's log"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
