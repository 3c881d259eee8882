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

mod notify;
mod pool;
mod report;
mod slot;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver};
use log::{debug, error, info, warn};
use signal_hook::consts::{SIGHUP, SIGUSR1};

use super::alerts::Alerter;
use super::db::{DbOptions, Shipper};
use super::request::read_requests;
use super::status::{self, Board, Health};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::watch::{self, WatchEvent, Watcher};
use pool::{Done, Job, Pool};
use slot::{earliest, Slot};

pub struct DaemonConfig {
    /// Workers for steps (capture, snapshots, checkpoints: local work), sized by cores.
    pub workers: usize,
    /// Uploads in flight at most, on workers of their own: throughput against storage 10-80 ms
    /// away comes from requests in flight, not from cores (SPEC section 5).
    pub uploads: usize,
    /// How long SIGTERM may take to ship what is pending.
    pub shutdown_deadline: Duration,
    /// The metrics endpoint, if asked for.
    pub metrics: Option<crate::config::Metrics>,
    /// `[alerts]`, if configured.
    pub alerts: Option<crate::config::Alerts>,
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

/// The event loop's state: every database's slot, the watcher, the pools, and the
/// daemon-wide deadlines (rescan, shutdown).
struct Daemon {
    slots: Vec<Option<Slot>>,
    index: HashMap<PathBuf, usize>,
    catalog: Box<dyn Catalog>,
    catalog_dirs: Vec<PathBuf>,
    storage: Arc<dyn Storage>,
    watcher: Watcher,
    pool: Pool,
    /// Where the next round of upload dispatch starts, so busy databases take turns.
    upload_turn: usize,
    stopping: Option<Instant>,
    rescan_at: Option<(Instant, bool)>,
    shutdown_deadline: Duration,
    /// The figures the metrics endpoint serves, when it runs.
    board: Option<Board>,
    notify: notify::Notify,
    /// The alerts thread, its settings, the health thresholds and the next heartbeat.
    alerter: Option<(Alerter, crate::config::Alerts)>,
    health: Health,
    next_beat: Option<Instant>,
}

/// Events handled together before the daemon looks at every database again (see `run`).
const DRAIN_MAX: usize = 256;

/// Run until a signal; returns Ok when everything pending was shipped.
pub fn run(
    shippers: Vec<Shipper>,
    catalog: Box<dyn Catalog>,
    storage: Arc<dyn Storage>,
    cfg: DaemonConfig,
    signals: Receiver<i32>,
) -> Result<()> {
    let (watch_tx, watch_rx) = bounded::<WatchEvent>(1024);
    let mut d = Daemon::start(shippers, catalog, storage, &cfg, watch_tx)?;
    loop {
        let now = Instant::now();
        d.rescan(now);
        let steps_full = d.dispatch_steps(now);
        let queue_full = d.dispatch_uploads(now);
        d.let_go();
        d.publish(false);
        d.notify.tick(now);
        d.beat(now);
        if d.finished() {
            break;
        }
        let next = d.next_deadline(queue_full || steps_full);
        let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
        let tick = match timeout {
            Some(t) => crossbeam_channel::after(t),
            None => crossbeam_channel::never(),
        };
        let done_rx = d.pool.done.clone();
        select! {
            recv(watch_rx) -> ev => d.on_watch(ev.ok()),
            recv(done_rx) -> done => match done {
                Ok(done) => d.on_done(done),
                Err(_) => break,
            },
            recv(signals) -> sig => d.on_signal(sig.unwrap_or(0)),
            recv(tick) -> _ => {},
        }
        // What else is waiting already, before the next passes over every database: one pass
        // per event was most of the event thread's time with 1,000 databases writing.
        for _ in 0..DRAIN_MAX {
            if let Ok(done) = done_rx.try_recv() {
                d.on_done(done);
            } else if let Ok(ev) = watch_rx.try_recv() {
                d.on_watch(Some(ev));
            } else {
                break;
            }
        }
    }
    d.finish()
}

/// One watcher for the directories of every database and of the catalog's `dir` entries,
/// and each database in it.
fn watch_all(
    slots: &[Option<Slot>],
    catalog_dirs: &[PathBuf],
    watch_tx: crossbeam_channel::Sender<WatchEvent>,
) -> Result<watch::Watcher> {
    let mut dirs: Vec<PathBuf> = slots
        .iter()
        .flatten()
        .map(|s| watch::dir_of(&s.path))
        .chain(catalog_dirs.iter().cloned())
        .collect();
    dirs.sort();
    dirs.dedup();
    let watcher = watch::spawn(&dirs, watch_tx)?;
    for s in slots.iter().flatten() {
        watcher.add_db(&s.path)?;
    }
    Ok(watcher)
}

/// Uploads in flight: as asked, unless the open-files limit cannot hold them (logged). They
/// may stall for a long time: they never take the step workers' share, so captures always
/// find a worker.
fn uploads_allowed(asked: usize) -> usize {
    let max_uploads = super::db::reserve_uploads(asked.max(1));
    if max_uploads < asked {
        warn!(
            "uploads in flight limited to {max_uploads} (asked {asked}) by the open-files limit of {}; raise it (ulimit -n, LimitNOFILE=) for more",
            super::db::open_files_limit()
        );
    }
    max_uploads
}

/// The health thresholds of `[metrics]`, or their defaults.
fn health_of(m: Option<&crate::config::Metrics>) -> Health {
    Health {
        max_lag: m.map_or(crate::config::DEFAULT_MAX_LAG, |m| m.max_lag),
        max_failing: m.map_or(crate::config::DEFAULT_MAX_FAILING, |m| m.max_failing),
    }
}

impl Daemon {
    fn start(
        shippers: Vec<Shipper>,
        catalog: Box<dyn Catalog>,
        storage: Arc<dyn Storage>,
        cfg: &DaemonConfig,
        watch_tx: crossbeam_channel::Sender<WatchEvent>,
    ) -> Result<Daemon> {
        let now = Instant::now();
        let slots: Vec<Option<Slot>> = shippers
            .into_iter()
            .map(|sh| Some(Slot::new(sh, now)))
            .collect();
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_ref().expect("just built").path.clone(), i))
            .collect();
        let catalog_dirs = catalog.dirs();
        let watcher = watch_all(&slots, &catalog_dirs, watch_tx)?;
        let max_uploads = uploads_allowed(cfg.uploads);
        let pool = Pool::start(cfg.workers.max(1), max_uploads)?;
        info!(
            "watching {} database(s) with {} step worker(s) and up to {max_uploads} uploads in flight",
            slots.len(),
            pool.max_steps
        );
        let mut d = Daemon {
            slots,
            index,
            catalog,
            catalog_dirs,
            storage,
            watcher,
            pool,
            upload_turn: 0,
            stopping: None,
            rescan_at: None,
            shutdown_deadline: cfg.shutdown_deadline,
            board: None,
            notify: notify::Notify::from_env(),
            alerter: None,
            health: health_of(cfg.metrics.as_ref()),
            next_beat: None,
        };
        if let Some(a) = &cfg.alerts {
            d.alerter = Some((Alerter::start(a)?, a.clone()));
            if a.heartbeat_url.is_some() {
                d.next_beat = Some(Instant::now());
            }
        }
        if let Some(m) = &cfg.metrics {
            let board: Board = Arc::default();
            status::serve(&m.addr, Arc::clone(&board), health_of(Some(m)))?;
            d.board = Some(board);
        }
        for slot in d.slots.iter_mut().flatten() {
            slot.report.due = true;
        }
        d.notify.send("READY=1");
        // Snapshot requests left while we were starting (before SIGUSR1 was handled).
        for slot in d.slots.iter_mut().flatten() {
            read_requests(&slot.spool, &slot.target, &mut slot.requests);
        }
        Ok(d)
    }

    /// Membership: rescan when a watched directory changed (debounced) or on SIGHUP.
    fn rescan(&mut self, now: Instant) {
        let Some((t, reload)) = self.rescan_at else {
            return;
        };
        if t > now || self.stopping.is_some() {
            return;
        }
        self.rescan_at = None;
        let specs = match self.catalog.scan(reload) {
            Ok(specs) => specs,
            Err(e) => {
                error!("reload: {e}; keeping the current databases");
                return;
            }
        };
        let wanted: HashSet<PathBuf> = specs.iter().map(|d| d.path.clone()).collect();
        for spec in specs {
            self.add(spec, now);
        }
        for slot in self.slots.iter_mut().flatten() {
            if !wanted.contains(&slot.path) && !slot.removing {
                info!(
                    "db={} no longer listed: shipping what is pending and letting it go",
                    slot.path.display()
                );
                slot.removing = true;
                slot.s.dirty_since.get_or_insert(now);
            }
        }
        if reload {
            for d in self.catalog.dirs() {
                if !self.catalog_dirs.contains(&d) {
                    if let Err(e) = self.watcher.add_dir(&d) {
                        warn!("watch: {e}");
                    }
                    self.catalog_dirs.push(d);
                }
            }
        }
    }

    /// A database the catalog lists: new options for one replicated already, else a new slot
    /// once it is one walsync can replicate.
    fn add(&mut self, spec: DbSpec, now: Instant) {
        if let Some(&i) = self.index.get(&spec.path) {
            if let Some(slot) = self.slots[i].as_mut() {
                slot.apply(&spec);
            }
            return;
        }
        let sh = Shipper::new(&spec.path, spec.ns, Arc::clone(&self.storage), spec.opts);
        if let Err(e) = sh.check_source() {
            debug!("db={} not added yet: {e}", spec.path.display());
            return;
        }
        if let Err(e) = self.watcher.add_db(&spec.path) {
            warn!("db={} {e}", spec.path.display());
        }
        info!("db={} added (namespace {})", spec.path.display(), sh.ns);
        self.index.insert(spec.path.clone(), self.slots.len());
        self.slots.push(Some(Slot::new(sh, now)));
    }

    /// Hand due steps to the step workers: at most as many at once as there are step workers,
    /// so the upload workers stay free for requests. Returns whether any was left due for
    /// lack of a worker (dispatched when a step reports back).
    fn dispatch_steps(&mut self, now: Instant) -> bool {
        let mut steps = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.s.in_flight)
            .count();
        let mut full = false;
        let stopping = self.stopping.is_some();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let final_step = stopping || slot.removing;
            let forced = !final_step && !slot.requests.is_empty();
            let Some(plan) = slot.s.plan(now, slot.sync, slot.snap, final_step, forced) else {
                continue;
            };
            if steps >= self.pool.max_steps {
                full = true;
                continue;
            }
            let job = Job::Step {
                idx: i,
                shipper: Arc::clone(&slot.shipper),
                plan,
            };
            if self.pool.steps.try_send(job).is_ok() {
                steps += 1;
                slot.requests_in_flight = std::mem::take(&mut slot.requests);
                slot.s.dispatched(&plan);
            } else {
                full = true;
            }
        }
        full
    }

    /// Hand due uploads to the upload workers, starting from a rotating position so that
    /// busy databases take turns. Returns whether the queue was full.
    fn dispatch_uploads(&mut self, now: Instant) -> bool {
        let mut uploads = self.uploads_running();
        let n = self.slots.len();
        for k in 0..n {
            if uploads >= self.pool.max_uploads || self.stopping.is_some() {
                break;
            }
            let i = (self.upload_turn + k) % n;
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            if slot.upload_due(now).is_none_or(|t| t > now) {
                continue;
            }
            let job = Job::Upload {
                idx: i,
                outbox: Arc::clone(&slot.outbox),
            };
            if self.pool.uploads.try_send(job).is_err() {
                return true;
            }
            slot.s.uploading = true;
            uploads += 1;
            self.upload_turn = i + 1;
        }
        false
    }

    fn uploads_running(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.s.uploading)
            .count()
    }

    /// Drop the databases no longer listed whose final step is done.
    fn let_go(&mut self) {
        for slot in self.slots.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|s| s.removing && s.s.final_done && !s.s.in_flight && !s.s.uploading)
            {
                let s = slot.take().expect("checked");
                self.index.remove(&s.path);
                let _ = std::fs::remove_file(s.spool.join(status::FILE));
                info!("db={} let go", s.path.display());
            }
        }
    }

    /// Stopping, and every database shipped (or no progress within the shutdown deadline).
    fn finished(&self) -> bool {
        let Some(t0) = self.stopping else {
            return false;
        };
        if self.slots.iter().flatten().all(|s| s.s.final_done) {
            return true;
        }
        if t0.elapsed() > self.shutdown_deadline {
            error!(
                "shutdown: gave up after {:?} without progress, with work pending",
                self.shutdown_deadline
            );
            return true;
        }
        false
    }

    /// When to wake up without an event. Work left due because a queue was full waits for a
    /// worker to report back. With nothing due the daemon sleeps without a timeout, and
    /// first lets its idle connections go.
    fn next_deadline(&self, left_due: bool) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = self.rescan_at.map(|(t, _)| t);
        let busy = self
            .slots
            .iter()
            .flatten()
            .any(|s| s.s.in_flight || s.s.uploading);
        let may_upload = self.uploads_running() < self.pool.max_uploads && self.stopping.is_none();
        let publish_every = self.publish_every();
        for slot in self.slots.iter().flatten() {
            next = earliest(next, slot.s.next_due(slot.sync));
            if slot.report.due {
                next = earliest(next, slot.report.published.map(|t| t + publish_every));
            }
            if may_upload {
                next = earliest(next, slot.upload_due(now));
            }
        }
        if left_due && busy {
            next = next.filter(|t| *t > now);
        }
        if self.stopping.is_some() {
            next = earliest(next, Some(now + Duration::from_millis(200)));
        }
        if next.is_none() && !busy {
            // Quiet until the next change: an idle daemon holds no connection.
            self.storage.release_idle();
        }
        earliest(earliest(next, self.notify.due()), self.next_beat)
    }

    /// A watch event (`None`: the watcher thread stopped).
    fn on_watch(&mut self, ev: Option<WatchEvent>) {
        let now = Instant::now();
        match ev {
            Some(WatchEvent::Changed(p)) => {
                let db = watch::database_of(&p);
                if let Some(slot) = self.index.get(&db).and_then(|&i| self.slots[i].as_mut()) {
                    slot.s.dirty_since.get_or_insert(now);
                }
                // A file appearing or vanishing in a dir entry's directory (or, on kqueue, a
                // change of the directory itself) may be a database to add or let go.
                let in_dir = self
                    .catalog_dirs
                    .iter()
                    .any(|d| *d == p || watch::dir_of(&db) == *d);
                if in_dir && self.rescan_at.is_none() {
                    self.rescan_at = Some((now + Duration::from_millis(200), false));
                }
            }
            Some(WatchEvent::Overflow) => {
                for slot in self.slots.iter_mut().flatten() {
                    slot.s.dirty_since.get_or_insert(now);
                }
                self.rescan_at.get_or_insert((now, false));
            }
            None => {
                error!("watch: the watcher thread stopped; shutting down");
                self.stopping.get_or_insert(now);
            }
        }
    }

    /// A worker reported back.
    fn on_done(&mut self, d: Done) {
        let idx = d.idx();
        let Some(slot) = self.slots[idx].as_mut() else {
            return;
        };
        let now = Instant::now();
        let finishing = self.stopping.is_some() || slot.removing;
        // The shutdown deadline counts time without progress, so a large backlog that is still
        // moving is shipped, not abandoned.
        if let Some(t) = self.stopping.as_mut().filter(|_| d.succeeded()) {
            *t = now;
        }
        match d {
            Done::Step {
                release,
                result,
                changed_since_snapshot,
                ..
            } => slot.step_done(idx, release, result, changed_since_snapshot, finishing),
            Done::Upload { result, .. } => slot.upload_done(idx, result, now),
        }
        self.alert(idx, now);
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            SIGUSR1 => {
                for slot in self.slots.iter_mut().flatten() {
                    read_requests(&slot.spool, &slot.target, &mut slot.requests);
                    let waiting = slot.requests_in_flight.clone();
                    slot.requests.retain(|p| !waiting.contains(p));
                }
            }
            SIGHUP => {
                info!("SIGHUP: reloading the database list");
                self.rescan_at = Some((Instant::now(), true));
            }
            _ if self.stopping.is_some() => {
                warn!("second signal: exiting at once");
                std::process::exit(1);
            }
            sig => {
                info!("signal {sig}: shipping everything pending, then exiting");
                self.notify.send("STOPPING=1");
                self.stopping = Some(Instant::now());
            }
        }
    }

    /// Join the workers; an error when a database still had changes to ship.
    fn finish(mut self) -> Result<()> {
        self.publish(true);
        self.pool.join();
        let unfinished = self
            .slots
            .iter()
            .flatten()
            .filter(|s| !s.s.final_done)
            .count();
        if unfinished > 0 {
            return Err(Error::other(format!(
                "{unfinished} database(s) had unshipped changes at exit"
            )));
        }
        info!("all databases shipped; exiting");
        Ok(())
    }
}
