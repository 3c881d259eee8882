//! Issue #15: a segment carries only the newest version of each page changed within it (after
//! its first transaction), as one transaction; restores, points in time between segments and
//! the manual `sqlite3` recovery all give the source's state, including across a shrinking
//! commit (VACUUM), which is left uncompacted.

use std::time::Duration;

use rusqlite::params;

use crate::harness::*;

const FRAME: u64 = 24 + 4096;

/// Bytes of all the WAL segments of `name`.
fn segment_bytes(replica: &Replica, t: &TestDir, name: &str) -> u64 {
    let tmp = t.join("seg.tmp");
    replica
        .objects(name, "wal")
        .iter()
        .map(|k| {
            replica.fetch(k, &tmp);
            std::fs::metadata(&tmp).unwrap().len()
        })
        .sum()
}

fn hot_rows_ship_once_per_segment(backend: Backend) {
    let t = TestDir::new("compact-hot");
    let db = t.join("app.db");
    let replica = Replica::new(&t, backend);
    let c = open_app(&db);
    c.execute_batch(
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
         INSERT INTO t SELECT i, 0 FROM n;",
    )
    .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "2s"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(10));
    let scratch = t.join("scratch.db");
    let mut rng = Rng(15);
    let mut commits = 0u64;
    let mut mid = None;
    for round in 0..2 {
        for _ in 0..400 {
            let k = 1 + rng.below(20) as i64;
            c.execute("UPDATE t SET v = v + 1 WHERE k = ?1", params![k])
                .unwrap();
            commits += 1;
        }
        let shipped = wait_shipped(&replica, "app", &db, &scratch);
        if round == 0 {
            mid = Some(shipped);
        }
    }
    d.wait_log("compacted: ", Duration::from_secs(5));
    d.stop();
    let bytes = segment_bytes(&replica, &t, "app");
    let segs = replica.objects("app", "wal").len() as u64;
    eprintln!("{commits} commits: {segs} segments, {bytes} bytes");
    // Uncompacted, each commit ships its leaf page: ~800 frames. Compacted, each segment holds
    // its first transaction and then the newest version of the one leaf page.
    assert!(
        bytes <= segs * (32 + 4 * FRAME) && bytes < commits * FRAME / 20,
        "{bytes} bytes in {segs} segments for {commits} commits"
    );
    let (mid_state, mid_at) = mid.unwrap();
    let out = t.join("restored.db");
    restore_ok(&replica, "app", &out, Some(&mid_at.iso()));
    assert_eq!(
        content_hash(&out),
        mid_state,
        "point in time between the rounds"
    );
    assert_restores_equal(&replica, "app", &db, &out);
    let manual = t.join("manual.db");
    manual_restore(&replica, "app", &manual);
    assert_eq!(content_hash(&manual), content_hash(&db));
}
crate::both!(
    hot_rows_ship_once_per_segment,
    super::hot_rows_ship_once_per_segment
);

fn shrinking_commit_inside_a_segment(backend: Backend) {
    let t = TestDir::new("compact-shrink");
    let db = t.join("app.db");
    let replica = Replica::new(&t, backend);
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(k INTEGER PRIMARY KEY, b BLOB); CREATE TABLE u(x);")
        .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "2s"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(10));
    // Within one sync interval: grow, empty, VACUUM (the database shrinks), grow again and
    // rewrite some pages: replaying the newest page versions across the shrink would be wrong.
    c.execute_batch(
        "INSERT INTO u VALUES (1);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t SELECT i, randomblob(2000) FROM n;",
    )
    .unwrap();
    c.execute_batch("UPDATE u SET x = 2; DELETE FROM t;")
        .unwrap();
    c.execute_batch("VACUUM").unwrap();
    for i in 0..40 {
        c.execute("INSERT INTO t VALUES (?1, zeroblob(1500 + ?1))", params![i])
            .unwrap();
        c.execute("UPDATE u SET x = x + 1", []).unwrap();
    }
    let scratch = t.join("scratch.db");
    wait_shipped(&replica, "app", &db, &scratch);
    d.wait_log(
        "not compacted: a commit shrinks the database",
        Duration::from_secs(5),
    );
    d.stop();
    let out = t.join("restored.db");
    assert_restores_equal(&replica, "app", &db, &out);
    let manual = t.join("manual.db");
    manual_restore(&replica, "app", &manual);
    assert_eq!(content_hash(&manual), content_hash(&db));
}
crate::both!(
    shrinking_commit_inside_a_segment,
    super::shrinking_commit_inside_a_segment
);
