//! One database's shipping state machine: where its chain stands, the connections that pin its
//! WAL while it is active, the segments captured but not yet uploaded.
//!
//! The rules that make a restore never silently wrong (SPEC sections 4 and 4a):
//!
//! * **Pinned.** While a database is active, one of two connections always holds a read
//!   transaction ("leapfrog": the next one begins before the previous one ends). SQLite never
//!   restarts, truncates or deletes a WAL while a reader uses it, so no frame we have not
//!   captured can vanish. A restart can only happen while our reader sits on read-mark 0, which
//!   SQLite grants only when the WAL is fully checkpointed *and* (by the leapfrog order) fully
//!   captured; so a WAL whose header is the restart of ours (sequence + 1, salt-1 + 1) continues
//!   the chain exactly at our position, as a new generation.
//! * **Pinning** (after idling, at start, for a snapshot) begins a read transaction between two
//!   reads of SQLite's wal-index header (`wal::shm`): equal headers give the exact last frame
//!   our reader sees, with its running checksum, without any lock that could make an
//!   application's write fail. The tail up to that frame is captured and must end on exactly
//!   that checksum. The chain continues only if the WAL still has the header we last shipped
//!   and still holds our last frame with the same running checksum; anything else (restarted,
//!   truncated, deleted, replaced, the database file replaced) starts a new generation with a
//!   fresh snapshot, and the log says why.
//! * **Idle.** After `IDLE_RELEASE` without new frames (captured objects may still wait for
//!   upload: their frames are in the spool), both connections are closed (no file descriptors,
//!   no page cache) with `SQLITE_FCNTL_PERSIST_WAL`, so our close never deletes the WAL we
//!   would need to prove continuity with.
//! * **Bounded WAL.** A pin on a read mark above 0 blocks every WAL restart, so once the WAL is
//!   large the pin is moved where it can sit on read-mark 0 (see `checkpoint_if_large`).
//! * Only frames up to the last commit frame are captured; segments are standalone WAL files
//!   (see `wal::segment`), each naming the SHA-256 of the object before it in the chain.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rusqlite::{Connection, OpenFlags};

use crate::compress::Compression;
use crate::dbfile;
use crate::digest;
use crate::error::{is_busy, Error, Result};
use crate::layout::{self, Kind, Meta, Position};
use crate::snapshot;
use crate::storage::Storage;
use crate::time::Stamp;
use crate::wal::reader;
use crate::wal::shm::{self, WalIndex};
use crate::wal::{WalEnd, WalHeader};

use super::bridge::{self, Live, Outcome};
use super::capture;
use super::pagemap::{FileFacts, PageMap};
use super::upload::{Outbox, Pending, Policy};

/// How long a database must see no new frames before its pin is released.
pub const IDLE_RELEASE: Duration = Duration::from_secs(3);
/// The spool of a database may hold this much, or twice the database's size if larger, of
/// objects waiting for upload (storage unreachable for long); beyond it the pending objects
/// are dropped and a new generation starts from a snapshot (see `Shipper::bound_spool`).
pub const SPOOL_LIMIT_MIN: u64 = 64 << 20;
/// Frames after the last commit up to which a step asks to look again soon (see
/// `StepReport::tail`).
const TAIL_FRAMES: u32 = 64;
/// Busy timeout on our connections; SPEC section 4 promises the app's writes never fail while it
/// uses the same.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunables of one database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Run our own PASSIVE checkpoint once the WAL holds more frames than this.
    pub checkpoint_frames: u32,
    /// How long commits are batched before a segment is shipped.
    pub sync_interval: Duration,
    /// How often a changed database gets a new snapshot.
    pub snapshot_interval: Duration,
    /// Every point in time of this window stays restorable; older objects are deleted after
    /// each snapshot upload (None: never; see `prune`).
    pub retention: Option<Duration>,
    /// How segments are stored (see `compress`).
    pub compression: Compression,
}

impl DbOptions {
    /// What its uploads follow.
    pub fn policy(&self) -> Policy {
        Policy {
            retention: self.retention,
            compression: self.compression,
        }
    }
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            checkpoint_frames: 1000,
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            retention: Some(crate::cli::DEFAULT_RETENTION),
            compression: Compression::None,
        }
    }
}

/// The chain as shipped (or captured for shipping): its position and the hash of its last object.
#[derive(Debug, Clone)]
struct Chain {
    pos: Position,
    /// SHA-256 of the last object in the chain: the `prev` of the next segment.
    last_sha: String,
    /// The database file alone holds the chain's state and the WAL was empty when walsync
    /// pinned it: the valid frames of whatever header the WAL file has next follow the chain.
    /// (Frames the file still holds from before are those of its newest cycle, all in the
    /// database already: replaying them again changes nothing.)
    at_db: bool,
}

