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
    /// application committing without pause can keep that window shut, so it is tried a few
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
        let mut r = Ok(None);
        let mut free = false;
        for attempt in 1..=2 {
            match self.checkpoint_and_move(&c, report, attempt) {
                // The pin is on read-mark 0 and holds back no restart: the next change is to
                // be captured at once, before a second restart could follow the first.
                Ok(Ckpt::Free) => {
                    report.hurry = true;
                    free = true;
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
        if matches!(r, Ok(None)) && !free {
            r = self.let_go(&c, report);
        }
        Self::close_conn(c, &self.path);
        r
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
        let mut r = Ok(None);
        for attempt in 1..=2 {
            match self.checkpoint_and_move(&c, report, attempt) {
                Ok(Ckpt::Free) => {
                    report.hurry = true;
                    break;
                }
                Ok(Ckpt::Missed) => {
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
        debug!(
            "db={} the application's checkpoint was waiting for walsync's pin: moved it",
            self.path.display()
        );
        r
    }
}

/// How long `make_way` waits for the application's checkpoint to backfill the WAL.
const MAKE_WAY_WAIT: Duration = Duration::from_millis(500);
