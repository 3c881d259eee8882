//! The `walsync` binary: parse the command line, start logging, dispatch, and turn an error into
//! one line (plus at most one `hint:` line) and an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use walsync::cli::{self, defs, Args, Cmd};
use walsync::config::{self, Config};
use walsync::error::{Error, Result};
use walsync::layout;
use walsync::prune;
use walsync::replicate::catalog;
use walsync::replicate::daemon::{self, Catalog, DaemonConfig, DbSpec};
use walsync::replicate::db::{DbOptions, Shipper};
use walsync::replicate::request;
use walsync::restore;
use walsync::storage::{self, Storage};
use walsync::time;

fn main() -> ExitCode {
    // SIGUSR1 is how `walsync snapshot` asks the daemon owning a database for a snapshot. Any
    // other walsync (a one-shot run holding the database, or a daemon not yet listening)
    // must not die of it: ignore it until the daemon installs its handler.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    // glibc gives each thread that allocates its own malloc arena (up to 8 per core), each
    // keeping freed memory of its own: with a pool of upload workers that is megabytes of RSS
    // for nothing. Two arenas serve a few threads doing short allocations.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    // rust-s3 (used for credentials only) must not add warnings of its own to walsync's.
    let level = if args.cmd == Cmd::Watch {
        "info,s3=error"
    } else {
        "warn,s3=error"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|buf, r| {
            use std::io::Write;
            writeln!(
                buf,
                "{} {:<5} {}",
                time::iso(time::now_ms()),
                r.level(),
                r.args()
            )
        })
        .init();
    let res = run(args);
    // For operators and the memory tests: what this run needed at most.
    if let Some(kb) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    {
        log::debug!("peak RSS {kb} KB");
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("walsync: error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("hint: {h}");
    }
    ExitCode::from(e.exit_code() as u8)
}

fn open_storage(
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> Result<(Arc<dyn Storage>, String)> {
    let url = storage::parse_url(bucket)?;
    let opts = storage::s3::S3Options {
        endpoint: endpoint.map(str::to_string),
        region: region.map(str::to_string),
    };
    storage::open(&url, &opts)
}

/// The replica and the config, from `-b` or from `--config` (whose endpoint `--endpoint`
/// overrides).
fn replica(a: &Args) -> Result<(Arc<dyn Storage>, String, Option<Config>)> {
    match (&a.config, &a.bucket) {
        (Some(f), _) => {
            let c = config::load(f)?;
            let bucket = a.bucket.clone().unwrap_or_else(|| c.bucket.clone());
            let endpoint = a.endpoint.clone().or_else(|| c.endpoint.clone());
            let (s, p) = open_storage(&bucket, endpoint.as_deref(), c.region.as_deref())?;
            Ok((s, p, Some(c)))
        }
        (None, Some(b)) => {
            let (s, p) = open_storage(b, a.endpoint.as_deref(), None)?;
            Ok((s, p, None))
        }
        (None, None) => unreachable!("validated: -b or --config"),
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

/// Take a snapshot in this process: claim the database, ship what is pending, snapshot,
/// release.
fn snapshot_here(s: &mut Shipper) -> Result<()> {
    s.claim()?;
    s.request_snapshot();
    s.step(true, true, true).map(|_| ())
}

fn print_restored(what: &str, out: &Path, r: &restore::Restored) {
    println!(
        "restored {what} to {}: {} + {} segment(s), {} frame(s); state as of {}",
        out.display(),
        r.snapshot,
        r.segments,
        r.frames,
        time::iso(r.restored_to)
    );
}

fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Help(None) => print!("{}", defs::main_help()),
        Cmd::Help(Some(c)) => print!(
            "{}",
            defs::command_help(defs::command(c).expect("known command"))
        ),
        Cmd::Version => println!("walsync {}", env!("CARGO_PKG_VERSION")),
        Cmd::GenerateMan => print!("{}", cli::man::render()),
        Cmd::Watch => {
            // A daemon (re)started during a blip of its storage waits a little for it; wrong
            // credentials or a missing bucket still fail at once.
            let mut attempt = 0;
            let (storage, prefix, cfg) = loop {
                match replica(&a) {
                    Err(e) if e.is_transient() && attempt < 5 => {
                        attempt += 1;
                        let wait = Duration::from_secs(1 << attempt);
                        log::warn!("{e}; trying again in {wait:?} (attempt {attempt} of 5)");
                        std::thread::sleep(wait);
                    }
                    r => break r?,
                }
            };
            let (shippers, catalog) = shippers(&a, &prefix, &storage, cfg.as_ref(), true)?;
            if shippers.is_empty() && cfg.as_ref().is_none_or(|c| c.dirs.is_empty()) {
                return Err(Error::other(
                    "no databases to watch (the config's dir entries match nothing)",
                ));
            }
            let signals = signal_channel()?;
            let workers = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4);
            let dcfg = DaemonConfig {
                workers,
                uploads: a.uploads,
                shutdown_deadline: Duration::from_secs(120),
            };
            daemon::run(shippers, catalog, storage, dcfg, signals)?;
        }
        Cmd::Snapshot => {
            let (storage, prefix, cfg) = replica(&a)?;
            let mut list = shippers(&a, &prefix, &storage, cfg.as_ref(), false)?.0;
            if cfg.is_some() && !a.positional.is_empty() {
                // Only the databases named, each of which the config must hold.
                let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
                let named: Vec<PathBuf> =
                    a.positional.iter().map(|p| canon(Path::new(p))).collect();
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
        }
        Cmd::Restore => {
            let (storage, prefix, _) = replica(&a)?;
            let name = a.prefix.clone().unwrap_or_else(|| a.positional[0].clone());
            let out = a.output.as_deref().expect("validated: -o is required");
            let r = restore::restore(
                storage.as_ref(),
                &layout::join(&prefix, &name),
                out,
                a.point_in_time,
                a.force,
            )?;
            print_restored(&name, out, &r);
        }
        Cmd::RestoreAll => {
            let (storage, prefix, cfg) = replica(&a)?;
            let cfg = cfg.expect("validated: --config is required");
            let dir = a
                .output_dir
                .as_deref()
                .expect("validated: --output-dir is required");
            // Every namespace of the config: path entries, and whatever the replica holds under
            // each dir entry's prefix (databases deleted since are restored too).
            let mut names: Vec<String> = cfg.databases.iter().map(|d| d.ns.clone()).collect();
            for d in &cfg.dirs {
                for s in restore::list(storage.as_ref(), &d.prefix)? {
                    names.push(s.ns);
                }
            }
            names.sort();
            names.dedup();
            let base = prefix.trim_matches('/').to_string();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .thread_name(|i| format!("walsync-restore/{i}"))
                .build()
                .map_err(|e| Error::other(format!("start restore threads: {e}")))?;
            let results: Vec<(String, PathBuf, Result<restore::Restored>)> = pool.install(|| {
                use rayon::prelude::*;
                names
                    .par_iter()
                    .map(|ns| {
                        let rel = ns
                            .strip_prefix(&format!("{base}/"))
                            .unwrap_or(ns)
                            .to_string();
                        let out = dir.join(format!("{rel}.db"));
                        if !layout::is_plain_relative(&rel) {
                            // Names come from storage: never write outside --output-dir.
                            let e = Error::other(format!(
                                "refusing to restore namespace '{ns}': its name is not a plain relative path"
                            ))
                            .with_hint("rename or remove those objects in the replica");
                            return (rel, out, Err(e));
                        }
                        let r = out
                            .parent()
                            .map_or(Ok(()), |p| {
                                std::fs::create_dir_all(p)
                                    .map_err(|e| Error::io("create directory", p, e))
                            })
                            .and_then(|_| {
                                restore::restore(
                                    storage.as_ref(),
                                    ns,
                                    &out,
                                    a.point_in_time,
                                    a.force,
                                )
                            });
                        (rel, out, r)
                    })
                    .collect()
            });
            let mut failed = 0;
            for (rel, out, r) in &results {
                match r {
                    Ok(r) => print_restored(rel, out, r),
                    Err(e) => {
                        failed += 1;
                        eprintln!("walsync: error: {rel}: {e}");
                    }
                }
            }
            if failed > 0 {
                return Err(Error::other(format!(
                    "{failed} of {} database(s) failed to restore",
                    results.len()
                )));
            }
        }
        Cmd::List => {
            let (storage, prefix, _) = replica(&a)?;
            let all = restore::list(storage.as_ref(), &prefix)?;
            if all.is_empty() {
                println!("no databases in {}", storage.describe());
            }
            for s in all {
                let gens = if s.segments == 0 {
                    "-".to_string()
                } else {
                    format!("{}..{}", s.generations.0, s.generations.1)
                };
                let latest = if s.latest == 0 {
                    "none".into()
                } else {
                    time::iso(s.latest)
                };
                let name = s.ns.strip_prefix(&format!("{prefix}/")).unwrap_or(&s.ns);
                println!(
                    "{name}\tsnapshots={} segments={} generations={gens} bytes={} latest_restorable={latest}",
                    s.snapshots.len(),
                    s.segments,
                    s.bytes
                );
                for (ts, size) in s.snapshots {
                    println!("  snapshot {} {size} bytes", time::iso(ts));
                }
            }
        }
        Cmd::Prune => {
            let (storage, prefix, cfg) = replica(&a)?;
            let targets: Vec<(String, String, Option<Duration>)> = match &cfg {
                Some(c) => c
                    .all_databases()?
                    .into_iter()
                    .map(|d| (d.prefix.clone(), d.ns, d.retention))
                    .collect(),
                None => vec![(
                    a.positional[0].clone(),
                    layout::join(&prefix, &a.positional[0]),
                    a.retention,
                )],
            };
            for (name, ns, keep) in targets {
                let Some(keep) = keep else {
                    println!("{name}: retention forever; nothing deleted");
                    continue;
                };
                let r = prune::prune(storage.as_ref(), &ns, keep, a.dry_run)?;
                let bytes: u64 = r.deleted.iter().map(|o| o.size).sum();
                if a.dry_run {
                    for o in &r.deleted {
                        println!("would delete {} ({} bytes)", o.key, o.size);
                    }
                }
                println!(
                    "{name}: {} {} object(s) ({bytes} bytes), kept {}; restorable from {}",
                    if a.dry_run { "would delete" } else { "deleted" },
                    r.deleted.len(),
                    r.kept,
                    r.oldest
                        .map_or_else(|| "the first snapshot".into(), time::iso)
                );
            }
        }
        Cmd::Verify => {
            let (storage, prefix, _) = replica(&a)?;
            let name = &a.positional[0];
            let v = restore::verify(storage.as_ref(), &layout::join(&prefix, name))?;
            println!(
                "{name}: {} object(s) verified ({} snapshot(s), {} segment(s)); chain continuous; latest {}",
                v.objects,
                v.snapshots,
                v.segments,
                time::iso(v.latest)
            );
        }
    }
    Ok(())
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
