//! The watch daemon: one event loop, one watcher thread, a fixed pool of workers.
//!
//! * The watcher (`walsync-watch`) turns kernel events into `WatchEvent`s.
//! * The event loop (the calling thread) owns all scheduling state. It marks databases dirty,
//!   and hands a database to the workers with `try_send` on a bounded queue when its sync
//!   interval has passed or its own deadline (idle release, snapshot, retry) has come. It never
//!   blocks on I/O; a database with a job in flight gets no second one, so its uploads stay in
//!   order. With nothing dirty and no deadline it sleeps in `select!` without a timeout.
//! * Workers (`walsync-upload/N`) run `Shipper::step`, which does all reading and uploading.
//! * SIGTERM/SIGINT: every database gets a final step that ships everything and releases its
//!   connections; then the workers are joined. A second signal exits at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use log::{error, info, warn};

use super::db::{Shipper, StepReport, IDLE_RELEASE};
use crate::error::{Error, Result};
use crate::watch::{self, WatchEvent};

pub struct DaemonConfig {
    pub workers: usize,
    /// How long SIGTERM may take to ship what is pending.
    pub shutdown_deadline: Duration,
}

struct Job {
    idx: usize,
    snapshot: bool,
    release: bool,
}

struct Done {
    idx: usize,
    /// The job was the final one of a shutdown (ship everything, release).
    release: bool,
    result: Result<StepReport>,
    changed_since_snapshot: bool,
}

#[derive(Default)]
struct Sched {
    dirty_since: Option<Instant>,
    wake_at: Option<Instant>,
    in_flight: bool,
    failures: u32,
    last_error_log: Option<Instant>,
    last_snapshot: Option<Instant>,
    changed_since_snapshot: bool,
    final_done: bool,
}

/// Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... capped at 10 s, +-20 %.
fn backoff(failures: u32, salt: u64) -> Duration {
    let base = (250u64 << failures.min(6)).min(10_000);
    // Cheap jitter without a RNG crate: mix the clock's nanoseconds with the database index.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let r = (nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 401; // 0..=400
    Duration::from_millis(base * (800 + r) / 1000)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Run until a signal; returns Ok when everything pending was shipped.
pub fn run(shippers: Vec<Shipper>, cfg: DaemonConfig, signals: Receiver<i32>) -> Result<()> {
    let paths: Vec<PathBuf> = shippers.iter().map(|s| s.path.clone()).collect();
    // Per database: (sync_interval, snapshot_interval).
    let intervals: Vec<(Duration, Duration)> = shippers
        .iter()
        .map(|s| (s.options().sync_interval, s.options().snapshot_interval))
        .collect();
    let index: HashMap<PathBuf, usize> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i))
        .collect();
    let shippers: Arc<Vec<Mutex<Shipper>>> =
        Arc::new(shippers.into_iter().map(Mutex::new).collect());

    let (watch_tx, watch_rx) = bounded::<WatchEvent>(1024);
    let _watcher = watch::spawn(&paths, watch_tx)?;

    let workers = cfg.workers.max(1);
    let (job_tx, job_rx) = bounded::<Job>(workers);
    let (done_tx, done_rx) = bounded::<Done>(workers * 2);
    let mut handles = Vec::new();
    for n in 0..workers {
        let rx = job_rx.clone();
        let tx: Sender<Done> = done_tx.clone();
        let sh = Arc::clone(&shippers);
        let h = thread::Builder::new()
            .name(format!("walsync-upload/{n}"))
            .spawn(move || {
                for job in rx.iter() {
                    let mut s = sh[job.idx].lock().unwrap_or_else(|p| p.into_inner());
                    let result = s.step(job.snapshot, job.release);
                    let changed_since_snapshot = s.changed_since_snapshot();
                    drop(s);
                    let done = Done {
                        idx: job.idx,
                        release: job.release,
                        result,
                        changed_since_snapshot,
                    };
                    if tx.send(done).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("spawn thread", "walsync-upload", e))?;
        handles.push(h);
    }
    drop(done_tx);

    let now = Instant::now();
    let mut sched: Vec<Sched> = (0..paths.len())
        .map(|_| Sched {
            dirty_since: Some(now),
            last_snapshot: Some(now),
            ..Default::default()
        })
        .collect();
    let (sync0, snap0) = intervals.first().copied().unwrap_or_default();
    info!(
        "watching {} database(s) with {workers} worker(s), sync_interval={sync0:?} snapshot_interval={snap0:?}",
        paths.len()
    );

    let mut stopping: Option<Instant> = None;
    loop {
        // Hand out due work.
        let now = Instant::now();
        for (i, s) in sched.iter_mut().enumerate() {
            if s.in_flight || s.final_done {
                continue;
            }
            let due_dirty = s
                .dirty_since
                .is_some_and(|t| stopping.is_some() || t + intervals[i].0 <= now);
            let due_wake = s.wake_at.is_some_and(|t| t <= now);
            let due_final = stopping.is_some();
            if !(due_dirty || due_wake || due_final) {
                continue;
            }
            let snapshot = stopping.is_none()
                && s.changed_since_snapshot
                && s.last_snapshot.is_some_and(|t| t + intervals[i].1 <= now);
            let job = Job {
                idx: i,
                snapshot,
                release: stopping.is_some(),
            };
            if job_tx.try_send(job).is_ok() {
                s.in_flight = true;
                s.dirty_since = None;
                s.wake_at = None;
            }
            // A full queue leaves the database due; it is retried when a worker reports back.
        }
        if let Some(t0) = stopping {
            let all_done = sched.iter().all(|s| s.final_done);
            if all_done {
                break;
            }
            if t0.elapsed() > cfg.shutdown_deadline {
                error!(
                    "shutdown: gave up after {:?} with work pending",
                    cfg.shutdown_deadline
                );
                break;
            }
        }
        // Sleep until something happens or the next deadline.
        let mut next: Option<Instant> = None;
        for (i, s) in sched.iter().enumerate().filter(|(_, s)| !s.in_flight) {
            next = earliest(next, s.dirty_since.map(|t| t + intervals[i].0));
            next = earliest(next, s.wake_at);
        }
        if stopping.is_some() {
            next = earliest(next, Some(Instant::now() + Duration::from_millis(200)));
        }
        let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
        let never = crossbeam_channel::never::<()>();
        let tick = match timeout {
            Some(d) => crossbeam_channel::after(d),
            None => crossbeam_channel::never(),
        };
        select! {
            recv(watch_rx) -> ev => match ev {
                Ok(WatchEvent::Changed(p)) => {
                    if let Some(&i) = index.get(&watch::database_of(&p)) {
                        let s = &mut sched[i];
                        s.dirty_since.get_or_insert(Instant::now());
                    }
                }
                Ok(WatchEvent::Overflow) => {
                    for s in sched.iter_mut() {
                        s.dirty_since.get_or_insert(Instant::now());
                    }
                }
                Err(_) => {
                    error!("watch: the watcher thread stopped; shutting down");
                    stopping.get_or_insert(Instant::now());
                }
            },
            recv(done_rx) -> d => {
                let Ok(d) = d else { break };
                let s = &mut sched[d.idx];
                s.in_flight = false;
                s.changed_since_snapshot = d.changed_since_snapshot;
                let now = Instant::now();
                match d.result {
                    Ok(r) => {
                        if s.failures > 0 {
                            info!("db={} recovered after {} failed attempt(s)", paths[d.idx].display(), s.failures);
                        }
                        s.failures = 0;
                        if r.snapshot {
                            s.last_snapshot = Some(now);
                        }
                        if stopping.is_some() {
                            // Only a step that ran as the final one proves everything shipped;
                            // a step started before the signal may have missed later commits.
                            s.final_done = d.release && r.pending == 0 && !r.pinned;
                        } else {
                            let mut w = None;
                            if r.pinned {
                                w = earliest(w, Some(now + IDLE_RELEASE));
                            }
                            if r.pending > 0 {
                                w = earliest(w, Some(now + Duration::from_secs(1)));
                            }
                            if s.changed_since_snapshot {
                                w = earliest(w, s.last_snapshot.map(|t| t + intervals[d.idx].1));
                            }
                            s.wake_at = w;
                        }
                    }
                    Err(e) => {
                        s.failures += 1;
                        // Transient failures back off quickly; permanent ones (access denied, a
                        // database that left WAL mode) are retried once a minute.
                        let backoff = if e.is_transient() {
                            backoff(s.failures, d.idx as u64)
                        } else {
                            Duration::from_secs(60)
                        };
                        let quiet = s.last_error_log.is_some_and(|t| t.elapsed() < Duration::from_secs(30));
                        if !quiet {
                            let level = if e.is_transient() { log::Level::Warn } else { log::Level::Error };
                            log::log!(level, "db={} {e} (attempt {}, retrying in {:?})", paths[d.idx].display(), s.failures, backoff);
                            s.last_error_log = Some(now);
                        }
                        if stopping.is_some() && s.failures >= 3 {
                            error!("db={} could not ship everything before exit: {e}", paths[d.idx].display());
                            s.final_done = true;
                        }
                        s.wake_at = Some(now + if stopping.is_some() { Duration::from_millis(200) } else { backoff });
                    }
                }
            },
            recv(signals) -> sig => {
                if stopping.is_some() {
                    warn!("second signal: exiting at once");
                    std::process::exit(1);
                }
                info!("signal {}: shipping everything pending, then exiting", sig.unwrap_or(0));
                stopping = Some(Instant::now());
            },
            recv(tick) -> _ => {},
            recv(never) -> _ => {},
        }
    }
    drop(job_tx);
    for h in handles {
        let _ = h.join();
    }
    let unfinished = sched.iter().filter(|s| !s.final_done).count();
    if unfinished > 0 {
        return Err(Error::other(format!(
            "{unfinished} database(s) had unshipped changes at exit"
        )));
    }
    info!("all databases shipped; exiting");
    Ok(())
}
