//! Issue #16: retention. Pruning keeps every point in time of the window restorable (the
//! chain of the newest snapshot at or before the window's start stays whole), fails a point
//! before it with one line naming the oldest restorable time, never touches another
//! namespace (even one whose name starts with the same letters), and a prune stopped halfway
//! leaves a replica that restores exactly. The daemon applies it after each snapshot upload.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use crate::harness::*;

fn write(db: &Path, v: &str) {
    let c = open_app(db);
    c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
}

fn make(db: &Path) {
    let c = open_app(db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
}

fn all_keys(replica: &Replica, name: &str) -> Vec<String> {
    let mut k = replica.objects(name, "snapshots");
    k.extend(replica.objects(name, "wal"));
    k
}

fn prune_window(backend: Backend) {
    let t = TestDir::new("prune");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let other = t.join("app2.db");
    make(&db);
    make(&other);
    write(&other, "other");
    // Retention forever while recording: a snapshot of a changed database every second.
    let d = Daemon::start(
        &[&db, &other],
        &replica,
        &["--snapshot-interval", "1s", "--retention", "forever"],
        &t.join("log"),
    );
    let scratch = t.join("scratch.db");
    let mut states = Vec::new();
    for i in 0..8 {
        write(&db, &format!("row {i}"));
        states.push(wait_shipped(&replica, "app", &db, &scratch));
        sleep(Duration::from_millis(700));
    }
    d.stop();
    let other_keys = all_keys(&replica, "app2");
    let before = all_keys(&replica, "app");
    assert!(replica.objects("app", "snapshots").len() >= 4, "{before:?}");

    // A window starting at the fifth recorded state.
    let start = states[4].1;
    let keep_ms = walsync::time::now_ms() - start;
    let keep = format!("{keep_ms}ms");
    let dry = walsync(&[
        "prune",
        "app",
        "-b",
        &replica.url(),
        "--retention",
        &keep,
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(
        all_keys(&replica, "app"),
        before,
        "a dry run deleted something"
    );
    let dry_out = String::from_utf8_lossy(&dry.stdout).into_owned();
    let would = dry_out.matches("would delete ").count() - 1; // the summary line says it too
    assert!(would > 0, "{dry_out}");

    // A prune stopped halfway (as by kill -9): the oldest half of what it would delete is gone.
    let (st, prefix) = replica.storage();
    let doomed: Vec<String> = dry_out
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    for k in doomed.iter().take(doomed.len() / 2) {
        st.delete(k).unwrap();
    }
    let out = t.join("half.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(
        content_hash(&out),
        states[7].0,
        "restore after a prune stopped halfway"
    );

    // The prune itself, finishing the job.
    let o = walsync(&["prune", "app", "-b", &replica.url(), "--retention", &keep]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.starts_with("app: deleted "), "{text}");
    let after = all_keys(&replica, "app");
    for k in &doomed {
        assert!(!after.contains(k), "{k} survived the prune");
    }
    assert!(after.iter().all(|k| before.contains(k)));
    // The window slid a little between the dry run and this prune: what it kept is what it
    // says is restorable.
    let oldest = text
        .rsplit("restorable from ")
        .next()
        .and_then(|t| walsync::time::parse_iso(t.trim()))
        .expect("the prune names the oldest restorable time");
    // Another namespace with the same leading letters is untouched.
    assert_eq!(all_keys(&replica, "app2"), other_keys);
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(v.status.success(), "verify after prune: {}", stderr(&v));

    // Every point of the window restores exactly; the latest too.
    let inside: Vec<usize> = (0..states.len())
        .filter(|&i| states[i].1 >= oldest)
        .collect();
    assert!(inside.len() >= 3, "{inside:?}");
    assert!(states[0].1 < oldest);
    for &i in &inside {
        let (want, at) = &states[i];
        let out = t.join(&format!("pit-{i}.db"));
        restore_ok(&replica, "app", &out, Some(&walsync::time::iso(*at)));
        assert_eq!(&content_hash(&out), want, "state {i} inside the window");
    }
    let out = t.join("latest.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(content_hash(&out), states[7].0);
    // A point before the oldest kept snapshot fails with one line naming it.
    let out = t.join("old.db");
    let r = restore(
        &replica,
        "app",
        &out,
        Some(&walsync::time::iso(states[0].1)),
    );
    assert!(!r.status.success());
    let err = stderr(&r);
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.starts_with("walsync: error: no snapshot of '")
            && first.contains("app' at or before ")
            && first.contains("; the earliest is at "),
        "{err}"
    );
    let _ = prefix;
}

crate::both!(prune_window, super::prune_window);

/// The daemon prunes after each snapshot it uploads: with a 2 s window and a snapshot every
/// second, old objects go while the database is written, the latest always restores, and
/// every deletion is logged.
#[test]
fn daemon_applies_retention() {
    let t = TestDir::new("prune-daemon");
    let replica = Replica::new(&t, Backend::Local);
    let db = t.join("app.db");
    make(&db);
    let d = Daemon::start(
        &[&db],
        &replica,
        &["--snapshot-interval", "1s", "--retention", "2s"],
        &t.join("log"),
    );
    let scratch = t.join("scratch.db");
    let mut last = None;
    for i in 0..8 {
        write(&db, &format!("row {i}"));
        last = Some(wait_shipped(&replica, "app", &db, &scratch));
        sleep(Duration::from_millis(600));
    }
    d.wait_log("retention 2s: deleted", Duration::from_secs(20));
    d.stop();
    let snaps = replica.objects("app", "snapshots");
    assert!(snaps.len() <= 5, "{snaps:?}");
    let out = t.join("latest.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(content_hash(&out), last.unwrap().0);
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(v.status.success(), "{}", stderr(&v));
}

/// Bad retention values are one-line usage errors naming the option.
#[test]
fn retention_errors() {
    let o = walsync(&["prune", "app", "-b", "/tmp/x", "--retention", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).lines().next().unwrap_or(""),
        "walsync: error: option --retention: must be greater than 0 (or 'forever' to never delete)"
    );
    let o = walsync(&["prune", "-b", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("walsync: error: 'prune' needs exactly one database NAME"),
        "{}",
        stderr(&o)
    );
}
