//! What every database's replication looks like now: the daemon keeps a `DbStatus` per
//! database, writes it to `<spool>/status` when it changed (at most once a second per
//! database, nothing while idle), and serves the same figures on the optional metrics
//! endpoint (`/metrics` in the Prometheus text format, `/healthz` for health checks).
//! `walsync status` reads the files, so it needs no port and works from any user that can
//! read the spool, and says so when no daemon owns a database.
//!
//! Lag is the age of the oldest commit walsync captured that storage does not hold yet (the
//! oldest object waiting in the spool); 0 when all is shipped. A database that cannot be
//! captured shows as failing instead.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};

use crate::error::{Error, Result};
use crate::time::Stamp;

/// The status file's name in a database's spool directory.
pub const FILE: &str = "status";

/// A failure still current: its class (`Error::class`), its message, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub class: String,
    pub msg: String,
    pub since: Stamp,
}

/// One database's replication, as of `updated`. In the file form a time is its milliseconds
/// since the epoch, 0 for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStatus {
    pub db: PathBuf,
    pub ns: String,
    pub pid: u32,
    pub updated: Stamp,
    pub generation: u32,
    /// When the last new commit was captured (none since the start: `None`).
    pub last_commit: Option<Stamp>,
    /// When the last object was uploaded, and its key.
    pub last_upload: Option<Stamp>,
    pub last_key: String,
    /// The oldest commit seen and not yet in storage (`None`: everything is shipped).
    pub oldest_unshipped: Option<Stamp>,
    pub pending_objects: usize,
    pub pending_bytes: u64,
    pub snapshots: u64,
    pub segments: u64,
    pub bytes_up: u64,
    /// Failed attempts (steps and uploads) since the start.
    pub retries: u64,
    pub failing: Option<Failing>,
}

impl DbStatus {
    /// Seconds behind at `now`.
    pub fn lag(&self, now: Stamp) -> f64 {
        self.oldest_unshipped
            .map_or(0.0, |t| now.since(t).as_secs_f64())
    }

    /// The file form: one `key=value` per line (values never hold a newline).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: &dyn std::fmt::Display| {
            let v = v.to_string().replace(['\n', '\r'], " ");
            let _ = writeln!(s, "{k}={v}");
        };
        kv("db", &self.db.display());
        kv("ns", &self.ns);
        kv("pid", &self.pid);
        let ms = |t: Option<Stamp>| t.map_or(0, Stamp::ms);
        kv("updated", &self.updated.ms());
        kv("generation", &self.generation);
        kv("last_commit", &ms(self.last_commit));
        kv("last_upload", &ms(self.last_upload));
        kv("last_key", &self.last_key);
        kv("oldest_unshipped", &ms(self.oldest_unshipped));
        kv("pending_objects", &self.pending_objects);
        kv("pending_bytes", &self.pending_bytes);
        kv("snapshots", &self.snapshots);
        kv("segments", &self.segments);
        kv("bytes_up", &self.bytes_up);
        kv("retries", &self.retries);
        if let Some(f) = &self.failing {
            kv("error_class", &f.class);
            kv("error_since", &f.since.ms());
            kv("error", &f.msg);
        }
        s
    }

    /// Parse the file form; unknown keys are skipped (a newer walsync may add some).
    pub fn parse(text: &str) -> Option<DbStatus> {
        let mut s = DbStatus::default();
        let (mut class, mut since, mut msg) = (None, Stamp::default(), String::new());
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            let n = || v.parse::<u64>().ok();
            let t = || n().map(|ms| Some(Stamp::from_ms(ms)).filter(|_| ms != 0));
            match k {
                "db" => s.db = PathBuf::from(v),
                "ns" => s.ns = v.to_string(),
                "pid" => s.pid = v.parse().ok()?,
                "updated" => s.updated = Stamp::from_ms(n()?),
                "generation" => s.generation = v.parse().ok()?,
                "last_commit" => s.last_commit = t()?,
                "last_upload" => s.last_upload = t()?,
                "last_key" => s.last_key = v.to_string(),
                "oldest_unshipped" => s.oldest_unshipped = t()?,
                "pending_objects" => s.pending_objects = v.parse().ok()?,
                "pending_bytes" => s.pending_bytes = n()?,
                "snapshots" => s.snapshots = n()?,
                "segments" => s.segments = n()?,
                "bytes_up" => s.bytes_up = n()?,
                "retries" => s.retries = n()?,
                "error_class" => class = Some(v.to_string()),
                "error_since" => since = Stamp::from_ms(n()?),
                "error" => msg = v.to_string(),
                _ => {}
            }
        }
        s.failing = class.map(|class| Failing { class, msg, since });
        Some(s)
    }

    /// One JSON object (for `walsync status --json`), with the lag at `now` and whether a
    /// daemon runs.
    pub fn to_json(&self, now: Stamp, running: bool) -> String {
        let f = self.failing.as_ref();
        format!(
            "{{\"db\":{},\"namespace\":{},\"running\":{running},\"pid\":{},\"updated\":{},\"lag_seconds\":{:.3},\"generation\":{},\"last_commit\":{},\"last_upload\":{},\"last_key\":{},\"pending_objects\":{},\"pending_bytes\":{},\"snapshots\":{},\"segments\":{},\"bytes_up\":{},\"retries\":{},\"error_class\":{},\"error\":{},\"error_since\":{}}}",
            json_str(&self.db.display().to_string()),
            json_str(&self.ns),
            self.pid,
            json_time(Some(self.updated)),
            self.lag(now),
            self.generation,
            json_time(self.last_commit),
            json_time(self.last_upload),
            json_str(&self.last_key),
            self.pending_objects,
            self.pending_bytes,
            self.snapshots,
            self.segments,
            self.bytes_up,
            self.retries,
            f.map_or("null".into(), |f| json_str(&f.class)),
            f.map_or("null".into(), |f| json_str(&f.msg)),
            f.map_or("null".into(), |f| json_time(Some(f.since))),
        )
    }
}

