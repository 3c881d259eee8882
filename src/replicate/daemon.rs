//! The watch daemon: one event loop, one watcher thread, a fixed pool of workers.
//!
//! * The watcher (`walsync-watch`) turns kernel events into `WatchEvent`s.
//! * The event loop (the calling thread) owns all scheduling state. It marks databases dirty,
//!   and hands a database to the workers with `try_send` on a bounded queue when its sync
//!   interval has passed or its own deadline (idle release, snapshot, retry) has come. It never
//!   blocks on I/O; a database with a job in flight gets no second one, so its uploads stay in
//!   order. With nothing dirty and no deadline it sleeps in `select!` without a timeout.
//! * Workers run two kinds of jobs, each on a pool and a bounded queue of its own: a
//!   database's step (`Shipper::step`: capture into the spool, snapshots, checkpoints; local
//!   work) on `walsync-step/N`, sized by cores; and its upload job (the outbox, in order, to
//!   storage) on `walsync-upload/N`, sized by `--uploads` (requests in flight, one keep-alive
//!   connection each). They are separate so that a slow or stalled upload never stops a
//!   database from being captured, and its WAL stays bounded. At most one of each per
//!   database runs at a time.
//! * SIGTERM/SIGINT: every database gets a final step that ships everything and releases its
//!   connections; then the workers are joined. A second signal exits at once.
//! * Membership changes while running: a change in a directory of the config's `dir` entries
//!   (a database created or deleted) triggers a rescan after a short debounce, and SIGHUP
//!   re-reads the config. New databases are added; databases no longer listed get a final
//!   step and are let go.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use signal_hook::consts::{SIGHUP, SIGUSR1};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use log::{debug, error, info, warn};

use super::db::{DbOptions, Shipper, StepReport, IDLE_RELEASE};
use super::request::{answer_requests, read_requests};
use super::upload::Outbox;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::watch::{self, WatchEvent};

pub struct DaemonConfig {
    /// Workers for steps (capture, snapshots, checkpoints: local work), sized by cores.
    pub workers: usize,
    /// Uploads in flight at most, on workers of their own: throughput against storage 10-80 ms
    /// away comes from requests in flight, not from cores (SPEC section 5).
    pub uploads: usize,
    /// How long SIGTERM may take to ship what is pending.
    pub shutdown_deadline: Duration,
}

/// One database the daemon should replicate.
#[derive(Clone)]
pub struct DbSpec {
    pub path: PathBuf,
    pub ns: String,
    pub opts: DbOptions,
}

/// Where the set of databases comes from, asked again when it may have changed.
pub trait Catalog: Send {
    /// The databases to replicate now; `reload` re-reads the configuration (SIGHUP).
    fn scan(&mut self, reload: bool) -> Result<Vec<DbSpec>>;
    /// Directories in which new databases may appear.
    fn dirs(&self) -> Vec<PathBuf>;
}

enum Job {
    Step {
        idx: usize,
        shipper: Arc<Mutex<Shipper>>,
        snapshot: bool,
        /// Snapshot even if nothing changed, and upload it before answering (asked for by
        /// `walsync snapshot`).
        forced: bool,
        /// A final step: upload everything, then let the database go.
        release: bool,
        /// Woken by a timer while pinned, not by a change (see `Shipper::probe`).
        probe: bool,
    },
    Upload {
        idx: usize,
        outbox: Arc<Outbox>,
    },
}

enum Done {
    Step {
        idx: usize,
        /// The job was a final one (shutdown or removal: ship everything, release).
        release: bool,
        result: Result<StepReport>,
        changed_since_snapshot: bool,
    },
    Upload {
        idx: usize,
        result: Result<usize>,
    },
}

