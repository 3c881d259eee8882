//! Issue #11: the ways applications really use SQLite. Connections opened per write and closed
//! (the `sqlite3` CLI, a current SQLite through rusqlite), one-shot checkpoints, a pool of
//! connections restarting the WAL in turn, `journal_size_limit`, databases replaced by rename
//! or recreated; walsync running, stopped and `kill -9`ed in between. Every restore (latest and
//! points in time) must equal the recorded state of the source.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use rusqlite::Connection;

use crate::harness::*;

/// The same with a current SQLite (3.54.1, rusqlite): open, one statement, close.
fn oneshot(db: &Path, sql: &str) {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch(sql).unwrap();
    c.close().unwrap();
}

fn assert_restores(replica: &Replica, name: &str, out: &Path, pit: Option<&str>, want: &str) {
    let _ = std::fs::remove_file(out);
    restore_ok(replica, name, out, pit);
    integrity_ok(out);
    assert_eq!(content_hash(out), want, "restore of {name} at {pit:?}");
}

/// The latest state and every recorded (state, time) restore exactly.
fn assert_restores_all(replica: &Replica, t: &TestDir, db: &Path, states: &[(String, String)]) {
    assert_restores(
        replica,
        "app",
        &t.join("latest.db"),
        None,
        &content_hash(db),
    );
    for (i, (want, at)) in states.iter().enumerate() {
        let out = t.join(&format!("pit-{i}.db"));
        assert_restores(replica, "app", &out, Some(at), want);
    }
}

/// `wait_shipped`, with the time as ISO 8601.
fn shipped(replica: &Replica, name: &str, src: &Path, scratch: &Path) -> (String, String) {
    let (want, at) = wait_shipped(replica, name, src, scratch);
    (want, at.iso())
}

/// Wait until walsync's last word (uploads finishing apart) is that it let the database go.
fn wait_released(d: &Daemon) {
    wait_until(
        "walsync released the database",
        Duration::from_secs(20),
        || d.released(),
    );
}

fn created_by_cli(db: &Path) {
    sqlite3_cli(
        db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    );
}

/// The README's quick start, and every variation of a writer that opens, writes and closes:
/// while walsync runs (pinned and after it let go), across a clean restart and a `kill -9`.
/// Nothing is lost, no snapshot beyond the first is needed, points in time restore exactly.
fn one_shot_writers_are_never_lost(backend: Backend) {
    let t = TestDir::new("oneshot");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let scratch = t.join("scratch.db");
    created_by_cli(&db);
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(20));
    let mut states = Vec::new();
    for i in 0..12 {
        match i % 4 {
            0 => sqlite3_cli(&db, &format!("INSERT INTO t(v) VALUES ('cli {i}')")),
            1 => oneshot(&db, &format!("INSERT INTO t(v) VALUES ('current {i}')")),
            2 => {
                sqlite3_cli(
                    &db,
                    &format!("UPDATE t SET v = v || '+' WHERE id % 2 = {}", i % 2),
                );
                sqlite3_cli(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
            }
            _ => oneshot(
                &db,
                &format!("INSERT INTO t(v) SELECT hex(randomblob(3000)) FROM t LIMIT 3; -- {i}"),
            ),
        }
        states.push(shipped(&replica, "app", &db, &scratch));
        if i % 3 == 2 {
            // Let walsync let go, so the next writer finds it unpinned.
            wait_released(&d);
        }
    }
    d.stop();
    // Stopped: three one-shot writes, then start again.
    for i in 0..3 {
        sqlite3_cli(
            &db,
            &format!("INSERT INTO t(v) VALUES ('while stopped {i}')"),
        );
    }
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log2"));
    states.push(shipped(&replica, "app", &db, &scratch));
    assert!(
        d.log_text().contains("proven from the database file"),
        "{}",
        d.log_text()
    );
    // Killed: writes after the kill are shipped by the next run.
    oneshot(&db, "INSERT INTO t(v) VALUES ('before the kill')");
    states.push(shipped(&replica, "app", &db, &scratch));
    d.kill9();
    for i in 0..3 {
        oneshot(
            &db,
            &format!("INSERT INTO t(v) VALUES ('after the kill {i}')"),
        );
    }
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log3"));
    states.push(shipped(&replica, "app", &db, &scratch));
    d.stop();
    let logs = [t.join("log"), t.join("log2"), t.join("log3")]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect::<String>();
    assert_eq!(
        logs.matches("starting generation").count(),
        1,
        "only the first snapshot is needed:\n{logs}"
    );
    assert_eq!(replica.objects("app", "snapshots").len(), 1);
    assert_restores_all(&replica, &t, &db, &states);
}

