//! Shared test parts: temporary directories, the real `walsync` binary as a process, real
//! SQLite databases written with rusqlite, and a canonical content hash to compare databases.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
pub use walsync::time::Stamp;

pub const BIN: &str = env!("CARGO_BIN_EXE_walsync");

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A directory removed when the test passes (kept on failure for inspection).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = base.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A database of about `mb` MB for the benchmarks: table `t(id, v)` with `mb * 1000` rows of
/// 1,000 random bytes, written through `open_app`; returns the connection.
pub fn fill_mb(path: &Path, mb: u64) -> Connection {
    let c = open_app(path);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?1)
         INSERT INTO t(v) SELECT randomblob(1000) FROM n",
        [(mb * 1000) as i64],
    )
    .unwrap();
    c
}

/// Open (creating) a database in WAL mode the way an application would.
pub fn open_app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    c
}

/// A canonical hash of a database's schema and every row of every table, in rowid order.
pub fn content_hash(path: &Path) -> String {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut h = Sha256::new();
    let mut tables: Vec<(String, String)> = c
        .prepare("SELECT name, coalesce(sql,'') FROM sqlite_schema WHERE type IN ('table','index','view') AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    for (name, sql) in &tables {
        h.update(sql.as_bytes());
        h.update(b"\0");
        if !sql.starts_with("CREATE TABLE") {
            continue;
        }
        let mut stmt = c
            .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                match r.get_ref(i).unwrap() {
                    ValueRef::Null => h.update(b"N"),
                    ValueRef::Integer(v) => h.update(format!("I{v}")),
                    ValueRef::Real(v) => h.update(format!("R{v}")),
                    ValueRef::Text(t) => {
                        h.update(b"T");
                        h.update(t)
                    }
                    ValueRef::Blob(b) => {
                        h.update(b"B");
                        h.update(b)
                    }
                }
                h.update(b"|");
            }
            h.update(b"\n");
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn integrity_ok(path: &Path) {
    let c = Connection::open(path).unwrap();
    let r: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(r, "ok", "integrity_check of {}", path.display());
}

/// A running `walsync watch`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(dbs: &[&Path], replica: &Replica, extra: &[&str], log: &Path) -> Daemon {
        let mut args: Vec<String> = vec!["watch".into()];
        args.extend(dbs.iter().map(|d| d.display().to_string()));
        args.push("-b".into());
        args.push(replica.url());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Daemon::start_args(&args, log)
    }

    /// Start `walsync ARGS` (a `watch`), logging at debug level to `log`; returns once it
    /// says it is watching.
    pub fn start_args(args: &[&str], log: &Path) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Daemon::spawn(cmd, log)
    }

    /// Start a prepared `walsync watch` command (or a wrapper of it), logging to `log` (at
    /// debug level unless the command sets RUST_LOG); returns once it says it is watching.
    pub fn spawn(mut cmd: Command, log: &Path) -> Daemon {
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "walsync=debug");
        }
        let child = cmd.stdout(Stdio::null()).stderr(logf).spawn().unwrap();
        let d = Daemon {
            child,
            log: log.to_path_buf(),
        };
        d.wait_log("watching", Duration::from_secs(10));
        d
    }

    /// Send a signal (`"HUP"`, `"USR1"` ...).
    pub fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether walsync's last word, apart from uploads finishing (which may come after the
    /// step that let the database go), is that it released its databases.
    pub fn released(&self) -> bool {
        self.log_text()
            .lines()
            .rev()
            .find(|l| !l.contains(" uploaded "))
            .is_some_and(|l| l.ends_with("released"))
    }

    /// Wait until walsync let `db` go and `walsync status` reports nothing waiting for it:
    /// everything captured is shipped and walsync holds no read lock.
    pub fn wait_idle(&self, db: &Path) {
        wait_until("walsync idle", Duration::from_secs(30), || {
            self.released() && {
                let o = walsync(&["status", db.to_str().unwrap(), "--json"]);
                let s = String::from_utf8_lossy(&o.stdout);
                s.contains("\"running\":true") && s.contains("\"pending_objects\":0,")
            }
        });
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log never said {needle:?}:\n{}", self.log_text());
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "walsync exited with {st}:\n{}",
                    self.log_text()
                );
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "walsync did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn walsync(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

