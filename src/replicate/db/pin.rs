//! Pinning: the read transaction that keeps SQLite from restarting, truncating or deleting
//! the WAL while walsync has frames to read (see the module docs of `db`), begun at an exact
//! position between two reads of the wal-index header, moved forward by leapfrogging, and
//! released when the database goes idle; and the descriptor budget that bounds how many
//! databases stay pinned.

use super::*;

/// Databases pinned right now, in this process.
pub(super) static PINNED: AtomicUsize = AtomicUsize::new(0);

/// Upload jobs that may run at once (set by the daemon): each holds a few descriptors too.
static UPLOAD_SLOTS: AtomicUsize = AtomicUsize::new(0);

/// Descriptors kept for everything but pinned databases and uploads (logs, the watcher,
/// the signal pipe, restores of a cron run, SQLite's temporary files).
const RESERVED_FDS: usize = 64;
/// Descriptors one upload job may hold: its connection, the spool file it sends, and in a
/// local replica the object being written and its sidecar.
const FDS_PER_UPLOAD: usize = 4;
/// Descriptors of a pinned database: its connection's database, WAL and `-shm`; our `-shm`
/// and database descriptors; a spool file and the page map while capturing.
const FDS_PER_PIN: usize = 7;

/// The soft open-files limit of this process.
pub fn open_files_limit() -> usize {
    static SOFT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SOFT.get_or_init(|| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass; no other precondition.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
            usize::try_from(r.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        }
    })
}

/// How many uploads may run at once within the open-files limit (at most `wanted`), and
/// reserve their descriptors: the rest is the pinning budget.
pub fn reserve_uploads(wanted: usize) -> usize {
    let room = open_files_limit().saturating_sub(RESERVED_FDS);
    // Uploads may take at most half of the room; pins keep the other half.
    let n = wanted.min(room / 2 / FDS_PER_UPLOAD).max(1);
    UPLOAD_SLOTS.store(n, Ordering::Relaxed);
    n
}

/// How many databases may stay pinned: what the open-files limit leaves after the reserve
/// and the uploads, at `FDS_PER_PIN` each.
pub(super) fn pin_budget() -> usize {
    let uploads = UPLOAD_SLOTS.load(Ordering::Relaxed) * FDS_PER_UPLOAD;
    (open_files_limit()
        .saturating_sub(RESERVED_FDS)
        .saturating_sub(uploads)
        / FDS_PER_PIN)
        .max(8)
}

/// Give back this process's view of a pinned database's wal-index pages (Linux). SQLite maps
/// the `-shm` file and touches it as a read transaction begins; the kernel then maps the whole
/// 32 KiB region (fault-around), counted in our RSS although the pages are the application's
/// page cache: 3.2 MB of 13.4 MB for 100 databases under writes. Between steps a pinned
/// connection touches none of it (walsync reads the header through its own descriptor,
/// `wal::shm::read`), so the mapping's pages are dropped from our page tables: for a shared
/// file mapping `MADV_DONTNEED` discards nothing, the next access maps the same page-cache
/// pages again. `xShmMap` with `bExtend = 0` only returns regions the connection has mapped
/// already; the step's thread is the only one using `c`.
pub(super) fn unmap_shm(c: &Connection) {
    #[cfg(target_os = "linux")]
    {
        use rusqlite::ffi;
        const REGION: usize = 32 * 1024;
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: a valid open handle; SQLITE_FCNTL_FILE_POINTER writes the main database's
        // sqlite3_file pointer (owned by the connection) into `file`.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                c.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&mut file as *mut *mut ffi::sqlite3_file).cast(),
            )
        };
        // SAFETY: `file` came from SQLite for this open connection; its methods table lives as
        // long as the file is open (it is: the connection holds a read transaction).
        let map = unsafe {
            if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
                return;
            }
            let m = &*(*file).pMethods;
            if m.iVersion < 2 {
                return;
            }
            m.xShmMap
        };
        let Some(map) = map else { return };
        for i in 0..64 {
            let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
            // SAFETY: xShmMap of the connection's own file, region `i`, never extending the
            // file (bExtend = 0): it returns a region mapped already, or NULL past the end.
            let rc = unsafe { map(file, i, REGION as i32, 0, &mut p) };
            if rc != ffi::SQLITE_OK || p.is_null() {
                break;
            }
            // SAFETY: `p` is the start of a REGION-byte shared file mapping SQLite made;
            // MADV_DONTNEED on a shared file mapping only drops page-table entries.
            unsafe { libc::madvise(p, REGION, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = c;
}

impl Shipper {
    pub(super) fn open_conn(&self) -> Result<Connection> {
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

    pub(super) fn begin_read(c: &Connection, path: &Path) -> Result<()> {
        c.execute_batch("BEGIN")
            .map_err(db_err("begin read on", path))?;
        if let Err(e) = c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
            let _ = c.execute_batch("ROLLBACK");
            return Err(Error::sqlite("read", path, e));
        }
        Ok(())
    }

    pub(super) fn end_txn(c: &Connection, path: &Path) -> Result<()> {
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
    pub(super) fn pin_exact(&mut self) -> Result<WalIndex> {
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
    pub(super) fn leapfrog(&mut self) -> Result<()> {
        let c = self.open_conn()?;
        Self::begin_read(&c, &self.path)?;
        let pin = self.pin.as_mut().expect("pinned");
        let old = std::mem::replace(&mut pin.reader, c);
        Self::close_conn(old, &self.path);
        Ok(())
    }

    pub(super) fn close_conn(c: Connection, path: &Path) {
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
}
