//! `status`: how far behind each database is, read from the status files the running daemon
//! keeps in each database's spool directory (no port, no request to storage).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Args;
use crate::config::{self, DEFAULT_MAX_FAILING, DEFAULT_MAX_LAG};
use crate::error::{Error, Result};
use crate::replicate::catalog;
use crate::replicate::db::{process_is_walsync, spool_of};
use crate::replicate::status::{self, DbStatus};
use crate::time::Stamp;

/// One database's line: how bad (for the order and the exit code) and what to show.
struct Row {
    rank: u8,
    lag: f64,
    db: PathBuf,
    state: &'static str,
    st: Option<DbStatus>,
    running: bool,
}

impl Row {
    /// Where `db` stands at `now`, from its spool's status file.
    fn of(db: PathBuf, now: Stamp, max_lag: Duration, max_failing: Duration) -> Row {
        let st = status::read(&spool_of(&db));
        let running = st
            .as_ref()
            .is_some_and(|s| s.pid != 0 && process_is_walsync(s.pid));
        let lag = st.as_ref().map_or(0.0, |s| s.lag(now));
        let failing_for = st
            .as_ref()
            .and_then(|s| s.failing.as_ref())
            .map(|f| now.since(f.since).as_secs_f64());
        let (rank, state) = match (&st, running) {
            (None, _) => (4, "never shipped"),
            (Some(_), false) => (3, "no daemon"),
            _ if failing_for.is_some_and(|t| t > max_failing.as_secs_f64()) => (2, "failing"),
            _ if lag > max_lag.as_secs_f64() => (2, "behind"),
            _ if failing_for.is_some() => (1, "retrying"),
            _ => (0, "ok"),
        };
        Row {
            rank,
            lag,
            db,
            state,
            st,
            running,
        }
    }
}

pub fn status(a: &Args) -> Result<()> {
    let (paths, max_lag, max_failing) = match &a.config {
        Some(f) => {
            let c = config::load(f)?;
            let m = c.metrics.clone();
            let paths = catalog::specs_of(&c)?.into_iter().map(|s| s.path).collect();
            (
                paths,
                m.as_ref().map_or(DEFAULT_MAX_LAG, |m| m.max_lag),
                m.as_ref().map_or(DEFAULT_MAX_FAILING, |m| m.max_failing),
            )
        }
        None => {
            let mut paths = Vec::new();
            for p in &a.positional {
                let path = Path::new(p);
                paths.push(
                    std::fs::canonicalize(path).map_err(|e| Error::io("open database", path, e))?,
                );
            }
            (paths, DEFAULT_MAX_LAG, DEFAULT_MAX_FAILING)
        }
    };
    let now = Stamp::now();
    let mut rows: Vec<Row> = paths
        .into_iter()
        .map(|db| Row::of(db, now, max_lag, max_failing))
        .collect();
    rows.sort_by(|x, y| {
        (y.rank, y.lag)
            .partial_cmp(&(x.rank, x.lag))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| x.db.cmp(&y.db))
    });
    if a.json {
        for r in &rows {
            match &r.st {
                Some(s) => println!("{}", s.to_json(now, r.running)),
                None => println!(
                    "{{\"db\":{},\"running\":false,\"state\":\"never shipped\"}}",
                    status::json_str(&r.db.display().to_string())
                ),
            }
        }
    } else {
        print_table(&rows, now);
    }
    let bad = rows.iter().filter(|r| r.rank >= 2).count();
    if bad > 0 {
        return Err(Error::other(format!(
            "{bad} of {} database(s) not replicated as they should be",
            rows.len()
        ))
        .with_hint("see the STATE column; 'walsync watch' logs say why"));
    }
    Ok(())
}

fn print_table(rows: &[Row], now: Stamp) {
    println!(
        "{:<40} {:<13} {:>8} {:>8} {:>10} {:<20} ERROR",
        "DATABASE", "STATE", "LAG", "PENDING", "BYTES", "LAST UPLOAD"
    );
    for r in rows {
        let (lag, pending, bytes, last, err) = match &r.st {
            None => (
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                String::new(),
            ),
            Some(s) => (
                format!("{:.1}s", r.lag),
                s.pending_objects.to_string(),
                s.pending_bytes.to_string(),
                s.last_upload
                    .map_or_else(|| "none".into(), |t| format!("{} ago", ago(now, t))),
                s.failing.as_ref().map_or(String::new(), |f| {
                    format!("{} since {}: {}", f.class, ago(now, f.since), f.msg)
                }),
            ),
        };
        println!(
            "{:<40} {:<13} {lag:>8} {pending:>8} {bytes:>10} {last:<20} {err}",
            r.db.display(),
            r.state
        );
    }
}

/// `12s`, `3m`, `2h` before `now`.
fn ago(now: Stamp, then: Stamp) -> String {
    let s = now.since(then).as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}