/// Objects one upload job ships at most before the worker is handed on (a database written
/// without pause must not keep a worker for itself).
const UPLOADS_PER_JOB: usize = 32;
/// How long changes are batched while a database is hurried (its WAL near the checkpoint
/// threshold, or just free to restart): a few commits per step, not one.
const HURRY_BATCH: Duration = Duration::from_millis(5);
/// How often a pinned database is probed for an application checkpoint waiting for its pin.
const PIN_PROBE: Duration = Duration::from_millis(100);
/// How soon a step looks again after finding a small transaction being written.
const TAIL_RECHECK: Duration = Duration::from_millis(50);
/// Stack of a worker thread (SQLite's own deepest paths need well under this).
const WORKER_STACK: usize = 512 * 1024;

#[derive(Default)]
struct Sched {
    dirty_since: Option<Instant>,
    wake_at: Option<Instant>,
    /// A step is running; `step_uploads`: one that uploads itself (final or asked-for).
    in_flight: bool,
    step_uploads: bool,
    /// The last step left its pin where it holds back no WAL restart: the next change is
    /// captured at once, not after the sync interval.
    hurry: bool,
    /// The WAL reaches the checkpoint threshold this soon (see `StepReport::due_in`).
    due_in: Option<Duration>,
    failures: u32,
    last_error_log: Option<Instant>,
    /// An upload job is running; failed ones back off until `up_wake_at`.
    uploading: bool,
    up_failures: u32,
    up_wake_at: Option<Instant>,
    up_last_error_log: Option<Instant>,
    last_snapshot: Option<Instant>,
    changed_since_snapshot: bool,
    final_done: bool,
}

/// A database in the daemon: its shipper (shared with the worker running its step), its
/// intervals and its scheduling state.
struct Slot {
    path: PathBuf,
    shipper: Arc<Mutex<Shipper>>,
    outbox: Arc<Outbox>,
    sync: Duration,
    snap: Duration,
    s: Sched,
    /// No longer listed: a final step, then it is dropped.
    removing: bool,
    /// The spool directory, where `walsync snapshot` leaves its requests.
    spool: PathBuf,
    /// `Shipper::target`, which a request must name, and the namespace.
    target: String,
    ns: String,
    /// Pids of `walsync snapshot` processes waiting for a snapshot not yet started, and for
    /// the one in flight.
    requests: Vec<u32>,
    requests_in_flight: Vec<u32>,
}

impl Slot {
    fn new(sh: Shipper, now: Instant) -> Slot {
        Slot {
            path: sh.path.clone(),
            outbox: sh.outbox(),
            spool: sh.spool_dir().to_path_buf(),
            target: sh.target(),
            ns: sh.ns.clone(),
            requests: Vec::new(),
            requests_in_flight: Vec::new(),
            sync: sh.options().sync_interval,
            snap: sh.options().snapshot_interval,
            shipper: Arc::new(Mutex::new(sh)),
            s: Sched {
                dirty_since: Some(now),
                last_snapshot: Some(now),
                ..Default::default()
            },
            removing: false,
        }
    }
}

impl Slot {
    /// A re-read configuration (SIGHUP) for a database already replicated: new intervals
    /// apply at once; a new namespace cannot (the chain lives in the old one), which is said.
    fn apply(&mut self, spec: &DbSpec) {
        let path = self.path.display();
        if spec.opts.sync_interval != self.sync {
            info!(
                "db={path} sync_interval {:?} -> {:?}",
                self.sync, spec.opts.sync_interval
            );
            self.sync = spec.opts.sync_interval;
        }
        if spec.opts.snapshot_interval != self.snap {
            info!(
                "db={path} snapshot_interval {:?} -> {:?}",
                self.snap, spec.opts.snapshot_interval
            );
            self.snap = spec.opts.snapshot_interval;
        }
        self.outbox.set_retention(spec.opts.retention);
        if spec.ns != self.ns {
            warn!(
                "db={path} its prefix changed in the config (namespace {} -> {}); restart walsync to apply it (until then it ships into {})",
                self.ns, spec.ns, self.ns
            );
            self.ns = spec.ns.clone();
        }
    }