pub fn restore(replica: &Replica, name: &str, out: &Path, pit: Option<&str>) -> Output {
    let url = replica.url();
    let mut args = vec![
        "restore",
        name,
        "-o",
        out.to_str().unwrap(),
        "-b",
        &url,
        "-f",
    ];
    if let Some(t) = pit {
        args.extend(["--point-in-time", t]);
    }
    walsync(&args)
}

/// Restore the latest state of `name` into `out`: it passes integrity_check and equals `src`.
pub fn assert_restores_equal(replica: &Replica, name: &str, src: &Path, out: &Path) {
    restore_ok(replica, name, out, None);
    integrity_ok(out);
    assert_eq!(
        content_hash(out),
        content_hash(src),
        "restored {name} differs from the source"
    );
}

pub fn restore_ok(replica: &Replica, name: &str, out: &Path, pit: Option<&str>) {
    let o = restore(replica, name, out, pit);
    assert!(
        o.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Which backend a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// A replica for one test: a directory of its own, or a prefix of its own in the test bucket.
pub struct Replica {
    pub url: String,
    pub dir: Option<PathBuf>,
}

static S3_ENV: OnceLock<Result<(), String>> = OnceLock::new();

/// Start (or reuse) the test suite's real S3 server, Garage on 127.0.0.1:3900, through the
/// project's own script, and export its AWS_* settings to this process (and so to walsync).
pub fn ensure_s3() {
    let r = S3_ENV.get_or_init(|| {
        if std::env::var("WALSYNC_TEST_S3_EXTERNAL").is_ok() {
            // A server the developer started (AWS_* and S3_BUCKET already exported).
            return Ok(());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/garage.sh");
        let port = std::env::var("WALSYNC_TEST_S3_PORT").unwrap_or_else(|_| "3900".into());
        let out = Command::new(&script)
            .args(["start", &port])
            .stderr(Stdio::inherit())
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                return Err(format!(
                    "{} start {port} failed ({})",
                    script.display(),
                    o.status
                ))
            }
            Err(e) => return Err(format!("cannot run {}: {e}", script.display())),
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                // Set once, before any S3 test reads the environment.
                unsafe { std::env::set_var(k, v) };
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("the S3 tests need a real S3 server: {e}\nrun 'tests/s3/garage.sh install' (builds Garage once, ~13 min) and try again");
    }
}

impl Replica {
    pub fn new(t: &TestDir, backend: Backend) -> Replica {
        match backend {
            Backend::Local => {
                let dir = t.join("replica");
                Replica {
                    url: dir.display().to_string(),
                    dir: Some(dir),
                }
            }
            Backend::S3 => {
                ensure_s3();
                let bucket = std::env::var("S3_BUCKET").unwrap_or_else(|_| "walsync-test".into());
                let name = t.path.file_name().unwrap().to_string_lossy().into_owned();
                Replica {
                    url: format!("s3://{bucket}/{name}"),
                    dir: None,
                }
            }
        }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn storage(&self) -> (std::sync::Arc<dyn walsync::storage::Storage>, String) {
        let url = walsync::storage::parse_url(&self.url).unwrap();
        walsync::storage::open(&url, &Default::default()).unwrap()
    }

    /// Keys of one kind ("snapshots" or "wal") of a database, sorted.
    pub fn objects(&self, name: &str, kind: &str) -> Vec<String> {
        let (st, prefix) = self.storage();
        let p = walsync::layout::join(&prefix, &format!("{name}/{kind}/"));
        let mut keys = Vec::new();
        st.list(&p, &mut |e| keys.push(e.key)).unwrap();
        keys.sort();
        keys
    }

    /// Copy one object's bytes to a file.
    pub fn fetch(&self, key: &str, to: &Path) {
        let (st, _) = self.storage();
        let mut body = st.get(key).unwrap();
        let mut f = fs::File::create(to).unwrap();
        std::io::copy(&mut body.reader, &mut f).unwrap();
    }
}

/// Run a scenario against both backends: `both!(name, scenario_fn);`
#[macro_export]
macro_rules! both {
    ($name:ident, $f:path) => {
        mod $name {
            #[test]
            fn local() {
                $f($crate::harness::Backend::Local)
            }
            #[test]
            fn s3() {
                $f($crate::harness::Backend::S3)
            }
        }
    };
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// A deterministic pseudo-random generator (xorshift), so failures replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Wait until `f` is true.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Peak RSS (VmHWM) of a running process, in KB; 0 once it is gone.
pub fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until the replica restores `name` to the source's current state; return that state
/// and the time it was reached: a point in time that must restore to it.
pub fn wait_shipped(replica: &Replica, name: &str, src: &Path, scratch: &Path) -> (String, Stamp) {
    let want = content_hash(src);
    wait_until(
        "the source's state restorable",
        Duration::from_secs(60),
        || {
            let _ = fs::remove_file(scratch);
            restore(replica, name, scratch, None).status.success() && content_hash(scratch) == want
        },
    );
    let at = Stamp::now();
    // The next commit's segment gets a later timestamp.
    std::thread::sleep(Duration::from_millis(3));
    (want, at)
}

/// The size of a database's `-wal` (0 when there is none).
pub fn wal_len(db: &Path) -> u64 {
    let mut w = db.as_os_str().to_owned();
    w.push("-wal");
    fs::metadata(PathBuf::from(w)).map(|m| m.len()).unwrap_or(0)
}

/// The README's manual recovery with the `sqlite3` CLI alone: copy the latest snapshot to
/// `out`, then for each later segment in key order save it as `<out>-wal` and run
/// `PRAGMA wal_checkpoint(TRUNCATE)`; each must apply whole. Ends with an integrity check.
/// `sqlite3 DB SQL`: the system CLI as a one-shot writer (open, write, close: the last close
/// checkpoints the WAL into the database file and deletes it), as cron jobs and scripts write.
pub fn sqlite3_cli(db: &Path, sql: &str) {
    let o = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(o.status.success(), "sqlite3 {sql}: {}", stderr(&o));
}

pub fn manual_restore(replica: &Replica, name: &str, out: &Path) {
    let stem = |k: &str| {
        let file = k.rsplit('/').next().unwrap();
        file.split('.').next().unwrap().to_string()
    };
    let sqlite3 = |sql: &str| {
        let o = Command::new("sqlite3").arg(out).arg(sql).output().unwrap();
        assert!(o.status.success(), "sqlite3 {sql}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let snap = replica
        .objects(name, "snapshots")
        .pop()
        .expect("a snapshot");
    let _ = fs::remove_file(out);
    replica.fetch(&snap, out);
    let snap_ts = stem(&snap);
    let mut wal = out.as_os_str().to_owned();
    wal.push("-wal");
    for s in replica.objects(name, "wal") {
        let seg = stem(&s);
        if seg.split('-').nth(1).unwrap() <= snap_ts.as_str() {
            continue;
        }
        if s.ends_with(".lz4") {
            // A compressed segment: `lz4 -d` gives the WAL file (README, manual recovery).
            let z = out.with_extension("wal.lz4");
            replica.fetch(&s, &z);
            let o = Command::new("lz4")
                .args(["-d", "-f", "-q"])
                .arg(&z)
                .arg(&wal)
                .output()
                .unwrap();
            assert!(o.status.success(), "lz4 -d {s}: {}", stderr(&o));
        } else {
            replica.fetch(&s, Path::new(&wal));
        }
        assert_eq!(
            sqlite3("PRAGMA wal_checkpoint(TRUNCATE);"),
            "0|0|0",
            "segment {seg} applied"
        );
    }
    assert_eq!(sqlite3("PRAGMA integrity_check;"), "ok");
}

/// The real S3 server's address (once `ensure_s3` ran), for a proxy to stand in front of it.
pub fn s3_upstream() -> std::net::SocketAddr {
    std::env::var("AWS_ENDPOINT_URL_S3")
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// A benchmark's numeric setting from the environment.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
