//! The worker pools: steps (`walsync-step/N`, local work, sized by cores) and uploads
//! (`walsync-upload/N`, requests in flight), each on a bounded queue of its own, reporting on
//! one bounded `done` queue. Each thread only ever runs one kind of job, so only the step
//! workers grow SQLite-deep stacks, and a stalled upload never takes a step worker.

use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::super::db::{Shipper, StepReport};
use super::super::upload::Outbox;
use crate::error::{Error, Result};

pub(super) enum Job {
    Step {
        idx: usize,
        shipper: Arc<Mutex<Shipper>>,
        plan: StepPlan,
    },
    Upload {
        idx: usize,
        outbox: Arc<Outbox>,
    },
}

/// The kind of step a database is due for (see `Sched::plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct StepPlan {
    pub snapshot: bool,
    /// Snapshot even if nothing changed, and upload it before answering (asked for by
    /// `walsync snapshot`).
    pub forced: bool,
    /// A final step: upload everything, then let the database go.
    pub release: bool,
    /// Woken by a timer while pinned, not by a change (see `Shipper::probe`).
    pub probe: bool,
}

pub(super) enum Done {
    Step {
        idx: usize,
        /// The job was a final one (shutdown or removal: ship everything, release).
        release: bool,
        result: Result<StepReport>,
        changed_since_snapshot: bool,
    },
    Upload {
        idx: usize,
        result: Result<usize>,
    },
}

impl Done {
    pub fn idx(&self) -> usize {
        match self {
            Done::Step { idx, .. } | Done::Upload { idx, .. } => *idx,
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            Done::Step { result: Ok(_), .. } | Done::Upload { result: Ok(_), .. }
        )
    }
}

/// Objects one upload job ships at most before the worker is handed on (a database written
/// without pause must not keep a worker for itself).
const UPLOADS_PER_JOB: usize = 32;
/// Stack of a worker thread (SQLite's own deepest paths need well under this).
const WORKER_STACK: usize = 512 * 1024;

pub(super) struct Pool {
    pub steps: Sender<Job>,
    pub uploads: Sender<Job>,
    pub done: Receiver<Done>,
    pub max_steps: usize,
    pub max_uploads: usize,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    pub fn start(max_steps: usize, max_uploads: usize) -> Result<Pool> {
        let workers = max_steps + max_uploads;
        let (step_tx, step_rx) = bounded::<Job>(max_steps);
        let (upload_tx, upload_rx) = bounded::<Job>(max_uploads);
        let (done_tx, done_rx) = bounded::<Done>(workers * 2);
        let mut handles = Vec::new();
        for n in 0..workers {
            let (rx, name) = if n < max_steps {
                (step_rx.clone(), format!("walsync-step/{n}"))
            } else {
                (
                    upload_rx.clone(),
                    format!("walsync-upload/{}", n - max_steps),
                )
            };
            let tx = done_tx.clone();
            let h = thread::Builder::new()
                .name(name.clone())
                // Small stacks: a worker's memory is its stack, and most of them wait on sockets.
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    for job in rx.iter() {
                        if tx.send(work(job)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::io("spawn thread", name, e))?;
            handles.push(h);
        }
        Ok(Pool {
            steps: step_tx,
            uploads: upload_tx,
            done: done_rx,
            max_steps,
            max_uploads,
            handles,
        })
    }

    /// Close the queues and wait for the workers to finish their jobs.
    pub fn join(self) {
        drop(self.steps);
        drop(self.uploads);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn work(job: Job) -> Done {
    match job {
        Job::Step { idx, shipper, plan } => {
            let mut s = shipper.lock().unwrap_or_else(|p| p.into_inner());
            if plan.forced {
                s.request_snapshot();
            }
            let result = if plan.probe {
                s.probe()
            } else {
                s.step(plan.snapshot, plan.forced, plan.release)
            };
            Done::Step {
                idx,
                release: plan.release,
                result,
                changed_since_snapshot: s.changed_since_snapshot(),
            }
        }
        Job::Upload { idx, outbox } => {
            let result = outbox.upload(UPLOADS_PER_JOB).and_then(|n| {
                outbox.write_state(false)?;
                Ok(n)
            });
            Done::Upload { idx, result }
        }
    }
}