/// Write a database's status file (whole or not at all: a temporary file renamed over it).
pub fn write(spool: &Path, s: &DbStatus) -> Result<()> {
    let path = spool.join(FILE);
    let tmp = spool.join(format!("{FILE}.tmp"));
    fs::write(&tmp, s.to_text()).map_err(|e| Error::io("write status file", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io("write status file", &path, e))
}

/// Read a database's status file; `None` when there is none (no daemon ever shipped it).
pub fn read(spool: &Path) -> Option<DbStatus> {
    DbStatus::parse(&fs::read_to_string(spool.join(FILE)).ok()?)
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A time as a JSON string (ISO 8601), or `null`.
pub fn json_time(t: Option<Stamp>) -> String {
    t.map_or_else(|| "null".into(), |t| json_str(&t.iso()))
}

/// When a database counts as unhealthy (`/healthz`).
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// Lag beyond this.
    pub max_lag: Duration,
    /// Failing for longer than this.
    pub max_failing: Duration,
}

/// `Ok(line)` when every database is healthy, else `Err(line)` naming the worst one.
pub fn health(all: &[DbStatus], now: Stamp, h: Health) -> std::result::Result<String, String> {
    let mut bad: Vec<(f64, String)> = Vec::new();
    for s in all {
        let lag = s.lag(now);
        if lag > h.max_lag.as_secs_f64() {
            bad.push((
                lag,
                format!(
                    "{} lags {lag:.0} s (limit {} s)",
                    s.db.display(),
                    h.max_lag.as_secs()
                ),
            ));
        }
        if let Some(f) = &s.failing {
            let for_s = now.since(f.since).as_secs_f64();
            if for_s > h.max_failing.as_secs_f64() {
                bad.push((
                    for_s,
                    format!(
                        "{} failing for {for_s:.0} s ({}): {}",
                        s.db.display(),
                        f.class,
                        f.msg
                    ),
                ));
            }
        }
    }
    bad.sort_by(|a, b| b.0.total_cmp(&a.0));
    match bad.first() {
        None => Ok(format!("ok: {} database(s) replicated", all.len())),
        Some((_, why)) if bad.len() == 1 => Err(why.clone()),
        Some((_, why)) => Err(format!("{why} (and {} more)", bad.len() - 1)),
    }
}

/// A metric label value, escaped as the text format wants.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric per database: name, type, help text and its value (given the time now).
type Get = fn(&DbStatus, Stamp) -> f64;

/// The per-database metrics of `exposition`.
const PER_DB: [(&str, &str, &str, Get); 10] = [
    (
        "walsync_replication_lag_seconds",
        "gauge",
        "Age of the oldest commit seen but not yet in storage (0 when all is shipped).",
        |s, now| s.lag(now),
    ),
    (
        "walsync_pending_objects",
        "gauge",
        "Objects waiting in the spool for upload.",
        |s, _| s.pending_objects as f64,
    ),
    (
        "walsync_pending_bytes",
        "gauge",
        "Bytes waiting in the spool for upload.",
        |s, _| s.pending_bytes as f64,
    ),
    (
        "walsync_uploaded_bytes_total",
        "counter",
        "Bytes uploaded since the daemon started.",
        |s, _| s.bytes_up as f64,
    ),
    (
        "walsync_snapshots_total",
        "counter",
        "Snapshots uploaded since the daemon started.",
        |s, _| s.snapshots as f64,
    ),
    (
        "walsync_segments_total",
        "counter",
        "WAL segments uploaded since the daemon started.",
        |s, _| s.segments as f64,
    ),
    (
        "walsync_retries_total",
        "counter",
        "Failed attempts (steps and uploads) since the daemon started.",
        |s, _| s.retries as f64,
    ),
    (
        "walsync_last_upload_timestamp_seconds",
        "gauge",
        "When the last object was uploaded (0: none since the start).",
        |s, _| s.last_upload.map_or(0.0, Stamp::secs_f64),
    ),
    (
        "walsync_generation",
        "gauge",
        "The database's current generation in the replica.",
        |s, _| s.generation as f64,
    ),
    (
        "walsync_failing",
        "gauge",
        "1 while the database's replication fails (see walsync_failing_since_seconds).",
        |s, _| f64::from(u8::from(s.failing.is_some())),
    ),
];

/// The Prometheus text exposition of every database's figures, with `db` labels (one series
/// per database and metric: the cardinality is the number of databases).
pub fn exposition(all: &[DbStatus], now: Stamp, rss_bytes: u64) -> String {
    let mut o = String::new();
    for (name, kind, help, get) in PER_DB {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in all {
            let _ = writeln!(
                o,
                "{name}{{db=\"{}\"}} {}",
                label(&s.db.display().to_string()),
                get(s, now)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP walsync_failing_since_seconds When the current failure began, by error class.\n# TYPE walsync_failing_since_seconds gauge"
    );
    for s in all {
        if let Some(f) = &s.failing {
            let _ = writeln!(
                o,
                "walsync_failing_since_seconds{{db=\"{}\",class=\"{}\"}} {}",
                label(&s.db.display().to_string()),
                label(&f.class),
                f.since.secs_f64()
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP walsync_errors_total Failed attempts (steps and uploads) since the start, by error class.\n# TYPE walsync_errors_total counter"
    );
    for (class, n) in ERRORS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(o, "walsync_errors_total{{class=\"{class}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP walsync_requests_total Requests to storage since the start, by type.\n# TYPE walsync_requests_total counter"
    );
    for (t, n) in crate::storage::REQUEST_TYPES
        .iter()
        .zip(crate::storage::requests())
    {
        let _ = writeln!(o, "walsync_requests_total{{type=\"{t}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP walsync_databases Databases replicated.\n# TYPE walsync_databases gauge\nwalsync_databases {}",
        all.len()
    );
    let _ = writeln!(
        o,
        "# HELP walsync_resident_memory_bytes Resident memory of the daemon.\n# TYPE walsync_resident_memory_bytes gauge\nwalsync_resident_memory_bytes {rss_bytes}"
    );
    o
}

/// Failures (steps and uploads) since the start, by `Error::class`.
static ERRORS: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Count one failure of `class`.
pub fn count_error(class: &'static str) {
    let mut e = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    match e.iter_mut().find(|(c, _)| *c == class) {
        Some((_, n)) => *n += 1,
        None => e.push((class, 1)),
    }
}

/// The daemon's figures, shared with the metrics thread: one entry per database slot (`None`
/// for a slot let go).
pub type Board = Arc<Mutex<Vec<Option<DbStatus>>>>;

/// Serve `/metrics` and `/healthz` on `addr` from one blocking thread (`walsync-metrics`).
/// It costs nothing while nobody asks: it sleeps in `accept`.
pub fn serve(addr: &str, board: Board, h: Health) -> Result<()> {
    let l = TcpListener::bind(addr).map_err(|e| {
        Error::other(format!("metrics: cannot listen on {addr}: {e}"))
            .with_hint("set [metrics] addr to a free host:port, e.g. 127.0.0.1:9090")
    })?;
    info!("metrics on http://{addr}/metrics, health check on /healthz");
    std::thread::Builder::new()
        .name("walsync-metrics".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(c) = conn else { continue };
                if let Err(e) = answer(c, &board, h) {
                    warn!("metrics: {e}");
                }
            }
        })
        .map_err(|e| Error::io("spawn thread", "walsync-metrics", e))?;
    Ok(())
}

fn answer(c: TcpStream, board: &Board, h: Health) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.by_ref().take(8192).read_line(&mut line)?;
    // The rest of the head, bounded; the answer does not depend on it.
    let mut rest = String::new();
    while r.by_ref().take(8192).read_line(&mut rest)? > 2 {
        rest.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let all: Vec<DbStatus> = board
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flatten()
        .cloned()
        .collect();
    let now = Stamp::now();
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            exposition(&all, now, rss_bytes()),
        ),
        "/healthz" => match health(&all, now, h) {
            Ok(l) => ("200 OK", "text/plain; charset=utf-8", l + "\n"),
            Err(l) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                l + "\n",
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".into(),
        ),
    };
    let mut w = c;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

/// This process's resident memory (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Stamp {
        Stamp::from_ms(ms)
    }

    fn sample() -> DbStatus {
        DbStatus {
            db: "/srv/a b.db".into(),
            ns: "app/a b".into(),
            pid: 42,
            updated: at(1_000_000),
            generation: 3,
            last_commit: Some(at(999_000)),
            last_upload: Some(at(998_000)),
            last_key: "app/a b/wal/00000003-1.wal".into(),
            oldest_unshipped: Some(at(990_000)),
            pending_objects: 2,
            pending_bytes: 8_240,
            snapshots: 1,
            segments: 40,
            bytes_up: 123_456,
            retries: 7,
            failing: Some(Failing {
                class: "storage_unavailable".into(),
                msg: "connect to s3: refused\nsecond line".into(),
                since: at(995_000),
            }),
        }
    }

    #[test]
    fn file_round_trip() {
        let s = sample();
        let back = DbStatus::parse(&s.to_text()).unwrap();
        let mut want = s.clone();
        want.failing.as_mut().unwrap().msg = "connect to s3: refused second line".into();
        assert_eq!(back, want);
        assert_eq!(back.lag(at(1_000_000)), 10.0);
        let idle = DbStatus {
            failing: None,
            oldest_unshipped: None,
            ..s
        };
        assert_eq!(DbStatus::parse(&idle.to_text()).unwrap(), idle);
        assert_eq!(idle.lag(at(5_000_000)), 0.0);
        assert_eq!(DbStatus::parse("no equals sign"), None);
    }

    #[test]
    fn health_names_the_worst() {
        let h = Health {
            max_lag: Duration::from_secs(60),
            max_failing: Duration::from_secs(60),
        };
        let ok = DbStatus {
            failing: None,
            oldest_unshipped: None,
            ..sample()
        };
        assert_eq!(
            health(std::slice::from_ref(&ok), at(1_000_000), h),
            Ok("ok: 1 database(s) replicated".into())
        );
        let lagging = DbStatus {
            db: "/srv/b.db".into(),
            oldest_unshipped: Some(at(900_000)),
            ..ok.clone()
        };
        assert_eq!(
            health(&[ok.clone(), lagging.clone()], at(1_000_000), h),
            Err("/srv/b.db lags 100 s (limit 60 s)".into())
        );
        let failing = DbStatus {
            db: "/srv/c.db".into(),
            failing: Some(Failing {
                class: "storage_refused".into(),
                msg: "access denied".into(),
                since: at(800_000),
            }),
            ..ok
        };
        assert_eq!(
            health(&[lagging, failing], at(1_000_000), h),
            Err("/srv/c.db failing for 200 s (storage_refused): access denied (and 1 more)".into())
        );
    }

    #[test]
    fn exposition_has_a_series_per_database() {
        let text = exposition(&[sample()], at(1_000_000), 5 << 20);
        assert!(text.contains("walsync_replication_lag_seconds{db=\"/srv/a b.db\"} 10\n"));
        assert!(text.contains(
            "walsync_failing_since_seconds{db=\"/srv/a b.db\",class=\"storage_unavailable\"} 995\n"
        ));
        assert!(text.contains("walsync_resident_memory_bytes 5242880\n"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
