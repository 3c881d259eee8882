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
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            checkpoint_frames: 1000,
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
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

/// How an attempt to let the WAL restart went (see `Shipper::checkpoint_if_large`).
enum Ckpt {
    /// The WAL was completely backfilled as the new pin began: it may restart.
    Free,
    /// A commit slipped in, or the checkpoint could not run.
    Missed,
    /// A capture found the chain broken, for this reason.
    Broken(String),
}

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
    /// Objects still waiting for upload (it wants a retry).
    pub pending: usize,
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
}

/// Databases pinned right now, in this process.
static PINNED: AtomicUsize = AtomicUsize::new(0);

/// How many databases may stay pinned: a pinned database holds about 5 descriptors (database,
/// WAL and `-shm` for its connection, our `-shm` reader, a spool file while capturing), and
/// 64 are kept for everything else.
fn pin_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|x| x.starts_with("Max open files"))
                    .and_then(|x| {
                        x.split_whitespace()
                            .nth(3)
                            .and_then(|v| v.parse::<usize>().ok())
                    })
            })
            .unwrap_or(1024);
        (soft.saturating_sub(64) / 5).max(8)
    })
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

    /// The pid of another live walsync that owns this database, if any.
    pub fn live_owner(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.spool.join("owner"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid != std::process::id() && process_is_walsync(pid)).then_some(pid)
    }

    /// Make the next step take a snapshot even if nothing changed (`walsync snapshot`).
    pub fn request_snapshot(&mut self) {
        self.changed_since_snapshot = true;
    }

    /// Become the one walsync replicating this database (SPEC section 4, guarantee 7): an
    /// owner file in the spool directory names our pid. Another live walsync holding it is
    /// refused with its pid; a file left by a process that is gone (kill -9) is taken over.
    /// No descriptor is held, so idle databases still cost none.
    pub fn claim(&mut self) -> Result<()> {
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let owner = self.spool.join("owner");
        let me = std::process::id();
        for _ in 0..3 {
            let tmp = self.spool.join(format!("owner.{me}"));
            fs::write(&tmp, format!("{me}\n")).map_err(|e| Error::io("write", &tmp, e))?;
            // A hard link fails if the owner file exists: the claim is atomic.
            let linked = fs::hard_link(&tmp, &owner);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    self.claimed = true;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("claim", &owner, e)),
            }
            let pid: u32 = fs::read_to_string(&owner)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if pid == me {
                self.claimed = true;
                return Ok(());
            }
            if pid != 0 && process_is_walsync(pid) {
                return Err(Error::other(format!(
                    "database {} is already replicated by walsync pid {pid}",
                    self.path.display()
                ))
                .with_hint(format!(
                    "stop that process first; if it is gone, remove {}",
                    owner.display()
                )));
            }
            info!(
                "db={} taking over from walsync pid {pid}, which is gone",
                self.path.display()
            );
            let _ = fs::remove_file(&owner);
        }
        Err(Error::Busy {
            what: format!("could not claim {}", owner.display()),
        })
    }

    /// The database must exist, be SQLite, and be in WAL mode.
    pub fn check_source(&self) -> Result<()> {
        self.check_source_within(Duration::ZERO)
    }

    /// `check_source`, giving a database found in rollback-journal mode `grace` to come back
    /// to WAL: an application changing its page size leaves WAL mode for a moment.
    pub fn check_source_within(&self, grace: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            match self.source_is_wal()? {
                true => return Ok(()),
                false if t0.elapsed() < grace => std::thread::sleep(Duration::from_millis(100)),
                false => {
                    return Err(Error::other(format!(
                        "database {} is not in WAL mode",
                        self.path.display()
                    ))
                    .with_hint(format!(
                        "switch it with: sqlite3 {} 'PRAGMA journal_mode=WAL'",
                        self.path.display()
                    )))
                }
            }
        }
    }

    /// Whether the database file is a SQLite database in WAL mode (an error if it is no
    /// SQLite database at all).
    fn source_is_wal(&self) -> Result<bool> {
        let md = fs::metadata(&self.path).map_err(|e| Error::io("open database", &self.path, e))?;
        if !md.is_file() {
            return Err(Error::other(format!(
                "database {} is not a regular file",
                self.path.display()
            )));
        }
        let mut hdr = [0u8; 100];
        let n = {
            use std::io::Read;
            let mut f =
                File::open(&self.path).map_err(|e| Error::io("open database", &self.path, e))?;
            f.read(&mut hdr)
                .map_err(|e| Error::io("read database", &self.path, e))?
        };
        if n < 100 || &hdr[..16] != b"SQLite format 3\0" {
            return Err(
                Error::other(format!("{} is not a SQLite database", self.path.display()))
                    .with_hint("point walsync at a SQLite database file"),
            );
        }
        Ok(hdr[18] == 2 && hdr[19] == 2)
    }

    /// Learn where the chain stands from the newest object in the replica (one LIST, one HEAD).
    fn load(&mut self) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        let mut newest: Option<layout::Object> = None;
        let mut max_gen = 0;
        let prefix = format!("{}/", self.ns);
        let ns = self.ns.clone();
        self.storage.list(&prefix, &mut |e| {
            if let Some((n, o)) = layout::parse_key(&e.key, e.size) {
                if n != ns {
                    return;
                }
                if let Kind::Segment { gen } = o.kind {
                    max_gen = max_gen.max(gen);
                }
                if newest.as_ref().is_none_or(|b| o.ts > b.ts) {
                    newest = Some(o);
                }
            }
        })?;
        self.max_gen = max_gen;
        if let Some(o) = newest {
            self.last_ts = o.ts;
            let meta = self.storage.head(&o.key)?;
            // Another database, elsewhere, is shipping into this namespace right now: two
            // chains in one namespace would make both unrestorable. Refuse (and retry later).
            if let Some(other) = meta.get(layout::SOURCE).filter(|s| **s != self.source) {
                let age = time::now_ms().saturating_sub(o.ts);
                if age < NAMESPACE_BUSY_MS {
                    return Err(Error::other(format!(
                        "namespace {} is being replicated from {other} (newest object {} s old)",
                        self.ns,
                        age / 1000
                    ))
                    .with_hint(
                        "give this database another name or prefix, or stop the other walsync",
                    ));
                }
            }
            match (meta.get(layout::SHA256), layout::get_position(&meta)) {
                (Some(sha), Some(pos)) => {
                    let last_sha = match o.kind {
                        Kind::Snapshot => meta.get(layout::PREV).unwrap_or(sha).clone(),
                        Kind::Segment { .. } => sha.clone(),
                    };
                    self.max_gen = self.max_gen.max(pos.gen);
                    info!(
                        "db={} found chain ending at {} (generation {})",
                        self.path.display(),
                        o.key,
                        pos.gen
                    );
                    self.chain = Some(Chain {
                        pos,
                        last_sha,
                        at_db: false,
                    });
                }
                _ => warn!(
                    "db={} newest object {} has no chain metadata; a new generation will start",
                    self.path.display(),
                    o.key
                ),
            }
        }
        self.clear_spool();
        self.loaded = true;
        Ok(())
    }

    /// Files left in the spool by an earlier run (killed before uploading them) are not part
    /// of the chain this run continues from the replica: their frames are re-read from the WAL
    /// when it still has them, and otherwise a new generation starts. Remove them.
    fn clear_spool(&self) {
        let Ok(rd) = fs::read_dir(&self.spool) else {
            return;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // The owner file, and `walsync snapshot`'s requests and answers.
            if name == "owner"
                || name == "pages"
                || name.starts_with("owner.")
                || name.trim_start_matches('.').starts_with("snapshot-")
            {
                continue;
            }
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            info!(
                "db={} removed {n} file(s) an earlier run left in {}",
                self.path.display(),
                self.spool.display()
            );
        }
    }

    fn open_conn(&self) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let c = Connection::open_with_flags(&self.path, flags)
            .map_err(db_err("open database", &self.path))?;
        // Per-connection memory is per-database memory (SPEC section 6): no lookaside
        // allocator (SQLite reserves 120 KB per connection for it) and no page cache (a
        // non-zero cache_size makes SQLite preallocate ~80 KB of pages at the first read; we
        // read pages only for snapshots, which stream). Measured: 100 KB -> 19 KB a connection.
        // SAFETY: a valid open handle not yet used for any statement; a NULL buffer with zero
        // slots disables lookaside, as SQLITE_DBCONFIG_LOOKASIDE documents.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_config(
                c.handle(),
                rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
                std::ptr::null_mut::<std::ffi::c_void>(),
                0 as std::ffi::c_int,
                0 as std::ffi::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            debug!(
                "db={} could not disable lookaside (rc={rc})",
                self.path.display()
            );
        }
        c.busy_timeout(BUSY_TIMEOUT)
            .map_err(db_err("configure", &self.path))?;
        c.execute_batch("PRAGMA cache_size=0; PRAGMA wal_autocheckpoint=0;")
            .map_err(db_err("configure", &self.path))?;
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db_err("read journal mode of", &self.path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::other(format!(
                "database {} is not in WAL mode (journal_mode={mode})",
                self.path.display()
            ))
            .with_hint(format!(
                "switch it with: sqlite3 {} 'PRAGMA journal_mode=WAL'",
                self.path.display()
            )));
        }
        // Our close must never delete the WAL (SPEC 4a): keep it for the continuity proof.
        let mut persist: std::os::raw::c_int = 1;
        // SAFETY: a valid open handle, the "main" schema, and a pointer to an int, as
        // SQLITE_FCNTL_PERSIST_WAL documents.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_file_control(
                c.handle(),
                c"main".as_ptr(),
                rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
                (&mut persist as *mut std::os::raw::c_int).cast(),
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            warn!(
                "db={} could not set PERSIST_WAL (rc={rc})",
                self.path.display()
            );
        }
        Ok(c)
    }

    fn begin_read(c: &Connection, path: &Path) -> Result<()> {
        c.execute_batch("BEGIN")
            .map_err(db_err("begin read on", path))?;
        if let Err(e) = c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
            let _ = c.execute_batch("ROLLBACK");
            return Err(Error::sqlite("read", path, e));
        }
        Ok(())
    }

    fn end_txn(c: &Connection, path: &Path) -> Result<()> {
        if !c.is_autocommit() {
            c.execute_batch("ROLLBACK")
                .map_err(db_err("end transaction on", path))?;
        }
        Ok(())
    }

    /// Pin at an exact, known position without taking any lock the application could trip on:
    /// begin a read transaction on a new connection, bracketed by two reads of the wal-index
    /// header; equal headers mean no commit slipped in, so the new reader sees exactly that
    /// header's last frame. Only then does the previous reader (if any) let go.
    fn pin_exact(&mut self) -> Result<WalIndex> {
        let c = self.open_conn()?;
        let fresh_shm = if self.pin.is_none() {
            // A first read makes SQLite create and initialise the -shm file.
            Self::begin_read(&c, &self.path)?;
            Self::end_txn(&c, &self.path)?;
            let shm =
                File::open(&self.shm_path).map_err(|e| Error::io("open", &self.shm_path, e))?;
            let db = File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
            Some((shm, db))
        } else {
            None
        };
        let shm = match (&fresh_shm, &self.pin) {
            (Some((f, _)), _) => f,
            (None, Some(p)) => &p.shm,
            (None, None) => unreachable!("a pin or a fresh -shm descriptor"),
        };
        let mut pinned = None;
        for attempt in 0..200u64 {
            let before = shm::read(shm, &self.shm_path)?;
            Self::begin_read(&c, &self.path)?;
            let after = shm::read(shm, &self.shm_path)?;
            if let (Some(b), Some(a)) = (before, after) {
                if a == b {
                    pinned = Some(a);
                    break;
                }
            }
            Self::end_txn(&c, &self.path)?;
            std::thread::sleep(Duration::from_micros(50 * attempt.min(40)));
        }
        let Some(idx) = pinned else {
            drop(c);
            drop(fresh_shm); // after the connection: see `wal::shm::read`
            return Err(Error::Busy {
                what: format!(
                    "database {} is committing too fast to pin an exact position",
                    self.path.display()
                ),
            });
        };
        match (self.pin.as_mut(), fresh_shm) {
            (Some(pin), _) => {
                let old = std::mem::replace(&mut pin.reader, c);
                Self::close_conn(old, &self.path);
            }
            (None, Some((shm, db))) => {
                PINNED.fetch_add(1, Ordering::Relaxed);
                let db_id = db.metadata().ok().map(|m| (m.dev(), m.ino()));
                self.pin = Some(Pin {
                    reader: c,
                    shm,
                    wal_id: None,
                    db,
                    db_id,
                })
            }
            (None, None) => unreachable!("checked above"),
        }
        Ok(idx)
    }

    /// Move the pin forward: a new reader begins before the old one ends.
    fn leapfrog(&mut self) -> Result<()> {
        let c = self.open_conn()?;
        Self::begin_read(&c, &self.path)?;
        let pin = self.pin.as_mut().expect("pinned");
        let old = std::mem::replace(&mut pin.reader, c);
        Self::close_conn(old, &self.path);
        Ok(())
    }

    fn close_conn(c: Connection, path: &Path) {
        let _ = Self::end_txn(&c, path);
        if let Err((_, e)) = c.close() {
            warn!("db={} close: {e}", path.display());
        }
    }

    /// Close the connection: no pin, no file descriptors, no page cache.
    pub fn release(&mut self) {
        if let Some(pin) = self.pin.take() {
            PINNED.fetch_sub(1, Ordering::Relaxed);
            Self::close_conn(pin.reader, &self.path);
            // Only now: closing them earlier would drop SQLite's locks (see `wal::shm::read`).
            drop(pin.shm);
            drop(pin.db);
            debug!("db={} released", self.path.display());
        }
    }

    fn next_ts(&mut self) -> u64 {
        self.last_ts = time::now_ms().max(self.last_ts + 1);
        self.last_ts
    }

    fn new_gen(&mut self) -> u32 {
        let g = self
            .max_gen
            .max(self.chain.as_ref().map_or(0, |c| c.pos.gen))
            + 1;
        self.max_gen = g;
        g
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
                    found.old_end = reader::ends_at(f, &self.wal_path, ours, end)?;
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
                p.append
                    .clone()
                    .expect("take_appendable returns appendable segments"),
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
        let (n, _) = self.capture(&f, &hdr, restart, None)?;
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

    /// Continuity is unproven (`why`): prove the chain from the database file and ship what
    /// changed (a bridge segment), or else start a new generation with a snapshot. Returns
    /// whether a snapshot was taken.
    fn recover(&mut self, why: &str, report: &mut StepReport) -> Result<bool> {
        if self.chain.is_some() {
            if self
                .pin
                .as_ref()
                .is_some_and(|p| file_id(&self.path) != p.db_id)
            {
                self.release(); // our connection still reads the file that was replaced
            }
            match self.try_bridge(why, report)? {
                Ok(()) => return Ok(false),
                Err(reason) => {
                    self.new_generation(&format!("{why}; {reason}"))?;
                    return Ok(true);
                }
            }
        }
        self.new_generation(why)?;
        Ok(true)
    }

    /// Pin, compare the database with the page map of the chain's state, and capture the
    /// difference (see `bridge`). `Ok(Err(reason))` when it cannot, and a snapshot is needed.
    fn try_bridge(
        &mut self,
        why: &str,
        report: &mut StepReport,
    ) -> Result<std::result::Result<(), String>> {
        let idx = self.pin_exact()?;
        let chain = self.chain.clone().expect("recover checked the chain");
        let pin = self.pin.as_ref().expect("pinned");
        let ps = bridge::db_page_size(&pin.db, &self.path)?;
        let Some(mut map) = PageMap::open(&self.spool, &chain.last_sha, ps)? else {
            return Ok(Err(
                "no page map of the chain's state to compare the database file with".into(),
            ));
        };
        let cur = reader::read_header(&self.wal_path)?;
        let live = match &cur {
            _ if idx.max_frame == 0 => None,
            Some((f, h)) if (h.salt1, h.salt2) == (idx.salt1, idx.salt2) && h.page_size == ps => {
                Some(Live {
                    file: f,
                    path: &self.wal_path,
                    hdr: *h,
                    max_frame: idx.max_frame,
                    cksum: idx.cksum,
                })
            }
            _ => {
                return Err(Error::Busy {
                    what: format!(
                        "WAL {} does not match SQLite's wal-index while pinned",
                        self.wal_path.display()
                    ),
                })
            }
        };
        let has_live = live.is_some();
        let facts = FileFacts::of(&pin.db);
        let diff = !facts.is_some_and(|f| map.proves_unchanged(&f));
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let tmp = self
            .spool
            .join(format!("bridge-{}.tmp", std::process::id()));
        let t0 = Instant::now();
        let outcome = bridge::build(&pin.db, &self.path, &mut map, live, diff, &tmp)?;
        let secs = t0.elapsed().as_secs_f64();
        let b = match outcome {
            Outcome::TooLarge { changed, pages } => {
                PageMap::remove(&self.spool);
                return Ok(Err(format!(
                    "{changed} or more of {pages} pages changed, so a snapshot is smaller"
                )));
            }
            Outcome::Unchanged { read } => {
                map.finish(&chain.last_sha)?;
                // Pinned on an empty WAL: no checkpoint can write the file while we read it.
                if let Some(f) = facts {
                    map.record_facts(f, &chain.last_sha)?;
                }
                debug!(
                    "db={} {why}: the database file proves nothing changed (read {} in {secs:.3}s)",
                    self.path.display(),
                    mb(read)
                );
                self.chain.as_mut().expect("chain").at_db = true;
                return Ok(Ok(()));
            }
            Outcome::Built(b) => b,
        };
        let gen = self.new_gen();
        let ts = self.next_ts();
        let key = layout::segment_key(&self.ns, gen, ts);
        let dst = self
            .spool
            .join(format!("{gen:08x}-{}.wal", time::key_ts(ts)));
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename spool file", &dst, e))?;
        map.finish(&b.sha)?;
        if let (Some(f), false) = (facts, has_live) {
            map.record_facts(f, &b.sha)?;
        }
        let end = b.end.unwrap_or(WalEnd {
            frame: b.frames,
            cksum: b.seg_cksum,
            db_pages: b.pages,
        });
        let pos = Position {
            gen,
            wal: Some((b.hdr, end)),
        };
        let mut meta = Meta::new();
        meta.insert(layout::SHA256.into(), b.sha.clone());
        meta.insert(layout::PREV.into(), chain.last_sha.clone());
        meta.insert(layout::FIRST.into(), "1".into());
        meta.insert(layout::SOURCE.into(), self.source.clone());
        meta.insert(layout::BASE.into(), layout::BASE_DB.into());
        meta.insert(layout::BRIDGE.into(), b.changed.to_string());
        layout::put_position(&mut meta, &pos);
        info!(
            "db={} {why}: proven from the database file: {} changed page(s) of {}{} shipped as {key} in generation {gen} (read {} in {secs:.3}s)",
            self.path.display(),
            b.changed,
            b.pages,
            if has_live {
                format!(" and WAL frames 1..{}", b.wal_frames)
            } else {
                String::new()
            },
            mb(b.read)
        );
        self.outbox.push(Pending {
            file: dst,
            key,
            meta,
            len: b.len,
            append: None,
        });
        self.chain = Some(Chain {
            pos,
            last_sha: b.sha,
            at_db: !has_live,
        });
        if has_live {
            self.wal_frames = idx.max_frame;
            self.checkpointed_at = 0;
        }
        let wal_id = file_id(&self.wal_path);
        self.pin.as_mut().expect("pinned").wal_id = wal_id;
        self.changed_since_snapshot = true;
        self.last_frames_at = Instant::now();
        report.segments += 1;
        report.frames += b.frames;
        Ok(Ok(()))
    }

    /// Bring the page map from chain tip `old` to `new` by the frames of the segment in
    /// `file` from byte `start` on. A map that does not describe `old` is removed: it can never be trusted again.
    fn update_map(&self, old: &str, file: &Path, start: u64, page_size: u32, new: &str) {
        let r = (|| -> Result<bool> {
            let Some(mut map) = PageMap::open(&self.spool, old, page_size)? else {
                return Ok(false);
            };
            map.begin()?;
            map.apply_segment_frames(file, start)?;
            map.finish(new)?;
            Ok(true)
        })();
        match r {
            Ok(true) => {}
            Ok(false) => PageMap::remove(&self.spool),
            Err(e) => {
                warn!(
                    "db={} page map dropped ({e}); a later unproven change will cost a snapshot",
                    self.path.display()
                );
                PageMap::remove(&self.spool);
            }
        }
    }

    /// The chain's state is exactly the database file (pinned on an empty WAL, nothing
    /// captured since): record the file's identity and times in the page map, so that a later
    /// start or re-pin proves an unchanged file without reading it.
    fn note_db_facts(&mut self) {
        let (Some(chain), Some(pin)) = (&self.chain, &self.pin) else {
            return;
        };
        if !chain.at_db {
            return;
        }
        if !shm::read(&pin.shm, &self.shm_path).is_ok_and(|i| i.is_some_and(|i| i.max_frame == 0)) {
            return;
        }
        let Ok(ps) = bridge::db_page_size(&pin.db, &self.path) else {
            return;
        };
        if let (Ok(Some(mut map)), Some(f)) = (
            PageMap::open(&self.spool, &chain.last_sha, ps),
            FileFacts::of(&pin.db),
        ) {
            let _ = map.record_facts(f, &chain.last_sha);
        }
    }

    /// Start a new generation: a fresh snapshot at an exact position, under a new pin.
    fn new_generation(&mut self, why: &str) -> Result<()> {
        // A chain existed and the database changed while we were away: count it as active, so
        // the new chain is held pinned for IDLE_RELEASE (an application closing right after
        // writing would otherwise cost yet another generation). A first generation does not:
        // starting on a thousand new databases must not pin them all at once.
        if self.chain.is_some() {
            self.last_frames_at = Instant::now();
        }
        let idx = self.pin_exact()?;
        let wal = if idx.max_frame == 0 {
            None
        } else {
            let (f, hdr) = reader::read_header(&self.wal_path)?.ok_or_else(|| Error::Busy {
                what: format!("WAL {} vanished while pinning", self.wal_path.display()),
            })?;
            let walk = reader::walk(
                &f,
                &self.wal_path,
                &hdr,
                reader::start(&hdr),
                Some(idx.max_frame),
                |_, _, _| Ok(()),
            )?;
            if walk.end.frame != idx.max_frame
                || walk.end.cksum != idx.cksum
                || hdr.salt1 != idx.salt1
            {
                return Err(Error::Busy {
                    what: format!("WAL {} changed while pinning", self.wal_path.display()),
                });
            }
            Some((hdr, walk.end))
        };
        self.wal_frames = idx.max_frame;
        self.checkpointed_at = 0;
        let wal_id = file_id(&self.wal_path);
        self.pin.as_mut().expect("pinned").wal_id = wal_id;
        let pos = Position {
            gen: self.new_gen(),
            wal,
        };
        info!(
            "db={} starting generation {}: {why}",
            self.path.display(),
            pos.gen
        );
        self.take_snapshot(pos, None)?;
        self.db_id = file_id(&self.path);
        Ok(())
    }
    /// Snapshot the pinned reader's view (which must be exactly at `pos`) into the spool.
    fn take_snapshot(&mut self, pos: Position, prev: Option<String>) -> Result<()> {
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let ts = self.next_ts();
        let file = self.spool.join(format!("{}.db", time::key_ts(ts)));
        let started = Instant::now();
        let pin = self.pin.as_ref().expect("snapshot needs a pin");
        let len = snapshot::backup_to_file(&pin.reader, &self.path, &file)?;
        let sha = digest::file_sha256(&file).map_err(|e| Error::io("read snapshot", &file, e))?;
        let key = layout::snapshot_key(&self.ns, ts);
        let mut meta = Meta::new();
        meta.insert(layout::SHA256.into(), sha.clone());
        meta.insert(layout::SOURCE.into(), self.source.clone());
        if let Some(p) = &prev {
            meta.insert(layout::PREV.into(), p.clone());
        }
        layout::put_position(&mut meta, &pos);
        let secs = started.elapsed().as_secs_f64();
        info!(
            "db={} snapshot {key}: {len} bytes in {:.3}s ({:.1} MB/s)",
            self.path.display(),
            secs,
            len as f64 / 1e6 / secs.max(1e-6)
        );
        let periodic = prev.is_some();
        let last_sha = prev.unwrap_or(sha);
        self.snapshot_map(&file, &last_sha, pos.wal.is_none());
        self.outbox.push(Pending {
            file,
            key,
            meta,
            len,
            append: None,
        });
        // A periodic snapshot keeps what the chain knew; a new generation's at an empty WAL
        // has the database file hold the chain's state.
        let at_db = match (periodic, &self.chain) {
            (true, Some(c)) => c.at_db,
            _ => pos.wal.is_none(),
        };
        self.chain = Some(Chain {
            pos,
            last_sha,
            at_db,
        });
        self.changed_since_snapshot = false;
        self.last_snapshot_at = Some(Instant::now());
        Ok(())
    }

    /// The page map of a snapshot just taken (kept as it is when it already describes that
    /// state); with `at_db`, the database file holds that state too: record its facts.
    fn snapshot_map(&self, file: &Path, tag: &str, at_db: bool) {
        let pin = self.pin.as_ref().expect("snapshot needs a pin");
        let r = (|| -> Result<()> {
            let ps = bridge::db_page_size(&pin.db, &self.path)?;
            let mut map = match PageMap::open(&self.spool, tag, ps)? {
                Some(m) => m,
                None => PageMap::build(&self.spool, file, ps, tag)?,
            };
            if let (true, Some(f)) = (at_db, FileFacts::of(&pin.db)) {
                map.record_facts(f, tag)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            warn!(
                "db={} no page map ({e}); a later unproven change will cost a snapshot",
                self.path.display()
            );
            PageMap::remove(&self.spool);
        }
    }

    /// A periodic snapshot of a continuing chain, at the exact position the chain has reached.
    fn periodic_snapshot(&mut self, report: &mut StepReport) -> Result<()> {
        if let Some(why) = self.pin_and_check(report)? {
            return self.new_generation(&why);
        }
        let chain = self.chain.clone().expect("chain after pin");
        self.take_snapshot(chain.pos, Some(chain.last_sha))
    }

    /// The objects this database's steps captured, for the daemon's upload jobs.
    pub fn outbox(&self) -> Arc<Outbox> {
        Arc::clone(&self.outbox)
    }

    /// Keep the WAL bounded (SPEC section 4, guarantee 5). Our pin holds a read mark, and
    /// SQLite restarts a WAL only when no reader holds any but read-mark 0, which a reader gets
    /// only by beginning on a completely backfilled WAL. So once the WAL passes the threshold:
    /// capture everything up to our pin, backfill up to it (PASSIVE: never blocks the
    /// application), and at once begin the next pin on a connection opened beforehand. If
    /// nothing committed in between, the new pin sits on read-mark 0 and the application's
    /// next write restarts the WAL, which continues our chain exactly: the old pin kept the
    /// backfill at or below its own mark, and everything up to that mark was captured. An
    /// application committing without pause can keep that window shut, so it is tried a few
    /// times, and again whenever the WAL has grown. walsync never takes the write lock: an
    /// application's deferred transaction would fail at once with SQLITE_BUSY, whatever its
    /// busy timeout. Returns why continuity broke, if a capture found it broken.
    fn checkpoint_if_large(&mut self, report: &mut StepReport) -> Result<Option<String>> {
        let limit = self.opts.checkpoint_frames;
        if self.pin.is_none() || self.wal_frames <= limit || self.wal_frames <= self.checkpointed_at
        {
            return Ok(None);
        }
        self.checkpointed_at = self.wal_frames;
        let c = self.open_conn()?;
        let mut r = Ok(None);
        for attempt in 1..=3 {
            match self.checkpoint_and_move(&c, report, attempt) {
                // The pin is on read-mark 0 and holds back no restart: the next change is to
                // be captured at once, before a second restart could follow the first.
                Ok(Ckpt::Free) => {
                    report.hurry = true;
                    break;
                }
                Ok(Ckpt::Missed) => {}
                Ok(Ckpt::Broken(why)) => {
                    r = Ok(Some(why));
                    break;
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        Self::close_conn(c, &self.path);
        r
    }

    /// One attempt.
    fn checkpoint_and_move(
        &mut self,
        c: &Connection,
        report: &mut StepReport,
        attempt: u32,
    ) -> Result<Ckpt> {
        let next = self.open_conn()?;
        if let Some(why) = self.capture_pinned(report)? {
            Self::close_conn(next, &self.path);
            return Ok(Ckpt::Broken(why));
        }
        // Backfilling never destroys WAL frames; only a restart does, and our pin prevents
        // that until the next one begins.
        let ckpt = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        // The next pin, at once.
        if let Err(e) = Self::begin_read(&next, &self.path) {
            Self::close_conn(next, &self.path);
            return Err(e);
        }
        let pin = self.pin.as_mut().expect("pinned");
        let after = shm::read(&pin.shm, &self.shm_path)?;
        let old = std::mem::replace(&mut pin.reader, next);
        Self::close_conn(old, &self.path);
        match ckpt {
            Ok((log, done)) => {
                let clear = after.is_some_and(|i| i.max_frame == i.backfill);
                debug!(
                    "db={} checkpoint PASSIVE (attempt {attempt}): log={log} checkpointed={done}{}",
                    self.path.display(),
                    if clear { ", WAL free to restart" } else { "" }
                );
                Ok(if clear { Ckpt::Free } else { Ckpt::Missed })
            }
            Err(e) if is_busy(&e) => Ok(Ckpt::Missed),
            Err(e) => {
                warn!("db={} checkpoint: {e}", self.path.display());
                Ok(Ckpt::Missed)
            }
        }
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
        report.pending = self.outbox.len();
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

/// Is `pid` a live walsync process? (Linux: /proc; elsewhere any live process counts.)
/// A shipped object counts as another writer's when its source differs and it is younger than
/// this (state is written at least once a minute while a database changes).
const NAMESPACE_BUSY_MS: u64 = 120_000;

/// `host:/canonical/path` of a database, printable ASCII for object metadata.
fn source_id(path: &Path) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0 {
        let n = buf.iter().position(|&b| b == 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        "localhost".to_string()
    };
    let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let raw = format!("{host}:{}", p.display());
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn process_is_walsync(pid: u32) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    if Path::new("/proc/self").exists() {
        return fs::read_to_string(proc_dir.join("comm")).is_ok_and(|c| c.trim() == "walsync");
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
