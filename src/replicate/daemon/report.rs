//! What the daemon tells the world about its databases: the status files and the metrics
//! board (`publish`), `on_failure` (`alert`) and the heartbeat (`beat`); see `status` and
//! `alerts`.

use std::time::{Duration, Instant};

use log::debug;

use super::super::alerts;
use super::super::status::{self, Health};
use super::slot::PUBLISH_EVERY;

/// Status files written a second at most, over all databases (see `publish_every`).
const PUBLISH_MAX_RATE: f64 = 200.0;
use super::Daemon;
use crate::time::Stamp;

impl Daemon {
    /// How often one database's status file may be rewritten: `PUBLISH_EVERY`, longer with
    /// many databases, so that the daemon writes at most `PUBLISH_MAX_RATE` status files a
    /// second (each a new file renamed over the old: with 1,000 databases writing, a rewrite
    /// of each every second was a tenth of the daemon's CPU, most of it in the filesystem).
    pub(super) fn publish_every(&self) -> Duration {
        PUBLISH_EVERY.max(Duration::from_secs_f64(
            self.slots.len() as f64 / PUBLISH_MAX_RATE,
        ))
    }

    /// Write the status of each database that changed (at most once per `publish_every`; all
    /// of them when `all`) to its spool, and to the metrics board.
    pub(super) fn publish(&mut self, all: bool) {
        let now = Instant::now();
        let every = self.publish_every();
        let mut board = self
            .board
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(b) = board.as_mut() {
            b.resize(self.slots.len(), None);
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else {
                if let Some(b) = board.as_mut() {
                    b[i] = None;
                }
                continue;
            };
            let r = &mut slot.report;
            let soon = r.published.is_some_and(|t| now < t + every);
            if !all && (!r.due || soon) {
                continue;
            }
            r.due = false;
            r.published = Some(now);
            let st = slot.status();
            if slot.spool.is_dir() {
                if let Err(e) = status::write(&slot.spool, &st) {
                    debug!("db={} {e}", slot.path.display());
                }
            }
            if let Some(b) = board.as_mut() {
                b[i] = Some(st);
            }
        }
    }

    /// Run `on_failure` for a database failing for longer than `after` (at most once per
    /// `alerts::REPEAT` while it keeps failing; again after it recovered).
    pub(super) fn alert(&mut self, idx: usize, now: Instant) {
        let (Some((alerter, cfg)), Some(slot)) = (&self.alerter, self.slots[idx].as_mut()) else {
            return;
        };
        let Some(f) = slot.failing() else {
            slot.report.alerted = None;
            return;
        };
        let failing_for = Stamp::now().since(f.since);
        if cfg.on_failure.is_none()
            || failing_for < cfg.after
            || slot
                .report
                .alerted
                .is_some_and(|t| now < t + alerts::REPEAT)
        {
            return;
        }
        slot.report.alerted = Some(now);
        alerter.send(alerts::Job::Failed {
            db: slot.path.display().to_string(),
            ns: slot.ns.clone(),
            class: f.class,
            msg: f.msg,
            since: f.since,
        });
    }

    /// Fetch the heartbeat URL when due, if every database is healthy.
    pub(super) fn beat(&mut self, now: Instant) {
        let (Some((alerter, cfg)), Some(t)) = (&self.alerter, self.next_beat) else {
            return;
        };
        if t > now {
            return;
        }
        self.next_beat = Some(now + cfg.heartbeat_interval.max(Duration::from_millis(100)));
        let all: Vec<_> = self.slots.iter().flatten().map(|s| s.status()).collect();
        let h = Health {
            max_lag: self.health.max_lag,
            max_failing: cfg.after,
        };
        match status::health(&all, Stamp::now(), h) {
            Ok(_) => alerter.send(alerts::Job::Beat),
            Err(why) => debug!("heartbeat skipped: {why}"),
        }
    }
}
