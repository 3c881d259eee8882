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
    /// times, and again whenever the WAL has grown. walsync never takes the write lock: an
    /// application's deferred transaction would fail at once with SQLITE_BUSY, whatever its
    /// busy timeout. Returns why continuity broke, if a capture found it broken.
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
