//! Keeping the WAL bounded while pinned (SPEC section 4, guarantee 5): move the pin where it
//! can sit on read-mark 0 so the application's next write may restart the WAL.

use super::*;

/// How an attempt to let the WAL restart went (see `Shipper::checkpoint_if_large`).
pub(super) enum Ckpt {
    /// The WAL was completely backfilled as the new pin began: it may restart.
    Free,
    /// A commit slipped in, or the checkpoint could not run.
    Missed,
    /// A capture found the chain broken, for this reason.
    Broken(String),
}

impl Shipper {
    /// Keep the WAL bounded (SPEC section 4, guarantee 5). Our pin holds a read mark, and
    /// SQLite restarts a WAL only when no reader holds any but read-mark 0, which a reader gets
    /// only by beginning on a completely backfilled WAL. So once the WAL passes the threshold:
    /// capture everything up to our pin, backfill up to it (PASSIVE: never blocks the
    /// application), and at once begin the next pin on a connection opened beforehand. If
    /// nothing committed in between, the new pin sits on read-mark 0 and the application's
    /// next write restarts the WAL, which continues our chain exactly: the old pin kept the
    /// backfill at or below its own mark, and everything up to that mark was captured. An
    /// application committing without pause can keep that window shut, so it is tried
    /// twice; then walsync lets go: it captures everything up to the WAL's last commit and
    /// releases the pin, so the application's own checkpoint backfills the whole WAL and its
    /// next write restarts it. The commits that land in between stay in the file, past the
    /// restarted cycle's frames, and the next pin captures them from there
    /// (`Continuity::RestartedAfter`). walsync never takes the write lock: an application's
    /// deferred transaction would fail at once with SQLITE_BUSY, whatever its busy timeout.
    /// Returns why continuity broke, if a capture found it broken.
    pub(super) fn checkpoint_if_large(
        &mut self,
        report: &mut StepReport,
    ) -> Result<Option<String>> {
        let limit = self.opts.checkpoint_frames;
        if self.pin.is_none() || self.wal_frames <= limit || self.wal_frames <= self.checkpointed_at
        {
            return Ok(None);
        }
        self.checkpointed_at = self.wal_frames;
        let c = self.open_conn()?;
        let r = if self.nonstop {
            // The writer has not paused since the last let-go: an attempt to move the pin
            // would miss again (a commit slips in while our checkpoint runs) and only cost
            // two checkpoints, each with its fsyncs, while the WAL grows on.
            self.let_go(&c, report)
        } else {
            match self.try_free(&c, report, |_| {}) {
                Ok((None, false)) => self.let_go(&c, report),
                Ok((why, _)) => Ok(why),
                Err(e) => Err(e),
            }
        };
        Self::close_conn(c, &self.path);
        r
    }

    /// Up to two attempts to move the pin onto read-mark 0 (`checkpoint_and_move`), using
    /// our connection `c` for the checkpoint; `missed` runs after an attempt that missed.
    /// Returns why continuity broke (when a capture found it broken) and whether the WAL is
    /// now free to restart (then the next change is to be captured at once, before a second
    /// restart could follow the first).
    fn try_free(
        &mut self,
        c: &Connection,
        report: &mut StepReport,
        mut missed: impl FnMut(&Self),
    ) -> Result<(Option<String>, bool)> {
        for attempt in 1..=2 {
            match self.checkpoint_and_move(c, report, attempt)? {
                Ckpt::Free => {
                    report.hurry = true;
                    return Ok((None, true));
                }
                Ckpt::Missed => missed(self),
                Ckpt::Broken(why) => return Ok((Some(why), false)),
            }
        }
        Ok((None, false))
    }

