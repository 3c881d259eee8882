//! `watch` (the daemon) and `snapshot`, and what every command needs: the replica and the
//! config, and a shipper per database.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Args;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::layout;
use crate::replicate::catalog;
use crate::replicate::daemon::{self, Catalog, DaemonConfig, DbSpec};
use crate::replicate::db::{DbOptions, Shipper};
use crate::replicate::request;
use crate::storage::{self, Storage};

fn open_storage(bucket: &str, opts: &storage::s3::S3Options) -> Result<(Arc<dyn Storage>, String)> {
    let url = storage::parse_url(bucket)?;
    storage::open(&url, opts)
}

/// The replica and the config, from `-b` or from `--config` (whose endpoint and addressing
/// `--endpoint` and `--addressing` override).
pub fn replica(a: &Args) -> Result<(Arc<dyn Storage>, String, Option<Config>)> {
    use crate::storage::s3::Addressing;
    let cfg = a.config.as_deref().map(config::load).transpose()?;
    let mut opts = cfg.as_ref().map(|c| c.s3.clone()).unwrap_or_default();
    if a.endpoint.is_some() {
        opts.endpoint = a.endpoint.clone();
    }
    if a.addressing != Addressing::Auto {
        opts.addressing = a.addressing;
    }
    let bucket = match (&a.bucket, &cfg) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.bucket.clone(),
        (None, None) => unreachable!("validated: -b or --config"),
    };
    let (s, p) = open_storage(&bucket, &opts)?;
    Ok((s, p, cfg))
}

/// `replica`, for the commands that only read the replica (restore, restore-all, list,
/// verify, prune): a storage that answers the bucket check with 5xx or 429 is waited out like
/// any later read (`storage::retry`: one warning line per retry); one that cannot be reached,
/// or refuses, still fails at once with its one line.
pub fn replica_to_read(a: &Args) -> Result<(Arc<dyn Storage>, String, Option<Config>)> {
    use crate::storage::retry::{backoff, READ_ATTEMPTS};
    // An answer of the server (not a connection that failed): classify's "HTTP <status> ...".
    let answered = |e: &Error| matches!(e, Error::Storage { msg, .. } if msg.starts_with("HTTP "));
    let mut failures = 0;
    loop {
        match replica(a) {
            Err(e) if e.is_transient() && answered(&e) && failures + 1 < READ_ATTEMPTS => {
                failures += 1;
                let wait = backoff(failures, 0);
                log::warn!(
                    "{e} (attempt {failures} of {READ_ATTEMPTS}; checking the bucket again in {wait:.1?})"
                );
                std::thread::sleep(wait);
            }
            r => return r,
        }
    }
}

/// Shippers for the databases named on the command line (names made unique as SPEC section 1
/// says) or listed in the config file, and the catalog that keeps that list current.
fn shippers(
    a: &Args,
    prefix: &str,
    storage: &Arc<dyn Storage>,
    cfg: Option<&Config>,
    claim: bool,
) -> Result<(Vec<Shipper>, Box<dyn Catalog>)> {
    let mut entries: Vec<DbSpec> = Vec::new();
    if let Some(cfg) = cfg {
        entries = catalog::specs_of(cfg)?;
    } else {
        let mut paths: Vec<PathBuf> = Vec::new();
        for p in &a.positional {
            let path = Path::new(p);
            let abs =
                std::fs::canonicalize(path).map_err(|e| Error::io("open database", path, e))?;
            if paths.contains(&abs) {
                return Err(Error::usage(format!(
                    "database {} is given twice",
                    abs.display()
                )));
            }
            paths.push(abs);
        }
        let names = layout::unique_names(&paths);
        let opts = DbOptions {
            sync_interval: a.sync_interval,
            snapshot_interval: a.snapshot_interval,
            retention: a.retention,
            compression: a.compression,
            ..Default::default()
        };
        for (path, n) in paths.into_iter().zip(names) {
            entries.push(DbSpec {
                path,
                ns: layout::join(prefix, &n),
                opts: opts.clone(),
            });
        }
    }
    let mut out = Vec::new();
    for d in &entries {
        let mut s = Shipper::new(&d.path, d.ns.clone(), Arc::clone(storage), d.opts.clone());
        if claim {
            // The daemon gives a database caught changing its page size (out of WAL mode
            // for a moment) a few seconds; a one-shot run does not wait.
            s.check_source_within(Duration::from_secs(5))?;
            s.claim()?;
        } else {
            s.check_source()?;
        }
        out.push(s);
    }
    let catalog: Box<dyn Catalog> = match cfg {
        Some(c) => Box::new(catalog::ConfigCatalog { cfg: c.clone() }),
        None => Box::new(catalog::FixedCatalog(entries)),
    };
    Ok((out, catalog))
}

