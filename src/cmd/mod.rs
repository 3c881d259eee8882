//! The commands: each takes the parsed arguments, does its work, prints its result on
//! stdout and returns the error `main` turns into one line (plus at most one `hint:` line) and
//! an exit code.

mod replicas;
mod restore;
mod status;
mod watch;

use std::ffi::OsString;

use crate::cli::{self, defs, Args, Cmd};
use crate::error::{Error, Result};
use crate::time;

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Help(None) => print!("{}", defs::main_help()),
        Cmd::Help(Some(c)) => print!(
            "{}",
            defs::command_help(defs::command(c).expect("known command"))
        ),
        Cmd::Version => println!("walsync {}", env!("CARGO_PKG_VERSION")),
        Cmd::GenerateMan => print!("{}", cli::man::render()),
        Cmd::Watch => watch::watch(&a)?,
        Cmd::Snapshot => watch::snapshot(&a)?,
        Cmd::Restore => restore::restore(&a)?,
        Cmd::RestoreAll => restore::restore_all(&a)?,
        Cmd::List => replicas::list(&a)?,
        Cmd::Prune => replicas::prune(&a)?,
        Cmd::Verify => replicas::verify(&a)?,
        Cmd::Status => status::status(&a)?,
    }
    Ok(())
}

/// The whole command line: `args` without the program name; returns the exit code. The
/// `walsync` binary is this function.
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    main_classified(args).0
}

/// `main`, also returning the class of the error (`Error::class`) it printed, if any: the
/// Python bindings' `python -m walsync` raises the matching exception from it.
pub fn main_classified(args: impl IntoIterator<Item = OsString>) -> (u8, Option<&'static str>) {
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
    let args = match cli::parse(args) {
        Ok(a) => a,
        Err(e) => return (fail(&e), Some(e.class())),
    };
    let level = if args.cmd == Cmd::Watch {
        "info"
    } else {
        "warn"
    };
    // try_init: in a process that already has a logger (an embedding), keep that one.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|buf, r| {
            use std::io::Write;
            writeln!(buf, "{} {:<5} {}", time::Stamp::now(), r.level(), r.args())
        })
        .try_init();
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
        Ok(()) => (0, None),
        Err(e) => (fail(&e), Some(e.class())),
    }
}

fn fail(e: &Error) -> u8 {
    eprintln!("walsync: error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("hint: {h}");
    }
    e.exit_code() as u8
}