    /// Commits arrive without pause: capture up to the last one and release the pin (see
    /// `checkpoint_if_large`), then backfill what we can for an application that does not
    /// checkpoint itself. The next change is to be looked at at once, before the restarted
    /// cycle reaches the frames that follow ours.
    fn let_go(&mut self, c: &Connection, report: &mut StepReport) -> Result<Option<String>> {
        if let Some(why) = self.capture_pinned(report)? {
            return Ok(Some(why));
        }
        let idx = self.pin.as_ref().map(|p| shm::read(&p.shm, &self.shm_path));
        if let Some(Ok(Some(i))) = idx {
            self.let_go = Some(LetGo {
                frame: i.max_frame,
                change: i.change,
                seen: Instant::now(),
            });
        }
        self.release();
        self.nonstop = true;
        let ckpt: rusqlite::Result<(i64, i64)> =
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            });
        debug!(
            "db={} commits without pause: let go at frame {} so the WAL can restart (checkpoint: {ckpt:?})",
            self.path.display(),
            self.wal_frames
        );
        report.hurry = true;
        Ok(None)
    }

    /// One attempt.
    pub(super) fn checkpoint_and_move(
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
}

impl Shipper {
    /// A timer woke a pinned database: look whether the application runs a blocking
    /// checkpoint (FULL, RESTART, TRUNCATE) that waits for our pin, and make way for it (see
    /// `make_way`); otherwise do nothing: a commit since the last step is left to the step its
    /// WAL event already asked for (a probe must cost the application nothing: full steps
    /// every 100 ms tripled its p99 commit latency). The idle release and a pending tail take
    /// a full step.
    pub fn probe(&mut self) -> Result<StepReport> {
        let Some(pin) = &self.pin else {
            return self.step(false, false, false);
        };
        if self.tail_pending || self.idle_for() >= IDLE_RELEASE {
            return self.step(false, false, false);
        }
        if !shm::checkpointer_busy(&pin.shm) {
            // Nothing done: the last step's schedule stands.
            return Ok(StepReport {
                pinned: true,
                pending: self.outbox.len(),
                hurry: self.last_schedule.0,
                due_in: self.last_schedule.1,
                ..StepReport::default()
            });
        }
        // A blocking checkpoint holds the write lock: nothing more commits until it is done.
        // Capture what committed before it, then make way.
        let quiet =
            shm::read(&pin.shm, &self.shm_path)?.map(|i| i.change) == Some(self.seen_change);
        let mut report = if quiet {
            StepReport::default()
        } else {
            self.step(false, false, false)?
        };
        let waiting = self.pin.is_some();
        if waiting {
            match self.make_way(&mut report) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    report.snapshot |= self.recover(&why, &mut report)?;
                }
                Err(e) => {
                    self.release();
                    return Err(e);
                }
            }
        }
        report.pinned = self.pin.is_some();
        report.pending = self.outbox.len();
        Ok(report)
    }

    /// The application's checkpoint waits for our pin: it holds the write lock, so nothing
    /// commits meanwhile. Capture to the end and move the pin there (the checkpoint may then
    /// backfill everything), wait for the backfill, and move it again, now onto read-mark 0,
    /// where it holds back no restart or truncation (see `checkpoint_if_large`).
    fn make_way(&mut self, report: &mut StepReport) -> Result<Option<String>> {
        let c = self.open_conn()?;
        let r = self
            .try_free(&c, report, Self::wait_backfill)
            .map(|(why, _)| why);
        Self::close_conn(c, &self.path);
        debug!(
            "db={} the application's checkpoint was waiting for walsync's pin: moved it",
            self.path.display()
        );
        r
    }

    /// Wait (at most `MAKE_WAY_WAIT`) for the application's checkpoint to backfill the WAL.
    fn wait_backfill(&self) {
        let began = Instant::now();
        while began.elapsed() < MAKE_WAY_WAIT {
            let idx = self.pin.as_ref().map(|p| shm::read(&p.shm, &self.shm_path));
            match idx {
                Some(Ok(Some(i))) if i.backfill < i.max_frame => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => break,
            }
        }
    }
}

/// How long `make_way` waits for the application's checkpoint to backfill the WAL.
const MAKE_WAY_WAIT: Duration = Duration::from_millis(500);

impl Shipper {
    /// Snapshot policy besides the interval: once the segments since the last snapshot hold
    /// as many bytes as the database itself, a restore would read more from them than from a
    /// new snapshot, so one is due (at most once per `SNAPSHOT_BY_BYTES_EVERY`, so that a
    /// database written without pause does not spend its time copying itself).
    pub(super) fn snapshot_by_bytes(&self) -> bool {
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
    pub(super) fn awaiting_restart(&mut self) -> Result<bool> {
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
}