/// Run the daemon until a signal.
pub fn watch(a: &Args) -> Result<()> {
    // A daemon (re)started during a blip of its storage waits a little for it; wrong
    // credentials or a missing bucket still fail at once.
    let mut attempt = 0;
    let (storage, prefix, cfg) = loop {
        match replica(a) {
            Err(e) if e.is_transient() && attempt < 5 => {
                attempt += 1;
                let wait = Duration::from_secs(1 << attempt);
                log::warn!("{e}; trying again in {wait:?} (attempt {attempt} of 5)");
                std::thread::sleep(wait);
            }
            r => break r?,
        }
    };
    let (shippers, catalog) = shippers(a, &prefix, &storage, cfg.as_ref(), true)?;
    if shippers.is_empty() && cfg.as_ref().is_none_or(|c| c.dirs.is_empty()) {
        return Err(Error::other(
            "no databases to watch (the config's dir entries match nothing)",
        ));
    }
    let signals = signal_channel()?;
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    // --metrics-addr over the config's [metrics] addr (keeping its thresholds).
    let metrics = match (
        &a.metrics_addr,
        cfg.as_ref().and_then(|c| c.metrics.clone()),
    ) {
        (Some(addr), m) => Some(config::Metrics {
            addr: addr.clone(),
            max_lag: m.as_ref().map_or(config::DEFAULT_MAX_LAG, |m| m.max_lag),
            max_failing: m
                .as_ref()
                .map_or(config::DEFAULT_MAX_FAILING, |m| m.max_failing),
        }),
        (None, m) => m,
    };
    let dcfg = DaemonConfig {
        workers,
        uploads: a.uploads,
        shutdown_deadline: Duration::from_secs(120),
        metrics,
        alerts: cfg.as_ref().and_then(|c| c.alerts.clone()),
    };
    daemon::run(shippers, catalog, storage, dcfg, signals)?;
    Ok(())
}

/// A snapshot of each database, by the daemon owning it or in this process.
pub fn snapshot(a: &Args) -> Result<()> {
    let (storage, prefix, cfg) = replica(a)?;
    let mut list = shippers(a, &prefix, &storage, cfg.as_ref(), false)?.0;
    if cfg.is_some() && !a.positional.is_empty() {
        // Only the databases named, each of which the config must hold.
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let named: Vec<PathBuf> = a.positional.iter().map(|p| canon(Path::new(p))).collect();
        for n in &named {
            if !list.iter().any(|s| canon(&s.path) == *n) {
                return Err(Error::usage(format!(
                    "database {} is not in the config file",
                    n.display()
                ))
                .with_hint("name databases the config lists, or none for all of them"));
            }
        }
        list.retain(|s| named.contains(&canon(&s.path)));
    }
    let mut failed = 0;
    let total = list.len();
    for mut s in list {
        // A running `walsync watch` owns the database: it takes the snapshot in its
        // own chain, so the two never write competing generations.
        let res = match s.live_owner() {
            Some(pid) => match request::delegate_snapshot(&s, pid) {
                Ok(true) => Ok(()),
                Ok(false) => snapshot_here(&mut s),
                Err(e) => Err(e),
            },
            None => snapshot_here(&mut s),
        };
        match res {
            Ok(()) => println!("{}: snapshot uploaded to {}", s.path.display(), s.ns),
            // One database: its error is the command's error (with its hint).
            Err(e) if total == 1 => return Err(e),
            Err(e) => {
                eprintln!("walsync: error: db={} {e}", s.path.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Error::other(format!(
            "{failed} database(s) failed to snapshot"
        )));
    }
    Ok(())
}

/// Take a snapshot in this process: claim the database, ship what is pending, snapshot,
/// release.
fn snapshot_here(s: &mut Shipper) -> Result<()> {
    s.claim()?;
    s.request_snapshot();
    s.step(true, true, true).map(|_| ())
}

/// SIGTERM, SIGINT and SIGHUP delivered to a channel by a small thread.
fn signal_channel() -> Result<crossbeam_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| Error::io("install signal handlers", "/", e))?;
    let (tx, rx) = crossbeam_channel::bounded(4);
    std::thread::Builder::new()
        .name("walsync-signal".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(s).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("spawn thread", "walsync-signal", e))?;
    Ok(rx)
}