/// Two connections of one process (a pool) restart the WAL in turn, walsync pinned and not:
/// SQLite writes each connection's own checkpoint counter, salt-1 grows by one. No restart may
/// cost a snapshot, and the restore is exact.
fn pool_restarts_cost_no_snapshot(backend: Backend) {
    let t = TestDir::new("pool");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let a = open_app(&db);
    let b = open_app(&db);
    for c in [&a, &b] {
        c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    }
    a.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(20));
    let scratch = t.join("scratch.db");
    let mut states = Vec::new();
    for (i, who) in ["a", "a", "a", "b", "a", "b", "b", "a"].iter().enumerate() {
        let c = if *who == "a" { &a } else { &b };
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("{who} {i}")])
            .unwrap();
        states.push(shipped(&replica, "app", &db, &scratch));
        if i % 2 == 1 {
            wait_released(&d);
        }
        // A complete checkpoint: the next write (by either connection) restarts the WAL.
        let (busy, _, _): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
    }
    drop((a, b));
    d.stop();
    let log = std::fs::read_to_string(t.join("log")).unwrap();
    assert_eq!(log.matches("starting generation").count(), 1, "{log}");
    assert_restores_all(&replica, &t, &db, &states);
}

/// Issue #12 finding 2: `journal_size_limit` cuts the WAL inside the frame after walsync's
/// last one at the first commit after a restart; that partial frame must count as "frames
/// existed after ours", never as the old cycle's end.
fn journal_size_limit_cut_is_not_a_proof(backend: Backend) {
    let t = TestDir::new("jsl");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch(
        "PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('a'), ('b'), ('c');
         INSERT INTO u(v) VALUES ('a');",
    )
    .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(20));
    for i in 0..6 {
        c.execute("UPDATE t SET v = ?1 WHERE id = 1", [format!("x{i}")])
            .unwrap();
    }
    shipped(&replica, "app", &db, &t.join("scratch.db"));
    d.stop();
    // walsync's last frame is the WAL's last; cut 100 bytes into the next one.
    let wal_len = std::fs::metadata(t.join("app.db-wal")).unwrap().len();
    c.execute_batch(&format!("PRAGMA journal_size_limit={}", wal_len + 100))
        .unwrap();
    for i in 0..20 {
        c.execute("UPDATE t SET v = ?1 WHERE id = 2", [format!("lost? {i}")])
            .unwrap();
    }
    let (busy, log, done): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((busy, log), (0, done));
    // Another table, so another page: the frames of the 20 updates are the only copy of them.
    c.execute("UPDATE u SET v = 'after restart' WHERE id = 1", [])
        .unwrap();
    assert_eq!(
        std::fs::metadata(t.join("app.db-wal")).unwrap().len(),
        wal_len + 100,
        "SQLite cut the WAL at the limit"
    );
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log2"));
    shipped(&replica, "app", &db, &t.join("scratch.db"));
    assert!(
        d.log_text().contains("its old end cannot be proven"),
        "{}",
        d.log_text()
    );
    d.stop();
    drop(c);
    assert_restores(
        &replica,
        "app",
        &t.join("latest.db"),
        None,
        &content_hash(&db),
    );
}

