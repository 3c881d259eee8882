//! The database's spool directory (`.<db>-walsync/` beside it) and who owns it: the owner
//! file that makes one walsync per database, the files an earlier run left, and the checks
//! that the database is one walsync can replicate.

use super::*;

/// Is `pid` a live walsync process? Proven by its command name, never by a live pid alone: a
/// pid reused by another program must not be taken for an owner (and signalled). Linux reads
/// `/proc/<pid>/comm`; elsewhere (BSD, macOS, no /proc) `ps -o comm= -p <pid>` says.
pub fn process_is_walsync(pid: u32) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    if Path::new("/proc/self").exists() {
        return fs::read_to_string(proc_dir.join("comm")).is_ok_and(|c| c.trim() == "walsync");
    }
    std::process::Command::new("ps")
        .args(["-o", "comm=", "-p", &pid.to_string()])
        .output()
        .is_ok_and(|o| {
            let name = String::from_utf8_lossy(&o.stdout);
            o.status.success()
                && Path::new(name.trim())
                    .file_name()
                    .is_some_and(|n| n == "walsync")
        })
}

/// A database's spool directory: `.<file>-walsync` beside it.
pub fn spool_of(db: &Path) -> PathBuf {
    let file = db
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    db.parent()
        .unwrap_or(Path::new("."))
        .join(format!(".{file}-walsync"))
}

/// A shipped object counts as another writer's when its source differs and it is younger than
/// this (state is written at least once a minute while a database changes).
pub(super) const NAMESPACE_BUSY: Duration = Duration::from_secs(120);

/// `host:/canonical/path` of a database, printable ASCII for object metadata.
pub(super) fn source_id(path: &Path) -> String {
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

impl Shipper {
    /// The pid of another live walsync that owns this database, if any.
    pub fn live_owner(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.spool.join("owner"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid != std::process::id() && process_is_walsync(pid)).then_some(pid)
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

    /// Files left in the spool by an earlier run (killed before uploading them) are not part
    /// of the chain this run continues from the replica: their frames are re-read from the WAL
    /// when it still has them, and otherwise a new generation starts. Remove them.
    pub(super) fn clear_spool(&self) {
        let Ok(rd) = fs::read_dir(&self.spool) else {
            return;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // The owner file, the page map, the status file (see `status`), and
            // `walsync snapshot`'s requests and answers.
            if name == "owner"
                || name == "pages"
                || name.starts_with(crate::replicate::status::FILE)
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
    pub(super) fn source_is_wal(&self) -> Result<bool> {
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
        let Some(h) = dbfile::Header::parse(&hdr[..n]) else {
            return Err(
                Error::other(format!("{} is not a SQLite database", self.path.display()))
                    .with_hint("point walsync at a SQLite database file"),
            );
        };
        Ok(h.wal_mode)
    }
}
