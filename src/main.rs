//! The `walsync` binary: parse the command line, start logging, dispatch, and turn an error into
//! one line (plus at most one `hint:` line) and an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use walsync::cli::{self, defs, Args, Cmd};
use walsync::error::{Error, Result};
use walsync::layout;
use walsync::replicate::daemon::{self, DaemonConfig};
use walsync::replicate::db::{DbOptions, Shipper};
use walsync::restore;
use walsync::storage::{self, Storage};
use walsync::time;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    // rust-s3 logs its own retries as warnings; walsync reports failures itself.
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
    match run(args) {
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

fn open_storage(a: &Args) -> Result<(Arc<dyn Storage>, String)> {
    let url = storage::parse_url(a.bucket.as_deref().expect("validated: -b is required"))?;
    let opts = storage::s3::S3Options {
        endpoint: a.endpoint.clone(),
        region: None,
    };
    storage::open(&url, &opts)
}

/// Absolute paths of the databases named on the command line, with their namespaces.
fn databases(a: &Args, prefix: &str, storage: &Arc<dyn Storage>) -> Result<Vec<Shipper>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in &a.positional {
        let path = Path::new(p);
        let abs = std::fs::canonicalize(path).map_err(|e| Error::io("open database", path, e))?;
        if paths.contains(&abs) {
            return Err(Error::usage(format!(
                "database {} is given twice",
                abs.display()
            )));
        }
        paths.push(abs);
    }
    let names = layout::unique_names(&paths);
    let mut out = Vec::new();
    for (p, n) in paths.iter().zip(names) {
        let s = Shipper::new(
            p,
            layout::join(prefix, &n),
            Arc::clone(storage),
            DbOptions::default(),
        );
        s.check_source()?;
        out.push(s);
    }
    Ok(out)
}

fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Help(None) => print!("{}", defs::main_help()),
        Cmd::Help(Some(c)) => print!(
            "{}",
            defs::command_help(defs::command(c).expect("known command"))
        ),
        Cmd::Version => println!("walsync {}", env!("CARGO_PKG_VERSION")),
        Cmd::Watch => {
            let (storage, prefix) = open_storage(&a)?;
            let shippers = databases(&a, &prefix, &storage)?;
            let signals = signal_channel()?;
            let workers = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4);
            daemon::run(
                shippers,
                DaemonConfig {
                    sync_interval: a.sync_interval,
                    snapshot_interval: a.snapshot_interval,
                    workers,
                    shutdown_deadline: Duration::from_secs(30),
                },
                signals,
            )?;
        }
        Cmd::Snapshot => {
            let (storage, prefix) = open_storage(&a)?;
            let mut failed = 0;
            for mut s in databases(&a, &prefix, &storage)? {
                s.request_snapshot();
                match s.step(true, true) {
                    Ok(_) => println!("{}: snapshot uploaded to {}", s.path.display(), s.ns),
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
            let (storage, prefix) = open_storage(&a)?;
            let name = &a.positional[0];
            let out = a.output.as_deref().expect("validated: -o is required");
            let r = restore::restore(
                storage.as_ref(),
                &layout::join(&prefix, name),
                out,
                a.point_in_time,
                a.force,
            )?;
            println!(
                "restored {name} to {}: {} + {} segment(s), {} frame(s); state as of {}",
                out.display(),
                r.snapshot,
                r.segments,
                r.frames,
                time::iso(r.restored_to)
            );
        }
        Cmd::List => {
            let (storage, prefix) = open_storage(&a)?;
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
        Cmd::Verify => {
            let (storage, prefix) = open_storage(&a)?;
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
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::io("install signal handlers", "/", e))?;
    let (tx, rx) = crossbeam_channel::bounded(4);
    std::thread::Builder::new()
        .name("walsync-signal".into())
        .spawn(move || {
            for s in signals.forever() {
                if s == SIGHUP {
                    log::info!("SIGHUP: nothing to reload without a config file");
                    continue;
                }
                if tx.send(s).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("spawn thread", "walsync-signal", e))?;
    Ok(rx)
}
