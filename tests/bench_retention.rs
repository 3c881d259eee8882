//! Issue #16: what the bucket holds after a day and more of writes, with retention on and off.
//! Not part of the normal suite:
//!
//! ```sh
//! cargo test --release --test tests bench_retention -- --ignored --nocapture
//! ```
//!
//! Time is scaled: one simulated hour is `BENCH_HOUR_MS` (default 2,000) ms, so the daemons run
//! with `--snapshot-interval` of one simulated hour (the default interval) and, for the first,
//! `--retention` of 24 simulated hours (the default retention); the second keeps everything
//! (`forever`, what walsync did before retention). Each has its own database of
//! `BENCH_RETENTION_MB` (default 8) MB that an application changes `BENCH_RETENTION_RATE`
//! (default 20) times a second (a 1 KB row updated, one in ten inserted) for
//! `BENCH_SIM_HOURS` (default 48) simulated hours, on the real S3 server (Garage). Every six
//! simulated hours the objects, the bytes and the restorable window are read from
//! `walsync list` and printed side by side. At the end the retained replica restores the latest
//! state exactly, a point 12 simulated hours back restores, and a point before its window fails
//! naming the earliest restorable time.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// One database's line of `walsync list`: objects, bytes, window (ms).
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    snapshots: u64,
    segments: u64,
    bytes: u64,
    oldest: Stamp,
    latest: Stamp,
}

fn held(replica: &Replica, name: &str) -> Held {
    let o = walsync(&["list", "-b", &replica.url()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let Some(line) = text.lines().find(|l| l.starts_with(&format!("{name}\t"))) else {
        return Held::default();
    };
    let mut h = Held::default();
    for kv in line.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let time = || Stamp::parse_iso(v).unwrap_or_default();
        match k {
            "snapshots" => h.snapshots = v.parse().unwrap_or(0),
            "segments" => h.segments = v.parse().unwrap_or(0),
            "bytes" => h.bytes = v.parse().unwrap_or(0),
            "oldest_restorable" => h.oldest = time(),
            "latest_restorable" => h.latest = time(),
            _ => {}
        }
    }
    h
}

/// Change `db` `rate` times a second until `stop`.
fn writer(db: &Path, rate: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = open_app(&db);
        let mut rng = Rng(db.as_os_str().len() as u64 + 7);
        let gap = Duration::from_micros(1_000_000 / rate.max(1));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let rows: i64 = c
                .query_row("SELECT max(id) FROM t", [], |r| r.get(0))
                .unwrap();
            if n.is_multiple_of(10) {
                c.execute("INSERT INTO t(v) VALUES (randomblob(1000))", [])
                    .unwrap();
            } else {
                let id = 1 + rng.below(rows as u64) as i64;
                c.execute("UPDATE t SET v = randomblob(1000) WHERE id = ?1", [id])
                    .unwrap();
            }
            n += 1;
            std::thread::sleep(gap);
        }
        n
    })
}

#[test]
#[ignore]
fn bench_retention() {
    let hour_ms = env_u64("BENCH_HOUR_MS", 2000);
    let hours = env_u64("BENCH_SIM_HOURS", 48);
    let mb = env_u64("BENCH_RETENTION_MB", 8);
    let rate = env_u64("BENCH_RETENTION_RATE", 20);
    let t = TestDir::new("bench-retention");
    let replica = Replica::new(&t, Backend::S3);
    let hour = Duration::from_millis(hour_ms);
    let interval = format!("{hour_ms}ms");
    let window = format!("{}ms", 24 * hour_ms);

    let kept = t.join("kept.db");
    let all = t.join("all.db");
    drop(fill_mb(&kept, mb));
    drop(fill_mb(&all, mb));
    let d1 = Daemon::start(
        &[&kept],
        &replica,
        &["--snapshot-interval", &interval, "--retention", &window],
        &t.join("kept.log"),
    );
    let d2 = Daemon::start(
        &[&all],
        &replica,
        &["--snapshot-interval", &interval, "--retention", "forever"],
        &t.join("all.log"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let w1 = writer(&kept, rate, stop.clone());
    let w2 = writer(&all, rate, stop.clone());
    println!(
        "{mb} MB database, {rate} changes/s, 1 simulated hour = {hour_ms} ms: snapshot every hour; retention 24 h vs forever"
    );
    println!("| simulated hours | retention 24 h: snapshots / segments / MB / window | forever: snapshots / segments / MB / window |");
    println!("| --- | --- | --- |");
    let began = Instant::now();
    let row = |h: &Held| {
        let win = h.latest.since(h.oldest).as_secs_f64() / hour.as_secs_f64();
        format!(
            "{} / {} / {:.1} MB / {win:.1} h",
            h.snapshots,
            h.segments,
            h.bytes as f64 / 1e6
        )
    };
    for h in 1..=hours {
        let due = hour * h as u32;
        if let Some(left) = due.checked_sub(began.elapsed()) {
            std::thread::sleep(left);
        }
        if h.is_multiple_of(6) {
            let (a, b) = (held(&replica, "kept"), held(&replica, "all"));
            println!("| {h} | {} | {} |", row(&a), row(&b));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let commits = w1.join().unwrap() + w2.join().unwrap();
    // Everything written is shipped before the daemons exit.
    d1.stop();
    d2.stop();
    let end = held(&replica, "kept");
    println!(
        "{commits} commits in all; at the end, retention 24 h: {}, forever: {}",
        row(&end),
        row(&held(&replica, "all"))
    );

    let out = t.join("latest.db");
    assert_restores_equal(&replica, "kept", &kept, &out);
    let mid = end.latest.before(12 * hour).iso();
    restore_ok(&replica, "kept", &t.join("mid.db"), Some(&mid));
    let before = end.oldest.before(hour).iso();
    let r = restore(&replica, "kept", &t.join("before.db"), Some(&before));
    assert!(!r.status.success(), "a point before the window restored");
    println!(
        "restore: latest exact, 12 simulated hours back ok; before the window: {}",
        stderr(&r).lines().next().unwrap_or("")
    );
}
