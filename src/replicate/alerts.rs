//! Alerts without extra software (`[alerts]`): an `on_failure` command run when a database has
//! failed for `after` (at most once an hour per database, again after it recovered), and a
//! heartbeat URL fetched every `heartbeat_interval` while every database is healthy, as the
//! monitoring services users already have expect (a missed heartbeat is the alert). Both run
//! on one thread of their own (`walsync-alerts`) fed by a small bounded queue: the event loop
//! never waits on a command or a request, and drops a job when the queue is full.

use std::process::Command;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use log::{debug, info, warn};

use crate::config::Alerts;
use crate::error::{Error, Result};
use crate::storage::http::{Client, ReqBody, Target};
use crate::time::Stamp;

/// What the alerts thread is asked to do.
pub enum Job {
    /// A database failed: run the command with these in its environment.
    Failed {
        db: String,
        ns: String,
        class: String,
        msg: String,
        since: Stamp,
    },
    /// Everything is healthy: fetch the heartbeat URL.
    Beat,
}

/// How often `on_failure` runs for one database at most while it keeps failing.
pub const REPEAT: Duration = Duration::from_secs(3600);

pub struct Alerter {
    tx: Sender<Job>,
}

impl Alerter {
    pub fn start(cfg: &Alerts) -> Result<Alerter> {
        let beat = match &cfg.heartbeat_url {
            Some(u) => {
                let (t, path) = Target::parse(u).ok_or_else(|| {
                    Error::usage(format!(
                        "invalid heartbeat_url '{u}': it must look like http(s)://host[:port]/path"
                    ))
                })?;
                let client =
                    Client::new(t).map_err(|e| Error::other(format!("heartbeat_url {u}: {e}")))?;
                Some((
                    client,
                    if path.is_empty() { "/".into() } else { path },
                    u.clone(),
                ))
            }
            None => None,
        };
        let cmd = cfg.on_failure.clone();
        let (tx, rx) = bounded::<Job>(16);
        std::thread::Builder::new()
            .name("walsync-alerts".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx.iter() {
                    match job {
                        Job::Failed {
                            db,
                            ns,
                            class,
                            msg,
                            since,
                        } => {
                            let Some(cmd) = &cmd else { continue };
                            info!("db={db} failing since {since}: running on_failure");
                            let r = Command::new("sh")
                                .args(["-c", cmd])
                                .env("WALSYNC_DB", &db)
                                .env("WALSYNC_NAMESPACE", &ns)
                                .env("WALSYNC_ERROR_CLASS", &class)
                                .env("WALSYNC_ERROR", &msg)
                                .env("WALSYNC_FAILING_SINCE", since.iso())
                                .status();
                            match r {
                                Ok(s) if s.success() => {}
                                Ok(s) => warn!("on_failure for db={db} exited with {s}"),
                                Err(e) => warn!("on_failure for db={db}: cannot run sh: {e}"),
                            }
                        }
                        Job::Beat => {
                            let Some((client, path, url)) = &beat else {
                                continue;
                            };
                            let r = client
                                .send("GET", path, &[], ReqBody::Empty)
                                .and_then(|resp| Ok((resp.status, resp.text(4096)?)));
                            match r {
                                Ok((s, _)) if (200..300).contains(&s) => {
                                    debug!("heartbeat {url}: HTTP {s}")
                                }
                                Ok((s, _)) => warn!("heartbeat {url}: HTTP {s}"),
                                Err(e) => warn!("heartbeat {url}: {e}"),
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::io("spawn thread", "walsync-alerts", e))?;
        Ok(Alerter { tx })
    }

    /// Queue a job; dropped (and said) when the queue is full.
    pub fn send(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            warn!("alerts: queue full, an alert was dropped");
        }
    }
}