/// A database replaced by `mv new.db app.db` while walsync is stopped, and deleted and
/// recreated while it runs: never taken for the old one.
fn replaced_database_is_not_the_old_one(backend: Backend) {
    let t = TestDir::new("replaced");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let scratch = t.join("scratch.db");
    created_by_cli(&db);
    sqlite3_cli(&db, "INSERT INTO t(v) VALUES ('old 1'), ('old 2')");
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    let (old, old_at) = shipped(&replica, "app", &db, &scratch);
    d.stop();
    let new = t.join("new.db");
    sqlite3_cli(
        &new,
        "PRAGMA journal_mode=WAL; CREATE TABLE other(y); INSERT INTO other VALUES (42);",
    );
    std::fs::rename(&new, &db).unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log2"));
    let (renamed, renamed_at) = shipped(&replica, "app", &db, &scratch);
    // Deleted and recreated with the same name while walsync runs.
    std::fs::remove_file(&db).unwrap();
    created_by_cli(&db);
    sqlite3_cli(&db, "INSERT INTO t(v) VALUES ('recreated')");
    let (_, _) = shipped(&replica, "app", &db, &scratch);
    // Once proven, the new file is the database: a later write after walsync let it go is
    // not "replaced" again.
    wait_released(&d);
    let replaced = d.log_text().matches("was replaced").count();
    sqlite3_cli(
        &db,
        "INSERT INTO t(v) VALUES ('after the new file was proven')",
    );
    let (recreated, _) = shipped(&replica, "app", &db, &scratch);
    assert_eq!(
        d.log_text().matches("was replaced").count(),
        replaced,
        "{}",
        d.log_text()
    );
    d.stop();
    assert_ne!(old, renamed);
    assert_restores(&replica, "app", &t.join("latest.db"), None, &recreated);
    assert_restores(&replica, "app", &t.join("old.db"), Some(&old_at), &old);
    assert_restores(
        &replica,
        "app",
        &t.join("renamed.db"),
        Some(&renamed_at),
        &renamed,
    );
}

/// A database deleted and created again by one-shot `sqlite3` processes while walsync still
/// pins the old file (just after shipping it), with a sync interval long enough that the step
/// comes after the new file's last process checkpointed and deleted its WAL: the new
/// database is shipped without a further write (found under load: the step saw no WAL,
/// concluded "nothing new" before looking at the file, and the commits waited for a write
/// that never came).
fn recreated_while_pinned_is_shipped(backend: Backend) {
    let t = TestDir::new("recreated");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let scratch = t.join("scratch.db");
    created_by_cli(&db);
    sqlite3_cli(&db, "INSERT INTO t(v) VALUES ('old')");
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "1s"], &t.join("log"));
    let (old, old_at) = shipped(&replica, "app", &db, &scratch);
    sqlite3_cli(&db, "INSERT INTO t(v) VALUES ('old 2')");
    let (old2, _) = shipped(&replica, "app", &db, &scratch);
    // Still pinned (released 3 s after the last change): delete and create it again.
    assert!(!d.released(), "{}", d.log_text());
    std::fs::remove_file(&db).unwrap();
    created_by_cli(&db);
    sqlite3_cli(&db, "INSERT INTO t(v) VALUES ('recreated')");
    let (recreated, _) = shipped(&replica, "app", &db, &scratch);
    d.stop();
    assert_ne!(old2, recreated);
    assert_restores(&replica, "app", &t.join("latest.db"), None, &recreated);
    assert_restores(&replica, "app", &t.join("old.db"), Some(&old_at), &old);
}

crate::both!(
    recreated_while_pinned_is_shipped,
    super::recreated_while_pinned_is_shipped
);
crate::both!(
    one_shot_writers_are_never_lost,
    super::one_shot_writers_are_never_lost
);
crate::both!(
    pool_restarts_cost_no_snapshot,
    super::pool_restarts_cost_no_snapshot
);
crate::both!(
    journal_size_limit_cut_is_not_a_proof,
    super::journal_size_limit_cut_is_not_a_proof
);
crate::both!(
    replaced_database_is_not_the_old_one,
    super::replaced_database_is_not_the_old_one
);

