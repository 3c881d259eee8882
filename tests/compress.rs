//! Issue #15: fewer bytes per commit with `--compression lz4`. Compressed segments
//! (`.wal.lz4`) restore exactly (latest and points in time), `verify` walks them, the README's
//! manual recovery with `lz4 -d` and `sqlite3` gives the same database, a chain may switch
//! between compressed and plain segments across restarts, and a damaged compressed object fails
//! the restore naming it.

use crate::harness::*;

/// Rows of text as an application writes them: compressible, but not one repeated byte.
fn write_rows(c: &rusqlite::Connection, from: u32, n: u32) {
    for i in from..from + n {
        c.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!(
                "order {i}: customer {} paid {}.{:02} EUR",
                i % 37,
                i * 7 % 500,
                i % 100
            )],
        )
        .unwrap();
    }
}

/// walsync on `db`, every commit shipped at once, segments compressed.
fn start_lz4(db: &std::path::Path, replica: &Replica, log: &std::path::Path) -> Daemon {
    Daemon::start(
        &[db],
        replica,
        &["--sync-interval", "0", "--compression", "lz4"],
        log,
    )
}

fn segment_keys(replica: &Replica) -> Vec<String> {
    replica.objects("app", "wal")
}

fn compressed_segments_restore_exactly(backend: Backend) {
    let t = TestDir::new("lz4");
    let db = t.join("app.db");
    let replica = Replica::new(&t, backend);
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let d = start_lz4(&db, &replica, &t.join("log"));
    let scratch = t.join("scratch.db");
    let mut states = Vec::new();
    for round in 0..4 {
        write_rows(&c, round * 50, 50);
        let (want, at) = wait_shipped(&replica, "app", &db, &scratch);
        states.push((want, at.iso()));
    }
    // A short-lived writer's commit, which SQLite checkpoints away at once.
    sqlite3_cli(&db, "INSERT INTO t(v) VALUES ('from the sqlite3 CLI')");
    let (latest, _) = wait_shipped(&replica, "app", &db, &scratch);
    drop(c);
    d.stop();

    let keys = segment_keys(&replica);
    assert!(keys.len() >= 4, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.ends_with(".wal.lz4")),
        "every segment compressed: {keys:?}"
    );
    let out = t.join("latest.db");
    restore_ok(&replica, "app", &out, None);
    integrity_ok(&out);
    assert_eq!(content_hash(&out), latest);
    for (i, (want, at)) in states.iter().enumerate() {
        let out = t.join(&format!("pit-{i}.db"));
        restore_ok(&replica, "app", &out, Some(at));
        assert_eq!(&content_hash(&out), want, "state {i} at {at}");
    }
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(v.status.success(), "verify: {}", stderr(&v));
    let manual = t.join("manual.db");
    manual_restore(&replica, "app", &manual);
    assert_eq!(content_hash(&manual), latest);
}
crate::both!(
    compressed_segments_restore_exactly,
    super::compressed_segments_restore_exactly
);

/// Plain, then compressed, then plain again, across restarts of walsync (a SIGHUP'd config or
/// an upgrade): one chain, restorable at every step, links naming the WAL inside each object.
fn chain_switches_between_plain_and_compressed(backend: Backend) {
    let t = TestDir::new("lz4-mixed");
    let db = t.join("app.db");
    let replica = Replica::new(&t, backend);
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let scratch = t.join("scratch.db");
    let mut states = Vec::new();
    for (run, how) in ["none", "lz4", "none"].iter().enumerate() {
        let d = Daemon::start(
            &[&db],
            &replica,
            &["--sync-interval", "0", "--compression", how],
            &t.join(&format!("log{run}")),
        );
        write_rows(&c, run as u32 * 100, 100);
        let (want, at) = wait_shipped(&replica, "app", &db, &scratch);
        states.push((want, at.iso()));
        d.stop();
        let log = d_log(&t, run);
        assert_eq!(
            log.matches("starting generation").count(),
            usize::from(run == 0),
            "run {run}: {log}"
        );
    }
    let keys = segment_keys(&replica);
    assert!(keys.iter().any(|k| k.ends_with(".wal.lz4")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with(".wal")), "{keys:?}");
    assert_eq!(replica.objects("app", "snapshots").len(), 1, "{keys:?}");
    for (i, (want, at)) in states.iter().enumerate() {
        let out = t.join(&format!("pit-{i}.db"));
        restore_ok(&replica, "app", &out, Some(at));
        assert_eq!(&content_hash(&out), want, "state {i}");
    }
    let out = t.join("latest.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(content_hash(&out), content_hash(&db));
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(v.status.success(), "verify: {}", stderr(&v));
    let manual = t.join("manual.db");
    manual_restore(&replica, "app", &manual);
    assert_eq!(content_hash(&manual), content_hash(&db));
}
crate::both!(
    chain_switches_between_plain_and_compressed,
    super::chain_switches_between_plain_and_compressed
);

fn d_log(t: &TestDir, run: usize) -> String {
    std::fs::read_to_string(t.join(&format!("log{run}"))).unwrap_or_default()
}

/// A compressed segment damaged in storage: restore and verify fail, naming it; the output
/// path is not created. Then an unknown compression is a usage error naming the option.
#[test]
fn damaged_compressed_segment_is_named() {
    let t = TestDir::new("lz4-damaged");
    let db = t.join("app.db");
    let replica = Replica::new(&t, Backend::Local);
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let d = start_lz4(&db, &replica, &t.join("log"));
    for round in 0..3 {
        write_rows(&c, round * 20, 20);
        wait_shipped(&replica, "app", &db, &t.join("scratch.db"));
    }
    d.stop();
    let keys = segment_keys(&replica);
    let victim = &keys[keys.len() / 2];
    let dir = replica.dir.as_ref().unwrap();
    let path = dir.join(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();

    let out = t.join("out.db");
    let r = restore(&replica, "app", &out, None);
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(
        err.contains(victim.as_str()) && err.contains("SHA-256 mismatch"),
        "{err}"
    );
    assert!(!out.exists());
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(!v.status.success());
    assert!(stderr(&v).contains(victim.as_str()), "{}", stderr(&v));

    let o = walsync(&[
        "watch",
        db.to_str().unwrap(),
        "-b",
        &replica.url(),
        "--compression",
        "zstd",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).lines().next().unwrap_or(""),
        "walsync: error: option --compression: 'zstd' is not lz4 or none"
    );
}
