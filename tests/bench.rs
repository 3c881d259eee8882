//! The benchmark behind the README's figures (SPEC section 5). Not part of the normal suite:
//!
//! ```sh
//! cargo test --release --test tests bench -- --ignored --nocapture
//! ```
//!
//! For 1, 10, 100 and 1,000 databases (`BENCH_SIZES=1,10,100,1000`) it starts the real
//! `walsync watch` on a local replica and prints one table row per size: peak RSS (VmHWM) and
//! file descriptors once idle, CPU ticks over an idle window (`BENCH_IDLE_SECS`, default 60),
//! peak RSS under a steady write load, objects written per database per hour idle and under
//! load; then replication lag from commit to object present, p50/p99, at `--sync-interval 0`
//! and at the default 1 s. With `litestream` on PATH it measures the same rows for Litestream.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::harness::*;

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p.to_string_lossy().ends_with(".meta") {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Databases as a long-running application leaves them: WAL mode, a connection open (so the
/// WAL is not deleted on close). The connections are returned to be kept for the run.
fn make_dbs(dir: &Path, n: usize) -> (Vec<PathBuf>, Vec<rusqlite::Connection>) {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("db{i:04}.db"));
            let c = open_app(&p);
            c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (randomblob(500));")
                .unwrap();
            (p, c)
        })
        .unzip()
}

struct Row {
    tool: &'static str,
    n: usize,
    idle_rss_kb: u64,
    idle_fds: usize,
    idle_ticks: u64,
    load_rss_kb: u64,
    idle_puts_per_db_hour: f64,
    load_puts_per_db_hour: f64,
    app_write_errors: u64,
}

fn spawn_walsync(dbs: &[PathBuf], replica: &Path, log: &Path, sync: &str, extra: &[&str]) -> Child {
    let logf = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .arg("watch")
        .args(dbs)
        .args(["-b", replica.to_str().unwrap(), "--sync-interval", sync])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap()
}

static METRICS_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A free port for the metrics endpoint (remembered for the scrapes).
fn metrics_port() -> u16 {
    let p = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    METRICS_PORT.store(p, Ordering::Relaxed);
    p
}

/// GET /metrics; the body's length.
fn scrape(port: u16) -> std::io::Result<usize> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut v = Vec::new();
    c.read_to_end(&mut v)?;
    Ok(v.len())
}

fn spawn_litestream(dbs: &[PathBuf], replica: &Path, dir: &Path) -> Option<Child> {
    let bin = std::env::var("LITESTREAM").unwrap_or_else(|_| "litestream".into());
    Command::new(&bin).arg("version").output().ok()?;
    let mut cfg = String::from("dbs:\n");
    for d in dbs {
        let name = d.file_stem().unwrap().to_string_lossy();
        cfg.push_str(&format!(
            "  - path: {}\n    replicas:\n      - type: file\n        path: {}\n",
            d.display(),
            replica.join(&*name).display()
        ));
    }
    let cfg_path = dir.join("litestream.yml");
    std::fs::write(&cfg_path, cfg).unwrap();
    Command::new(bin)
        .args(["replicate", "-config", cfg_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn measure(tool: &'static str, n: usize, idle_secs: u64) -> Option<Row> {
    let t = TestDir::new(&format!("bench-{tool}-{n}"));
    let (dbs, _keep) = make_dbs(&t.path, n);
    let replica = t.join("replica");
    let mut child = match tool {
        "walsync" => spawn_walsync(&dbs, &replica, &t.join("log"), "1s", &[]),
        "walsync+metrics" => spawn_walsync(
            &dbs,
            &replica,
            &t.join("log"),
            "1s",
            &["--metrics-addr", &format!("127.0.0.1:{}", metrics_port())],
        ),
        _ => spawn_litestream(&dbs, &replica, &t.path)?,
    };
    let pid = child.id();
    // Settle: every database replicated once and released.
    let t0 = Instant::now();
    while count_files(&replica) < n && t0.elapsed() < Duration::from_secs(120) {
        sleep(Duration::from_millis(100));
    }
    sleep(Duration::from_secs(5));
    let objs0 = count_files(&replica);
    let ticks0 = cpu_ticks(pid);
    if tool == "walsync+metrics" {
        // A Prometheus server's scrapes: the idle window's ticks include them.
        let port = METRICS_PORT.load(Ordering::Relaxed);
        let end = Instant::now() + Duration::from_secs(idle_secs);
        while Instant::now() < end {
            let _ = scrape(port);
            sleep(Duration::from_secs(15).min(end.saturating_duration_since(Instant::now())));
        }
    } else {
        sleep(Duration::from_secs(idle_secs));
    }
    let idle_ticks = cpu_ticks(pid) - ticks0;
    let idle_objs = count_files(&replica) - objs0;
    let idle_rss_kb = proc_status(pid, "VmHWM:");
    let idle_fds = fds(pid);

    // Steady load: every database gets a commit about once a second, for 20 s.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = dbs
        .chunks(dbs.len().div_ceil(4))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let conns: Vec<_> = chunk.iter().map(|p| open_app(p)).collect();
                // The application's failed writes (busy after its 5 s timeout): a replicator
                // must never cause any.
                let mut failed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    for c in &conns {
                        if c.execute("INSERT INTO t(v) VALUES (randomblob(200))", [])
                            .is_err()
                        {
                            failed += 1;
                        }
                    }
                    sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
                }
                failed
            })
        })
        .collect();
    let objs1 = count_files(&replica);
    let load_secs = 20;
    sleep(Duration::from_secs(load_secs));
    stop.store(true, Ordering::Relaxed);
    let app_write_errors: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let load_objs = count_files(&replica) - objs1;
    let load_rss_kb = proc_status(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let per_hour = |objs: usize, secs: u64| objs as f64 / n as f64 * 3600.0 / secs as f64;
    Some(Row {
        tool,
        n,
        idle_rss_kb,
        idle_fds,
        idle_ticks,
        load_rss_kb,
        idle_puts_per_db_hour: per_hour(idle_objs, idle_secs),
        load_puts_per_db_hour: per_hour(load_objs, load_secs),
        app_write_errors,
    })
}