struct Pin {
    /// The connection holding the pinning read transaction (the only one kept open).
    reader: Connection,
    /// The `-shm` file, open for as long as the connections are (see `wal::shm::read`).
    shm: File,
    /// Identity of the WAL file we read, to notice a deleted or replaced WAL.
    wal_id: Option<(u64, u64)>,
    /// The database file, open for as long as the connections are (the same reason as `shm`),
    /// read to prove what changed (see `bridge`), and its identity.
    db: File,
    db_id: Option<(u64, u64)>,
}

use super::continuity::{self, Continuity};

mod capturing;
mod chain;
mod checkpoint;
mod pin;
mod prove;
mod spool;

pub use pin::{open_files_limit, reserve_uploads};
use pin::{pin_budget, PINNED};
pub use spool::{process_is_walsync, spool_of};
use spool::{source_id, NAMESPACE_BUSY};

/// After a let-go (see `checkpoint::let_go`): the WAL's last frame then, and SQLite's change
/// counter at the last look and when it last changed.
#[derive(Debug, Clone, Copy)]
struct LetGo {
    frame: u32,
    change: u32,
    seen: Instant,
}

/// A snapshot is due once the segments since the last one hold as many bytes as the database
/// (but at least this many), at most once per `SNAPSHOT_BY_BYTES_EVERY`.
const SNAPSHOT_BY_BYTES_MIN: u64 = 1 << 20;
const SNAPSHOT_BY_BYTES_EVERY: Duration = Duration::from_secs(60);

/// After a let-go, how long without a commit before walsync pins again (the application's
/// own checkpoint, which must run before its WAL can restart, commits nothing).
const LET_GO_QUIET: Duration = Duration::from_millis(200);

/// What a step did, for the scheduler and the logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepReport {
    pub segments: u32,
    pub frames: u32,
    pub snapshot: bool,
    /// True while the database is pinned (it wants another step after IDLE_RELEASE).
    pub pinned: bool,
    /// The pin may sit on read-mark 0 after a checkpoint: capture the next change at once.
    pub hurry: bool,
    /// A short transaction was being written as the step read the WAL: look again soon
    /// (its last write's event may already have been consumed).
    pub tail: bool,
    /// Objects still waiting for upload (it wants a retry).
    pub pending: usize,
    /// At the WAL's current growth, it reaches the checkpoint threshold this soon: changes
    /// are batched no longer than that.
    pub due_in: Option<Duration>,
}

pub struct Shipper {
    pub path: PathBuf,
    wal_path: PathBuf,
    shm_path: PathBuf,
    /// Namespace of this database in the replica (`<prefix>/<name>`).
    pub ns: String,
    storage: Arc<dyn Storage>,
    /// `host:/path`, in every object's metadata (see `layout::SOURCE`).
    source: String,
    spool: PathBuf,
    opts: DbOptions,
    chain: Option<Chain>,
    loaded: bool,
    pin: Option<Pin>,
    /// Captured objects waiting for upload (shared with the daemon's upload jobs).
    outbox: Arc<Outbox>,
    last_ts: Stamp,
    db_id: Option<(u64, u64)>,
    last_frames_at: Instant,
    changed_since_snapshot: bool,
    pub last_snapshot_at: Option<Instant>,
    /// Frames in the WAL at our last read (for the checkpoint threshold).
    wal_frames: u32,
    /// `wal_frames` when we last checkpointed: no second attempt until the WAL grows.
    checkpointed_at: u32,
    /// Highest generation seen in the replica; a new generation is always above it.
    max_gen: u32,
    /// We own the database's `owner` file (see `claim`).
    claimed: bool,
    /// The last frame of an uncommitted tail already reported (see `StepReport::tail`).
    tail_seen: u32,
    tail_pending: bool,
    /// The pin was let go so the application could restart the WAL (see `let_go`).
    let_go: Option<LetGo>,
    /// A let-go was needed and the writer has not paused since (see `step`).
    nonstop: bool,
    /// The chain's newest objects were dropped from the spool (see `bound_spool`): nothing
    /// may link to them, so only a new generation continues; why, for its log line.
    chain_lost: Option<String>,
    /// SQLite's commit counter in the wal-index after the last step (see `probe`).
    seen_change: u32,
    /// When the last step ended (the WAL's growth rate, see `step`).
    last_step: Option<Instant>,
    /// WAL bytes captured since the last snapshot (see `snapshot_by_bytes`).
    bytes_since_snapshot: u64,
    started: Instant,
    /// The last step's `hurry` and `due_in`, which a probe that does nothing keeps.
    last_schedule: (bool, Option<Duration>),
}