    /// How long changes are batched before a step: the sync interval, or nothing right after a
    /// checkpoint that let the WAL restart.
    fn batch_for(&self) -> Duration {
        if self.s.hurry {
            HURRY_BATCH.min(self.sync)
        } else if let Some(d) = self.s.due_in {
            d.max(HURRY_BATCH).min(self.sync)
        } else {
            self.sync
        }
    }

    /// When this database's next upload job is due, if it needs one and may have one now.
    /// Final and asked-for steps upload themselves; a database being let go gets only those.
    fn upload_due(&self, now: Instant) -> Option<Instant> {
        let s = &self.s;
        if s.uploading || (s.in_flight && s.step_uploads) || self.removing || self.outbox.is_empty()
        {
            return None;
        }
        Some(s.up_wake_at.unwrap_or(now))
    }
}

impl Done {
    fn succeeded(&self) -> bool {
        matches!(
            self,
            Done::Step { result: Ok(_), .. } | Done::Upload { result: Ok(_), .. }
        )
    }
}

impl Slot {
    /// A step reported back.
    fn step_done(
        &mut self,
        idx: usize,
        release: bool,
        result: Result<StepReport>,
        changed_since_snapshot: bool,
        finishing: bool,
    ) {
        let path = &self.path;
        if !self.requests_in_flight.is_empty() {
            let answer = match &result {
                Ok(r) if r.snapshot => "ok\n".to_string(),
                Ok(_) => "error: the step took no snapshot\n".to_string(),
                Err(e) => format!("error: {e}\n"),
            };
            info!(
                "db={} snapshot asked for by pid(s) {:?}: {}",
                path.display(),
                self.requests_in_flight,
                answer.trim()
            );
            answer_requests(
                &self.spool,
                &std::mem::take(&mut self.requests_in_flight),
                &answer,
            );
        }
        let s = &mut self.s;
        s.in_flight = false;
        s.step_uploads = false;
        s.changed_since_snapshot = changed_since_snapshot;
        let now = Instant::now();
        match result {
            Ok(r) => {
                if s.failures > 0 {
                    info!(
                        "db={} recovered after {} failed attempt(s)",
                        path.display(),
                        s.failures
                    );
                }
                s.failures = 0;
                s.hurry = r.hurry;
                s.due_in = r.due_in;
                if r.snapshot {
                    s.last_snapshot = Some(now);
                }
                if finishing {
                    // Only a step that ran as the final one proves everything shipped; a step
                    // started before the signal may have missed later commits.
                    s.final_done = release && r.pending == 0 && !r.pinned;
                } else {
                    let mut w = None;
                    if r.pinned {
                        // Soon, to notice an application checkpoint waiting for the pin
                        // (`Shipper::probe`); the pin goes after IDLE_RELEASE without change.
                        w = earliest(w, Some(now + PIN_PROBE.min(IDLE_RELEASE)));
                    }
                    if r.tail {
                        w = earliest(w, Some(now + TAIL_RECHECK));
                    }
                    if s.changed_since_snapshot {
                        w = earliest(w, s.last_snapshot.map(|t| t + self.snap));
                    }
                    s.wake_at = w;
                }
            }
            Err(e) => {
                s.failures += 1;
                let wait = failure_backoff(&e, s.failures, idx);
                log_failure(path, &e, s.failures, wait, &mut s.last_error_log);
                if finishing && (s.failures >= 3 || (self.removing && !path.exists())) {
                    error!(
                        "db={} could not ship everything before letting go: {e}",
                        path.display()
                    );
                    s.final_done = true;
                }
                s.wake_at = Some(
                    now + if finishing {
                        Duration::from_millis(200)
                    } else {
                        wait
                    },
                );
            }
        }
    }
}

/// Transient failures back off quickly (0.25-10 s); permanent ones (access denied, a database
/// that left WAL mode, often for a moment to change its page size) from 1 s up to once a
/// minute.
fn failure_backoff(e: &Error, failures: u32, idx: usize) -> Duration {
    if e.is_transient() {
        backoff(failures, idx as u64)
    } else {
        Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
    }
}