/// Issue #14: an application that keeps its connection open and runs its own
/// `wal_checkpoint(TRUNCATE)` every second while writing every 100 ms. Each TRUNCATE that
/// succeeds while walsync is not pinning empties the WAL behind walsync's back; the chain must
/// continue (proven from the database file, shipping pages), never through a new snapshot.
fn app_truncate_checkpoints_cost_no_snapshot(backend: Backend) {
    let t = TestDir::new("app-truncate");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(20));
    let (mut ok, mut busy) = (0, 0);
    for round in 0..6 {
        for i in 0..10 {
            c.execute("INSERT INTO t(v) VALUES (?1)", [format!("{round}.{i}")])
                .unwrap();
            sleep(Duration::from_millis(100));
        }
        if round % 2 == 1 {
            wait_released(&d); // the next TRUNCATE finds walsync unpinned
        }
        let (b, _, _): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        if b == 0 {
            ok += 1;
        } else {
            busy += 1;
        }
    }
    let (want, _) = shipped(&replica, "app", &db, &t.join("scratch.db"));
    drop(c);
    d.stop();
    let log = std::fs::read_to_string(t.join("log")).unwrap();
    eprintln!("{ok} TRUNCATE checkpoints succeeded, {busy} busy");
    assert!(ok >= 3, "{ok} of 6 TRUNCATE checkpoints succeeded\n{log}");
    assert_eq!(log.matches("starting generation").count(), 1, "{log}");
    assert_restores(&replica, "app", &t.join("latest.db"), None, &want);
}

crate::both!(
    app_truncate_checkpoints_cost_no_snapshot,
    super::app_truncate_checkpoints_cost_no_snapshot
);

/// `locking_mode=EXCLUSIVE`: SQLite keeps the database locked for as long as the application
/// has it open, so walsync cannot read it. It says so (one line with the hint), keeps
/// retrying, and ships everything once the application closes.
#[test]
fn exclusive_locking_mode_is_reported_then_shipped() {
    let t = TestDir::new("exclusive");
    let replica = Replica::new(&t, Backend::Local);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch(
        "PRAGMA locking_mode=EXCLUSIVE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('held exclusively');",
    )
    .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    d.wait_log("PRAGMA locking_mode=EXCLUSIVE", Duration::from_secs(30));
    drop(c);
    let (want, _) = shipped(&replica, "app", &db, &t.join("scratch.db"));
    d.stop();
    assert_restores(&replica, "app", &t.join("latest.db"), None, &want);
}

/// Several writer processes on one database at once: three shells each running twenty
/// one-shot `sqlite3` inserts, beside an application connection writing too; walsync is
/// `kill -9`ed in the middle and started again. Every committed row is restored.
fn concurrent_writer_processes_lose_nothing(backend: Backend) {
    let t = TestDir::new("concurrent");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    created_by_cli(&db);
    let app = open_app(&db);
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(20));
    let shells: Vec<_> = (0..3)
        .map(|w| {
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for i in $(seq 20); do sqlite3 -cmd '.timeout 5000' '{}' \"INSERT INTO t(v) VALUES ('writer {w} row '||$i)\" || exit 1; done",
                    db.display()
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..30 {
        app.execute("INSERT INTO t(v) VALUES (?1)", [format!("app {i}")])
            .unwrap();
        sleep(Duration::from_millis(20));
    }
    d.kill9();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log2"));
    for mut s in shells {
        assert!(s.wait().unwrap().success(), "a writer failed");
    }
    drop(app);
    let n: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 90, "every writer committed");
    let (want, _) = shipped(&replica, "app", &db, &t.join("scratch.db"));
    d.stop();
    assert_restores(&replica, "app", &t.join("latest.db"), None, &want);
}

crate::both!(
    concurrent_writer_processes_lose_nothing,
    super::concurrent_writer_processes_lose_nothing
);