fn db_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |e| Error::sqlite(op, path, e)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Shipper {
    pub fn new(path: &Path, ns: String, storage: Arc<dyn Storage>, opts: DbOptions) -> Self {
        let (wal, shm) = (dbfile::wal_path(path), dbfile::shm_path(path));
        Shipper {
            outbox: Arc::new(Outbox::new(
                path.to_path_buf(),
                ns.clone(),
                Arc::clone(&storage),
                opts.policy(),
            )),
            source: source_id(path),
            path: path.to_path_buf(),
            wal_path: wal,
            shm_path: shm,
            ns,
            storage,
            spool: spool_of(path),
            opts,
            chain: None,
            loaded: false,
            pin: None,
            last_ts: Stamp::default(),
            db_id: None,
            // As if idle for long: a database with nothing to ship is released right after its
            // first step, so starting on a thousand databases does not pin them all at once.
            last_frames_at: Instant::now()
                .checked_sub(IDLE_RELEASE)
                .unwrap_or_else(Instant::now),
            changed_since_snapshot: false,
            last_snapshot_at: None,
            wal_frames: 0,
            checkpointed_at: 0,
            max_gen: 0,
            claimed: false,
            tail_seen: 0,
            tail_pending: false,
            let_go: None,
            nonstop: false,
            chain_lost: None,
            seen_change: 0,
            last_step: None,
            bytes_since_snapshot: 0,
            started: Instant::now(),
            last_schedule: (false, None),
        }
    }

    pub fn options(&self) -> &DbOptions {
        &self.opts
    }

    pub fn is_pinned(&self) -> bool {
        self.pin.is_some()
    }

    pub fn idle_for(&self) -> Duration {
        self.last_frames_at.elapsed()
    }

    pub fn changed_since_snapshot(&self) -> bool {
        self.changed_since_snapshot
    }

    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// Where this database's objects go: replica and namespace, as one line.
    pub fn target(&self) -> String {
        format!("{} namespace {}", self.storage.describe(), self.ns)
    }

    /// Make the next step take a snapshot even if nothing changed (`walsync snapshot`).
    pub fn request_snapshot(&mut self) {
        self.changed_since_snapshot = true;
    }

    /// Can the chain continue from the WAL as found right after (re)pinning at `idx`? Gathers
    /// the facts `continuity::decide` needs (reading the WAL only as far as the case requires).
    fn continuity(&self, idx: &WalIndex, cur: &Option<(File, WalHeader)>) -> Result<Continuity> {
        if let Some(why) = &self.chain_lost {
            return Ok(Continuity::Unproven(why.clone()));
        }
        let chain = self.chain.as_ref();
        let mut found = continuity::Found {
            max_frame: idx.max_frame,
            index_salts: (idx.salt1, idx.salt2),
            header: cur.as_ref().map(|(_, h)| *h),
            db_replaced: self.db_id.is_some_and(|id| file_id(&self.path) != Some(id)),
            ..Default::default()
        };
        if let (
            Some(Chain {
                pos, at_db: false, ..
            }),
            Some((f, h)),
        ) = (chain, cur)
        {
            if let Some((ours, end)) = &pos.wal {
                if h.same_wal(ours) {
                    found.holds_ours = reader::holds(f, &self.wal_path, h, end)?;
                } else if h.is_restart_of(ours) {
                    found.old_end = reader::old_end(f, &self.wal_path, ours, end)?;
                }
            }
        }
        Ok(continuity::decide(
            chain.map(|c| &c.pos),
            chain.is_some_and(|c| c.at_db),
            &found,
        ))
    }

    /// The objects this database's steps captured, for the daemon's upload jobs.
    pub fn outbox(&self) -> Arc<Outbox> {
        Arc::clone(&self.outbox)
    }

    /// One round of work: pin if needed, capture new frames (or start a new generation),
    /// snapshot when asked, checkpoint when the WAL is large, release when idle. With
    /// `upload`, the outbox is then uploaded here (`walsync snapshot`, a snapshot asked of the
    /// daemon); otherwise the daemon's upload jobs ship it. `release` uploads everything and
    /// then lets the database go (shutdown, a database no longer listed).
    pub fn step(&mut self, want_snapshot: bool, upload: bool, release: bool) -> Result<StepReport> {
        let mut report = StepReport::default();
        let res = self.step_inner(want_snapshot, upload || release, release, &mut report);
        if res.is_err() && self.outbox.is_empty() {
            // Whatever failed, a fresh pin re-proves continuity next time.
            self.release();
        }
        report.pinned = self.pin.is_some();
        if let Some(pin) = &self.pin {
            if let Ok(Some(i)) = shm::read(&pin.shm, &self.shm_path) {
                self.seen_change = i.change;
            }
            pin::unmap_shm(&pin.reader);
        }
        // The checkpoint threshold is a bound only if walsync acts as the WAL reaches it: a
        // WAL growing fast enough to reach it before the sync interval is over is looked at
        // again when it is due to (at the rate of this step's captures), and one past it, or
        // whose writer needed a let-go (it commits without pause, until it pauses for a sync
        // interval), on every change.
        if self.idle_for() >= self.opts.sync_interval {
            self.nonstop = false;
        }
        let limit = self.opts.checkpoint_frames;
        report.hurry |= report.pinned && (self.nonstop || self.wal_frames >= limit);
        let elapsed = self.last_step.replace(Instant::now()).map(|t| t.elapsed());
        if let (true, Some(dt)) = (report.pinned && report.frames > 0, elapsed) {
            let per_sec = report.frames as f64 / dt.as_secs_f64().max(1e-3);
            let left = limit.saturating_sub(self.wal_frames) as f64;
            report.due_in = Some(Duration::from_secs_f64((left / per_sec).min(3600.0)));
        }
        report.pending = self.outbox.len();
        report.tail = std::mem::take(&mut self.tail_pending);
        self.last_schedule = (report.hurry, report.due_in);
        res.map(|_| report)
    }

    fn step_inner(
        &mut self,
        want_snapshot: bool,
        upload: bool,
        release: bool,
        report: &mut StepReport,
    ) -> Result<()> {
        self.load()?;
        // Capture first, upload after: while storage is unreachable, committed frames move
        // from the WAL into the spool (on disk, in chain order) and the WAL stays bounded.
        if self.pin.is_none() && !upload && !want_snapshot && self.awaiting_restart()? {
            // Look again soon even if no event comes: the application may stop writing.
            self.tail_pending = true;
            report.hurry = true;
            return Ok(());
        }
        if self.pin.is_none() {
            self.check_source()?;
            if let Some(why) = self.pin_and_check(report)? {
                report.snapshot |= self.recover(&why, report)?;
            }
            if self.db_id.is_none() {
                self.db_id = file_id(&self.path);
            }
        } else {
            report.snapshot |= self.bound_spool(self.uncaptured())?;
            if let Some(why) = self.capture_pinned(report)? {
                report.snapshot |= self.recover(&why, report)?;
            }
        }
        let by_bytes = !want_snapshot && self.changed_since_snapshot && self.snapshot_by_bytes();
        if by_bytes {
            info!(
                "db={} {} of segments since the last snapshot, more than the database: taking a new one",
                self.path.display(),
                mb(self.bytes_since_snapshot)
            );
        }
        let want_snapshot = want_snapshot || by_bytes;
        if want_snapshot && self.changed_since_snapshot && !report.snapshot {
            self.periodic_snapshot(report)?;
            report.snapshot = true;
        }
        // Now pinned: capture what the WAL file holds beyond the pin's position. SQLite writes
        // a commit's frames before it publishes them in the wal-index, so the file can be
        // ahead of the position we pinned at (and the kernel event for the last write may
        // be the one that woke us); commits made during a snapshot are caught here too.
        if let Some(why) = self.capture_pinned(report)? {
            report.snapshot |= self.recover(&why, report)?;
        }
        self.leapfrog()?;
        if let Some(why) = self.checkpoint_if_large(report)? {
            report.snapshot |= self.recover(&why, report)?;
        }
        report.snapshot |= self.bound_spool(0)?;
        if upload {
            self.outbox.upload(usize::MAX)?;
        }
        // Over the descriptor budget, a database is released right after its step instead of
        // after IDLE_RELEASE: still correct (the next pin proves continuity), possibly at the
        // price of a snapshot, but the process keeps within its open-files limit. Objects
        // still waiting for upload need no pin: their frames are in the spool.
        let over_budget = PINNED.load(Ordering::Relaxed) > pin_budget();
        if release || over_budget || self.idle_for() >= IDLE_RELEASE {
            self.note_db_facts();
            self.release();
        }
        if upload {
            self.outbox.write_state(release)?;
        }
        Ok(())
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.release();
        if self.claimed {
            self.outbox.release_lease();
            let owner = self.spool.join("owner");
            let mine = fs::read_to_string(&owner)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(std::process::id());
            if mine {
                let _ = fs::remove_file(&owner);
            }
        }
    }
}