/// Commit -> object present in the (local) replica, in ms, over `samples` commits.
fn lag(sync: &str, samples: usize) -> (f64, f64) {
    let t = TestDir::new("bench-lag");
    let (dbs, _keep) = make_dbs(&t.path, 1);
    let replica = t.join("replica");
    let mut child = spawn_walsync(&dbs, &replica, &t.join("log"), sync, &[]);
    let wal = replica.join("db0000").join("wal");
    wait_until("first snapshot", Duration::from_secs(10), || {
        count_files(&replica) >= 1
    });
    let c = open_app(&dbs[0]);
    let mut lags = Vec::new();
    for _ in 0..samples {
        let before = std::fs::read_dir(&wal).map(|d| d.count()).unwrap_or(0);
        c.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .unwrap();
        let t0 = Instant::now();
        while std::fs::read_dir(&wal).map(|d| d.count()).unwrap_or(0) <= before {
            if t0.elapsed() > Duration::from_secs(10) {
                panic!("segment never appeared");
            }
            std::hint::spin_loop();
            sleep(Duration::from_micros(200));
        }
        lags.push(t0.elapsed().as_secs_f64() * 1000.0);
        sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| lags[((lags.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

#[test]
#[ignore = "benchmark: cargo test --release --test tests bench -- --ignored --nocapture"]
fn bench() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let idle: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!("| tool | databases | RSS idle (VmHWM) | fds idle | CPU ticks idle {idle}s | RSS under writes (VmHWM) | objects/db/hour idle | objects/db/hour under writes (1 commit/s/db) | app write errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &n in &sizes {
        // BENCH_METRICS=1 adds a row with the metrics endpoint on (scraped every 15 s).
        let tools: &[&'static str] = if std::env::var("BENCH_METRICS").is_ok() {
            &["walsync", "walsync+metrics", "litestream"]
        } else {
            &["walsync", "litestream"]
        };
        for &tool in tools {
            if let Some(r) = measure(tool, n, idle) {
                println!(
                    "| {} | {} | {:.1} MB | {} | {} | {:.1} MB | {:.0} | {:.0} | {} |",
                    r.tool,
                    r.n,
                    r.idle_rss_kb as f64 / 1024.0,
                    r.idle_fds,
                    r.idle_ticks,
                    r.load_rss_kb as f64 / 1024.0,
                    r.idle_puts_per_db_hour,
                    r.load_puts_per_db_hour,
                    r.app_write_errors
                );
            }
        }
    }
    for sync in ["0", "1s"] {
        let (p50, p99) = lag(sync, if sync == "0" { 200 } else { 20 });
        println!("lag commit -> object, --sync-interval {sync}: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
}