/// One line per failure, at most one per database every 30 s.
fn log_failure(
    path: &std::path::Path,
    e: &Error,
    attempt: u32,
    wait: Duration,
    last: &mut Option<Instant>,
) {
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(30)) {
        return;
    }
    let level = if e.is_transient() {
        log::Level::Warn
    } else {
        log::Level::Error
    };
    let hint = e.hint().map(|h| format!("; hint: {h}")).unwrap_or_default();
    log::log!(
        level,
        "db={} {e} (attempt {attempt}, retrying in {wait:?}){hint}",
        path.display()
    );
    *last = Some(Instant::now());
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
pub fn run(
    shippers: Vec<Shipper>,
    mut catalog: Box<dyn Catalog>,
    storage: Arc<dyn Storage>,
    cfg: DaemonConfig,
    signals: Receiver<i32>,
) -> Result<()> {
    let now = Instant::now();
    let mut slots: Vec<Option<Slot>> = shippers
        .into_iter()
        .map(|sh| Some(Slot::new(sh, now)))
        .collect();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    for (i, s) in slots.iter().enumerate() {
        index.insert(s.as_ref().expect("just built").path.clone(), i);
    }
    let mut dirs: Vec<PathBuf> = slots
        .iter()
        .flatten()
        .map(|s| watch::dir_of(&s.path))
        .collect();
    let mut catalog_dirs: Vec<PathBuf> = catalog.dirs();
    dirs.extend(catalog_dirs.iter().cloned());
    dirs.sort();
    dirs.dedup();

    let (watch_tx, watch_rx) = bounded::<WatchEvent>(1024);
    let watcher = watch::spawn(&dirs, watch_tx)?;
    for s in slots.iter().flatten() {
        watcher.add_db(&s.path)?;
    }

    // Uploads may stall for a long time: they never take the step workers' share, so
    // captures always find a worker.
    let max_uploads = super::db::reserve_uploads(cfg.uploads.max(1));
    if max_uploads < cfg.uploads {
        warn!(
            "uploads in flight limited to {max_uploads} (asked {}) by the open-files limit of {}; raise it (ulimit -n, LimitNOFILE=) for more",
            cfg.uploads,
            super::db::open_files_limit()
        );
    }
    let max_steps = cfg.workers.max(1);
    let workers = max_steps + max_uploads;
    let mut upload_turn = 0;
    // Two pools on two bounded queues: steps (local work) and uploads (requests in flight).
    // Each thread only ever runs one kind, so only the step workers grow SQLite-deep stacks.
    let (step_tx, step_rx) = bounded::<Job>(max_steps);
    let (job_tx, upload_rx) = bounded::<Job>(max_uploads);
    let (done_tx, done_rx) = bounded::<Done>(workers * 2);
    let mut handles = Vec::new();
    for n in 0..workers {
        let (rx, name) = if n < max_steps {
            (step_rx.clone(), format!("walsync-step/{n}"))
        } else {
            (
                upload_rx.clone(),
                format!("walsync-upload/{}", n - max_steps),
            )
        };
        let tx: Sender<Done> = done_tx.clone();
        let h = thread::Builder::new()
            .name(name)
            // Small stacks: a worker's memory is its stack, and most of them wait on sockets.
            .stack_size(WORKER_STACK)
            .spawn(move || {
                for job in rx.iter() {
                    let done = match job {
                        Job::Step {
                            idx,
                            shipper,
                            snapshot,
                            forced,
                            release,
                            probe,
                        } => {
                            let mut s = shipper.lock().unwrap_or_else(|p| p.into_inner());
                            if forced {
                                s.request_snapshot();
                            }
                            let result = if probe {
                                s.probe()
                            } else {
                                s.step(snapshot, forced, release)
                            };
                            Done::Step {
                                idx,
                                release,
                                result,
                                changed_since_snapshot: s.changed_since_snapshot(),
                            }
                        }
                        Job::Upload { idx, outbox } => {
                            let result = outbox.upload(UPLOADS_PER_JOB).and_then(|n| {
                                outbox.write_state(false)?;
                                Ok(n)
                            });
                            Done::Upload { idx, result }
                        }
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
    info!(
        "watching {} database(s) with {} step worker(s) and up to {max_uploads} uploads in flight",
        slots.len(),
        workers - max_uploads
    );

    // Snapshot requests left while we were starting (before SIGUSR1 was handled).
    for slot in slots.iter_mut().flatten() {
        read_requests(&slot.spool, &slot.target, &mut slot.requests);
    }
    let mut stopping: Option<Instant> = None;
    let mut rescan_at: Option<(Instant, bool)> = None;
    loop {
        let now = Instant::now();
        // Membership: rescan when a watched directory changed (debounced) or on SIGHUP.
        if let Some((t, reload)) = rescan_at {
            if t <= now && stopping.is_none() {
                rescan_at = None;
                match catalog.scan(reload) {
                    Ok(specs) => {
                        let wanted: std::collections::HashSet<PathBuf> =
                            specs.iter().map(|d| d.path.clone()).collect();
                        for spec in specs {
                            if let Some(&i) = index.get(&spec.path) {
                                if let Some(slot) = slots[i].as_mut() {
                                    slot.apply(&spec);
                                }
                                continue;
                            }
                            let sh =
                                Shipper::new(&spec.path, spec.ns, Arc::clone(&storage), spec.opts);
                            if let Err(e) = sh.check_source() {
                                debug!("db={} not added yet: {e}", spec.path.display());
                                continue;
                            }
                            if let Err(e) = watcher.add_db(&spec.path) {
                                warn!("db={} {e}", spec.path.display());
                            }
                            info!("db={} added (namespace {})", spec.path.display(), sh.ns);
                            index.insert(spec.path.clone(), slots.len());
                            slots.push(Some(Slot::new(sh, now)));
                        }
                        for slot in slots.iter_mut().flatten() {
                            if !wanted.contains(&slot.path) && !slot.removing {
                                info!("db={} no longer listed: shipping what is pending and letting it go", slot.path.display());
                                slot.removing = true;
                                slot.s.dirty_since.get_or_insert(now);
                            }
                        }
                        if reload {
                            for d in catalog.dirs() {
                                if !catalog_dirs.contains(&d) {
                                    if let Err(e) = watcher.add_dir(&d) {
                                        warn!("watch: {e}");
                                    }
                                    catalog_dirs.push(d);
                                }
                            }
                        }
                    }
                    Err(e) => error!("reload: {e}; keeping the current databases"),
                }
            }
        }
        // Hand out due work: steps first, then uploads, the latter starting from a rotating
        // position so that busy databases take turns.
        let mut queue_full = false;
        // Steps are local work (CPU, disk): at most as many at once as there are step workers,
        // so the upload workers stay free for requests.
        let mut steps = slots.iter().flatten().filter(|s| s.s.in_flight).count();
        let mut steps_full = false;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let s = &mut slot.s;
            if s.in_flight || s.final_done {
                continue;
            }
            let final_step = stopping.is_some() || slot.removing;
            let forced = !final_step && !slot.requests.is_empty();
            if (final_step || forced) && s.uploading {
                continue; // such a step uploads itself: after the running upload job
            }
            // After a failure, new writes wait for the backoff too (no retry storm while S3
            // is down and the application keeps writing).
            let held = !final_step && s.failures > 0 && s.wake_at.is_some_and(|t| t > now);
            let sync = slot.batch_for();
            let s = &mut slot.s;
            let due_dirty = !held && s.dirty_since.is_some_and(|t| final_step || t + sync <= now);
            let due_wake = s.wake_at.is_some_and(|t| t <= now);
            if !(due_dirty || due_wake || final_step || forced) {
                continue;
            }
            let snapshot = forced
                || (!final_step
                    && s.changed_since_snapshot
                    && s.last_snapshot.is_some_and(|t| t + slot.snap <= now));
            if steps >= max_steps {
                steps_full = true; // left due; dispatched when a step reports back
                continue;
            }
            let probe =
                due_wake && !due_dirty && !snapshot && !forced && !final_step && s.failures == 0;
            let job = Job::Step {
                idx: i,
                shipper: Arc::clone(&slot.shipper),
                snapshot,
                forced,
                release: final_step,
                probe,
            };
            if step_tx.try_send(job).is_ok() {
                steps += 1;
                slot.requests_in_flight = std::mem::take(&mut slot.requests);
                s.in_flight = true;
                s.step_uploads = final_step || forced;
                // A probe captures nothing: the changes seen so far still wait for their step
                // (clearing them here starved a database whose batch outlasts the probe
                // interval of every step until its idle release).
                if !probe {
                    s.dirty_since = None;
                }
                s.wake_at = None;
            } else {
                // Left due; retried when a worker reports back.
                steps_full = true;
            }
        }
        let mut uploads = slots.iter().flatten().filter(|s| s.s.uploading).count();
        let n = slots.len();
        for k in 0..n {
            if uploads >= max_uploads || queue_full || stopping.is_some() {
                break;
            }
            let i = (upload_turn + k) % n;
            let Some(slot) = slots[i].as_mut() else {
                continue;
            };
            if slot.upload_due(now).is_none_or(|t| t > now) {
                continue;
            }
            let s = &mut slot.s;
            let job = Job::Upload {
                idx: i,
                outbox: Arc::clone(&slot.outbox),
            };
            if job_tx.try_send(job).is_ok() {
                s.uploading = true;
                uploads += 1;
                upload_turn = i + 1;
            } else {
                queue_full = true;
            }
        }
        // Databases let go.
        for slot in slots.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|s| s.removing && s.s.final_done && !s.s.in_flight && !s.s.uploading)
            {
                let s = slot.take().expect("checked");
                index.remove(&s.path);
                info!("db={} let go", s.path.display());
            }
        }
        if let Some(t0) = stopping {
            if slots.iter().flatten().all(|s| s.s.final_done) {
                break;
            }
            if t0.elapsed() > cfg.shutdown_deadline {
                error!(
                    "shutdown: gave up after {:?} without progress, with work pending",
                    cfg.shutdown_deadline
                );
                break;
            }
        }
        // Sleep until something happens or the next deadline. Work left due because the
        // queue was full or every upload slot was taken waits for a worker to report back.
        let mut next: Option<Instant> = rescan_at.map(|(t, _)| t);
        let busy = slots
            .iter()
            .flatten()
            .any(|s| s.s.in_flight || s.s.uploading);
        for slot in slots.iter().flatten() {
            if !slot.s.in_flight {
                let sync = slot.batch_for();
                let dirty_due = slot.s.dirty_since.map(|t| t + sync);
                let dirty_due = match (dirty_due, slot.s.wake_at) {
                    (Some(d), Some(w)) if slot.s.failures > 0 => Some(d.max(w)),
                    (d, _) => d,
                };
                next = earliest(next, dirty_due);
                next = earliest(next, slot.s.wake_at);
            }
            if uploads < max_uploads && stopping.is_none() {
                next = earliest(next, slot.upload_due(now));
            }
        }
        if (queue_full || steps_full) && busy {
            next = next.filter(|t| *t > Instant::now());
        }
        if stopping.is_some() {
            next = earliest(next, Some(Instant::now() + Duration::from_millis(200)));
        }
        if next.is_none() && !busy {
            // Quiet until the next change: an idle daemon holds no connection.
            storage.release_idle();
        }
        let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
        let tick = match timeout {
            Some(d) => crossbeam_channel::after(d),
            None => crossbeam_channel::never(),
        };
        select! {
            recv(watch_rx) -> ev => match ev {
                Ok(WatchEvent::Changed(p)) => {
                    let db = watch::database_of(&p);
                    if let Some(slot) = index.get(&db).and_then(|&i| slots[i].as_mut()) {
                        slot.s.dirty_since.get_or_insert(Instant::now());
                    }
                    // A file appearing or vanishing in a dir entry's directory (or, on kqueue,
                    // a change of the directory itself) may be a database to add or let go.
                    let in_dir = catalog_dirs.iter().any(|d| *d == p || watch::dir_of(&db) == *d);
                    if in_dir && rescan_at.is_none() {
                        rescan_at = Some((Instant::now() + Duration::from_millis(200), false));
                    }
                }
                Ok(WatchEvent::Overflow) => {
                    for slot in slots.iter_mut().flatten() {
                        slot.s.dirty_since.get_or_insert(Instant::now());
                    }
                    rescan_at.get_or_insert((Instant::now(), false));
                }
                Err(_) => {
                    error!("watch: the watcher thread stopped; shutting down");
                    stopping.get_or_insert(Instant::now());
                }
            },
            recv(done_rx) -> d => {
                let Ok(d) = d else { break };
                let (Done::Step { idx, .. } | Done::Upload { idx, .. }) = d;
                let Some(slot) = slots[idx].as_mut() else { continue };
                let now = Instant::now();
                let finishing = stopping.is_some() || slot.removing;
                // The shutdown deadline counts time without progress, so a large backlog that
                // is still moving is shipped, not abandoned.
                if let Some(t) = stopping.as_mut().filter(|_| d.succeeded()) {
                    *t = now;
                }
                match d {
                    Done::Step { release, result, changed_since_snapshot, .. } => {
                        slot.step_done(idx, release, result, changed_since_snapshot, finishing);
                    }
                    Done::Upload { result, .. } => {
                        let s = &mut slot.s;
                        s.uploading = false;
                        match result {
                            Ok(_) => {
                                if s.up_failures > 0 {
                                    info!("db={} uploads recovered after {} failed attempt(s)", slot.path.display(), s.up_failures);
                                }
                                s.up_failures = 0;
                                s.up_wake_at = None;
                            }
                            Err(e) => {
                                s.up_failures += 1;
                                let wait = failure_backoff(&e, s.up_failures, idx);
                                log_failure(&slot.path, &e, s.up_failures, wait, &mut s.up_last_error_log);
                                s.up_wake_at = Some(now + wait);
                            }
                        }
                    }
                }
            },
            recv(signals) -> sig => {
                match sig {
                    Ok(SIGUSR1) => {
                        for slot in slots.iter_mut().flatten() {
                            read_requests(&slot.spool, &slot.target, &mut slot.requests);
                            let waiting = slot.requests_in_flight.clone();
                            slot.requests.retain(|p| !waiting.contains(p));
                        }
                    }
                    Ok(SIGHUP) => {
                        info!("SIGHUP: reloading the database list");
                        rescan_at = Some((Instant::now(), true));
                    }
                    _ if stopping.is_some() => {
                        warn!("second signal: exiting at once");
                        std::process::exit(1);
                    }
                    sig => {
                        info!("signal {}: shipping everything pending, then exiting", sig.unwrap_or(0));
                        stopping = Some(Instant::now());
                    }
                }
            },
            recv(tick) -> _ => {},
        }
    }
    drop(job_tx);
    drop(step_tx);
    for h in handles {
        let _ = h.join();
    }
    let unfinished = slots.iter().flatten().filter(|s| !s.s.final_done).count();
    if unfinished > 0 {
        return Err(Error::other(format!(
            "{unfinished} database(s) had unshipped changes at exit"
        )));
    }
    info!("all databases shipped; exiting");
    Ok(())
}
