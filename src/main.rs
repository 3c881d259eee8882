//! The `walsync` binary: parse the command line, start logging, dispatch, and turn an error into
//! one line (plus at most one `hint:` line) and an exit code.

mod cmd;

use std::process::ExitCode;

use walsync::cli::{self, Cmd};
use walsync::error::Error;
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
    let res = cmd::run(args);
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
