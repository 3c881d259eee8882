//! Issue #11's figure: what one commit by a short-lived connection costs. Not part of the
//! normal suite:
//!
//! ```sh
//! cargo test --release --test tests bench_oneshot -- --ignored --nocapture
//! ```
//!
//! A database of `BENCH_ONESHOT_MB` (default 100) MB, replicated to a local directory; once
//! walsync has let it go, the `sqlite3` CLI inserts one row (open, write, close: the close
//! checkpoints the WAL into the database and deletes it). Printed: the bytes walsync uploaded
//! for it, the pages it found changed, and the time it spent proving that from the database
//! file (its own log line), then the restore checked against the source.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
#[ignore = "benchmark: cargo test --release --test tests bench_oneshot -- --ignored --nocapture"]
fn bench_oneshot() {
    let mb: u64 = std::env::var("BENCH_ONESHOT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let t = TestDir::new("bench-oneshot");
    let replica = Replica::new(&t, Backend::Local);
    let db = t.join("app.db");
    drop(fill_mb(&db, mb));
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    wait_until(
        "first snapshot shipped and released",
        Duration::from_secs(120),
        || d.log_text().contains("uploaded") && d.released(),
    );
    let before: u64 = replica.objects("app", "wal").len() as u64;
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO t(v) VALUES ('one row')")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_log("proven from the database file", Duration::from_secs(60));
    let want = content_hash(&db);
    d.stop();
    let log = std::fs::read_to_string(t.join("log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("proven from the database file"))
        .unwrap()
        .to_string();
    let segs = replica.objects("app", "wal");
    let dir = replica.dir.clone().unwrap();
    let bytes: u64 = segs
        .iter()
        .skip(before as usize)
        .map(|k| std::fs::metadata(dir.join(k)).map_or(0, |m| m.len()))
        .sum();
    let size = std::fs::metadata(&db).unwrap().len();
    println!(
        "one sqlite3 INSERT into a {:.1} MB database: {} new segment(s), {bytes} bytes uploaded",
        size as f64 / 1e6,
        segs.len() as u64 - before
    );
    println!("walsync: {}", line.split("INFO  ").nth(1).unwrap_or(&line));
    let out = t.join("restored.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(content_hash(&out), want);
}
