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

use crate::digest;
use crate::error::{is_busy, Error, Result};
use crate::layout::{self, Kind, Meta, Position};
use crate::snapshot;
use crate::storage::Storage;
use crate::time;
use crate::wal::reader;
use crate::wal::shm::{self, WalIndex};
use crate::wal::{WalEnd, WalHeader};

use super::bridge::{self, Live, Outcome};
use super::capture;
use super::pagemap::{FileFacts, PageMap};
use super::upload::{Outbox, Pending};

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
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            checkpoint_frames: 1000,
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            retention: Some(crate::cli::DEFAULT_RETENTION),
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

mod chain;
mod checkpoint;
mod pin;
mod prove;
mod spool;

pub use pin::{open_files_limit, reserve_uploads};
use pin::{pin_budget, PINNED};
use spool::{source_id, NAMESPACE_BUSY_MS};

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
    last_ts: u64,
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
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        Shipper {
            outbox: Arc::new(Outbox::new(
                path.to_path_buf(),
                ns.clone(),
                Arc::clone(&storage),
                opts.retention,
            )),
            source: source_id(path),
            path: path.to_path_buf(),
            wal_path: PathBuf::from(wal),
            shm_path: PathBuf::from(shm),
            ns,
            storage,
            spool: dir.join(format!(".{file}-walsync")),
            opts,
            chain: None,
            loaded: false,
            pin: None,
            last_ts: 0,
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

    /// Capture the committed frames after the chain's position into a spooled segment.
    /// `restart` is true when `hdr` begins a new WAL cycle continuing the chain.
    fn capture(
        &mut self,
        f: &File,
        hdr: &WalHeader,
        restart: bool,
        limit: Option<u32>,
    ) -> Result<(u32, WalEnd)> {
        let chain = self.chain.as_ref().expect("capture needs a chain").clone();
        let from = match (&chain.pos.wal, restart) {
            (Some((_, end)), false) => *end,
            _ => reader::start(hdr),
        };
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let gen = if restart && chain.pos.wal.is_some() {
            self.new_gen()
        } else {
            chain.pos.gen
        };
        // A backlog merges: frames continuing the newest pending segment are appended to it.
        let tail = self.outbox.take_appendable(gen, hdr, from.frame);
        let tmp = self
            .spool
            .join(format!("capture-{}.tmp", std::process::id()));
        let target = match &tail {
            Some(p) => capture::Target::Append(
                &p.file,
                Box::new(
                    p.append
                        .clone()
                        .expect("take_appendable returns appendable segments"),
                ),
            ),
            None => capture::Target::New(&tmp),
        };
        let res = capture::capture(f, &self.wal_path, hdr, gen, from, limit, target);
        let captured = match res {
            Ok(c) => c,
            Err(e) => {
                if let Some(p) = tail {
                    self.outbox.push(p); // unchanged: cut back or never touched
                }
                return Err(e);
            }
        };
        let (captured, wal_tail) = captured;
        // A small transaction caught mid-write (a commit landing as the step runs) is worth a
        // second look soon; a large one in progress is not (its writes keep waking us).
        match wal_tail {
            Some((frames, last)) if frames <= TAIL_FRAMES && last != self.tail_seen => {
                self.tail_seen = last;
                self.tail_pending = true;
            }
            Some(_) => {}
            None => self.tail_seen = 0,
        }
        let Some((file, c)) = captured else {
            if let Some(p) = tail {
                self.outbox.push(p);
            }
            if restart && chain.pos.wal.is_some() {
                self.max_gen -= 1; // nothing captured under the new generation yet
            }
            return Ok((0, from));
        };
        self.wal_frames = c.end.frame.max(self.wal_frames);
        self.bytes_since_snapshot += c.frames as u64 * hdr.frame_len();
        let ts = self.next_ts();
        let key = layout::segment_key(&self.ns, gen, ts);
        self.update_map(&chain.last_sha, &file, c.start, hdr.page_size, &c.sha);
        let pos = Position {
            gen,
            wal: Some((*hdr, c.end)),
        };
        let (file, mut meta, first) = match tail {
            // The merged object keeps the first one's links and takes the new end.
            Some(p) => {
                let first = p.meta.get(layout::FIRST).cloned().unwrap_or_default();
                (p.file, p.meta, first)
            }
            None => {
                let dst = self
                    .spool
                    .join(format!("{gen:08x}-{}.wal", time::key_ts(ts)));
                fs::rename(&file, &dst).map_err(|e| Error::io("rename spool file", &dst, e))?;
                let mut meta = Meta::new();
                meta.insert(layout::PREV.into(), chain.last_sha.clone());
                meta.insert(layout::FIRST.into(), c.first.to_string());
                meta.insert(layout::SOURCE.into(), self.source.clone());
                if chain.at_db && chain.pos.wal.is_some() {
                    // Follows the database state of the object before it, not a WAL cycle.
                    meta.insert(layout::BASE.into(), layout::BASE_DB.into());
                }
                (dst, meta, c.first.to_string())
            }
        };
        meta.insert(layout::SHA256.into(), c.sha.clone());
        layout::put_position(&mut meta, &pos);
        debug!(
            "db={} captured {key}: frames {}..{} ({} frames{})",
            self.path.display(),
            c.first,
            c.end.frame,
            c.frames,
            if first == c.first.to_string() {
                String::new()
            } else {
                format!(", merged with pending frames from {first}")
            }
        );
        self.outbox.push(Pending {
            file,
            key,
            meta,
            len: c.appendable.len,
            append: Some(c.appendable),
        });
        self.chain = Some(Chain {
            pos,
            last_sha: c.sha,
            at_db: false,
        });
        self.changed_since_snapshot = true;
        self.last_frames_at = Instant::now();
        Ok((c.frames, c.end))
    }

    /// Read the WAL while pinned and capture what is new; a restart of our WAL continues the
    /// chain (see the module docs), anything else unexpected breaks it.
    fn capture_pinned(&mut self, report: &mut StepReport) -> Result<Option<String>> {
        let cur = reader::read_header(&self.wal_path)?;
        let wal_id = file_id(&self.wal_path);
        let pin = self.pin.as_mut().expect("pinned");
        if let (Some(old), Some(_)) = (pin.wal_id, &cur) {
            if wal_id != Some(old) {
                return Ok(Some(
                    "the WAL file was deleted or replaced while the database was open".into(),
                ));
            }
        }
        if cur.is_none() && pin.wal_id.is_some() && wal_id.is_none() {
            return Ok(Some(
                "the WAL file was deleted while the database was open".into(),
            ));
        }
        if wal_id.is_some() {
            pin.wal_id = wal_id;
        }
        let Some((f, hdr)) = cur else {
            return Ok(None); // truncated (or never written): nothing new
        };
        if file_id(&self.path) != pin.db_id {
            return Ok(Some(
                "the database file was replaced while walsync had it open".into(),
            ));
        }
        let chain = self.chain.as_ref().expect("pinned implies a chain");
        let restart = match &chain.pos.wal {
            // The database held everything and the WAL was empty when we pinned, and our pin
            // has held every checkpoint back since: this WAL's frames follow the chain.
            _ if chain.at_db => true,
            None => true,
            Some((h, _)) if hdr.same_wal(h) => false,
            Some((h, _)) if hdr.is_restart_of(h) => true,
            Some((h, _)) => {
                return Ok(Some(format!(
                    "unexpected WAL header while pinned (checkpoint sequence {} -> {})",
                    h.seq, hdr.seq
                )))
            }
        };
        if restart {
            self.wal_frames = 0;
            self.checkpointed_at = 0;
        }
        // Up to a little past what the wal-index published when we looked (a commit whose
        // frames are written but not yet published), never chasing a writer that commits
        // faster than we read: the rest is for the next step.
        let limit = match shm::read(&self.pin.as_ref().expect("pinned").shm, &self.shm_path)? {
            Some(i) if (i.salt1, i.salt2) == (hdr.salt1, hdr.salt2) => {
                Some(i.max_frame.saturating_add(TAIL_FRAMES))
            }
            _ => None,
        };
        let (n, _) = self.capture(&f, &hdr, restart, limit)?;
        if n > 0 {
            report.segments += 1;
            report.frames += n;
        }
        Ok(None)
    }

    /// (Re)pin at an exact position and check continuity; capture the tail when it holds.
    /// Returns the reason when a new generation is needed.
    fn pin_and_check(&mut self, report: &mut StepReport) -> Result<Option<String>> {
        let idx = self.pin_exact()?;
        let cur = reader::read_header(&self.wal_path)?;
        let restart = match self.continuity(&idx, &cur)? {
            Continuity::Unproven(why) => return Ok(Some(why)),
            Continuity::Same => false,
            Continuity::Restarted => true,
            Continuity::RestartedAfter(last) => {
                if let Some(why) = self.capture_old_tail(&cur, last, report)? {
                    return Ok(Some(why));
                }
                true
            }
        };
        if let Some((f, hdr)) = &cur {
            let limit = (idx.max_frame > 0).then_some(idx.max_frame);
            let (n, end) = self.capture(f, hdr, restart, limit)?;
            if n > 0 {
                report.segments += 1;
                report.frames += n;
            }
            if restart {
                self.wal_frames = end.frame;
                self.checkpointed_at = 0;
            }
            if idx.max_frame > 0 && (end.frame != idx.max_frame || end.cksum != idx.cksum) {
                // Only possible if SQLite restarted the WAL under a read-mark-0 pin before we
                // read frames we had not shipped.
                return Ok(Some(format!(
                    "the WAL changed while walsync read it (frame {} of {})",
                    end.frame, idx.max_frame
                )));
            }
        }
        let wal_id = file_id(&self.wal_path);
        self.pin.as_mut().expect("pinned").wal_id = wal_id;
        Ok(None)
    }

    /// The WAL restarted after more commits than walsync had captured, and their frames are
    /// still in the file (`Continuity::RestartedAfter`): capture them into the chain as they
    /// are, up to `last`, before the new cycle. Returns why not, if the file changed meanwhile.
    fn capture_old_tail(
        &mut self,
        cur: &Option<(File, WalHeader)>,
        last: WalEnd,
        report: &mut StepReport,
    ) -> Result<Option<String>> {
        let (Some((f, _)), Some(Chain { pos, .. })) = (cur, &self.chain) else {
            return Ok(Some("the WAL vanished while walsync read it".into()));
        };
        let Some((ours, from)) = pos.wal else {
            return Ok(Some("the chain has no WAL position".into()));
        };
        let (n, end) = self.capture(f, &ours, false, Some(last.frame))?;
        if end != last {
            return Ok(Some(format!(
                "the WAL's old frames changed while walsync read them (frame {} of {})",
                end.frame, last.frame
            )));
        }
        report.segments += 1;
        report.frames += n;
        debug!(
            "db={} the WAL restarted after frame {}; its old frames {}..{} were still in the file and continue the chain",
            self.path.display(),
            last.frame,
            from.frame + 1,
            last.frame
        );
        Ok(None)
    }

    /// Snapshot policy besides the interval: once the segments since the last snapshot hold
    /// as many bytes as the database itself, a restore would read more from them than from a
    /// new snapshot, so one is due (at most once per `SNAPSHOT_BY_BYTES_EVERY`, so that a
    /// database written without pause does not spend its time copying itself).
    fn snapshot_by_bytes(&self) -> bool {
        let Some(pin) = &self.pin else {
            return false;
        };
        let db_len = pin.db.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        // After a start, the newest snapshot may be recent: count from the start.
        let since = self.last_snapshot_at.unwrap_or(self.started);
        self.bytes_since_snapshot >= db_len.max(SNAPSHOT_BY_BYTES_MIN)
            && since.elapsed() >= SNAPSHOT_BY_BYTES_EVERY
    }

    /// After a let-go (see `checkpoint::let_go`): stay unpinned while the application keeps
    /// writing into the same WAL cycle, so that nothing of ours holds back its restart; a pin
    /// would take a read mark and block it. Pin again once the WAL restarted, or stopped
    /// growing, or grew by the checkpoint threshold without restarting (a reader of the
    /// application holds it back, or nothing checkpoints it).
    fn awaiting_restart(&mut self) -> Result<bool> {
        let Some(mut lg) = self.let_go.take() else {
            return Ok(false);
        };
        let ours = self.chain.as_ref().and_then(|c| c.pos.wal.map(|(h, _)| h));
        // No connection of ours is open: reading the -shm through a descriptor of its own
        // drops no lock of ours when it closes.
        let idx = match File::open(&self.shm_path) {
            Ok(f) => shm::read(&f, &self.shm_path)?,
            Err(_) => None,
        };
        let (Some(i), Some(h)) = (idx, ours) else {
            return Ok(false);
        };
        if (i.salt1, i.salt2) != (h.salt1, h.salt2)
            || i.max_frame >= lg.frame + self.opts.checkpoint_frames
        {
            return Ok(false);
        }
        if i.change != lg.change {
            lg.change = i.change;
            lg.seen = Instant::now();
        } else if lg.seen.elapsed() >= LET_GO_QUIET {
            return Ok(false);
        }
        self.let_go = Some(lg);
        Ok(true)
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
        } else if let Some(why) = self.capture_pinned(report)? {
            report.snapshot |= self.recover(&why, report)?;
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
        report.snapshot |= self.bound_spool()?;
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
