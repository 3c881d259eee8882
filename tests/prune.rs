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

/// `walsync prune app --dry-run` with retention `keep`: the keys it would delete, and its output.
fn dry_run(replica: &Replica, keep: &str) -> (Vec<String>, String) {
    let url = replica.url();
    let dry = walsync(&["prune", "app", "-b", &url, "--retention", keep, "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let out = String::from_utf8_lossy(&dry.stdout).into_owned();
    let keys = out
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    (keys, out)
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
    let keep = format!("{}ms", Stamp::now().since(start).as_millis());
    let (doomed, dry_out) = dry_run(&replica, &keep);
    assert_eq!(
        all_keys(&replica, "app"),
        before,
        "a dry run deleted something"
    );
    let would = dry_out.matches("would delete ").count() - 1; // the summary line says it too
    assert!(would > 0 && would == doomed.len(), "{dry_out}");

    // A prune stopped halfway (as by kill -9): the oldest half of what it would delete is gone.
    let (st, prefix) = replica.storage();
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
        .and_then(|t| Stamp::parse_iso(t.trim()))
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
        restore_ok(&replica, "app", &out, Some(&at.iso()));
        assert_eq!(&content_hash(&out), want, "state {i} inside the window");
    }
    let out = t.join("latest.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(content_hash(&out), states[7].0);
    // A point before the oldest kept snapshot fails with one line naming it.
    let out = t.join("old.db");
    let r = restore(&replica, "app", &out, Some(&states[0].1.iso()));
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

/// A history with many objects: `rounds` recorded states, each after a burst of commits
/// shipped one segment each, and a snapshot of the changed database every second.
fn record_history(
    t: &TestDir,
    replica: &Replica,
    db: &Path,
    rounds: usize,
) -> Vec<(String, Stamp)> {
    make(db);
    let d = Daemon::start(
        &[db],
        replica,
        &[
            "--snapshot-interval",
            "1s",
            "--retention",
            "forever",
            "--sync-interval",
            "0",
        ],
        &t.join("log"),
    );
    let scratch = t.join("scratch.db");
    let mut states = Vec::new();
    for i in 0..rounds {
        for j in 0..8 {
            write(db, &format!("row {i}.{j}"));
            sleep(Duration::from_millis(25)); // the application's own pace
        }
        states.push(wait_shipped(replica, "app", db, &scratch));
        sleep(Duration::from_millis(300));
    }
    d.stop();
    states
}

/// Every recorded state restores exactly, or (before the window, once something there is
/// gone) fails: never a different state. Those at or after `window` must restore.
fn restores_exactly_or_fails(
    t: &TestDir,
    replica: &Replica,
    states: &[(String, Stamp)],
    window: Stamp,
    what: &str,
) {
    for (i, (want, at)) in states.iter().enumerate() {
        let out = t.join(&format!("check-{i}.db"));
        let _ = std::fs::remove_file(&out);
        let r = restore(replica, "app", &out, Some(&at.iso()));
        if r.status.success() {
            assert_eq!(
                &content_hash(&out),
                want,
                "{what}: state {i} restored wrong"
            );
        } else {
            assert!(
                *at < window,
                "{what}: state {i} inside the window failed: {}",
                stderr(&r)
            );
        }
    }
    let out = t.join("check-latest.db");
    let _ = std::fs::remove_file(&out);
    restore_ok(replica, "app", &out, None);
    assert_eq!(
        content_hash(&out),
        states.last().unwrap().0,
        "{what}: latest"
    );
}

/// Issue #16: a prune interrupted anywhere (any subset of its first phase, the snapshots; any
/// subset of its second, the segments; a `walsync prune` killed with -9 as it deletes) leaves
/// every point of the window and the latest restoring exactly, and no point restoring wrong.
fn prune_interrupted(backend: Backend) {
    let t = TestDir::new("prune-kill");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let states = record_history(&t, &replica, &db, 12);
    // The window is relative to each prune's own clock, so every prune is given one that
    // starts 1.5 s before state 9: that state and the later ones stay inside it.
    let window = states[9].1;
    let keep_now = || {
        let start = window.before(Duration::from_millis(1500));
        format!("{}ms", Stamp::now().since(start).as_millis())
    };
    let keep = keep_now();
    let (doomed, _) = dry_run(&replica, &keep);
    let (snaps, segs): (Vec<&String>, Vec<&String>) =
        doomed.iter().partition(|k| k.contains("/snapshots/"));
    assert!(snaps.len() >= 2 && segs.len() >= 30, "{doomed:?}");
    let (st, _) = replica.storage();

    // Phase one stopped with every other snapshot gone (the newest first, the worst order).
    for k in snaps.iter().rev().step_by(2) {
        st.delete(k).unwrap();
    }
    restores_exactly_or_fails(&t, &replica, &states, window, "some old snapshots gone");

    // A real prune, killed as it logs its first deletion. Its stderr is a pipe of one page,
    // so it blocks on logging until read, and the kill lands while it deletes.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walsync"))
        .args([
            "prune",
            "app",
            "-b",
            &replica.url(),
            "--retention",
            &keep_now(),
        ])
        .env("RUST_LOG", "walsync=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&err),
            libc::F_SETPIPE_SZ,
            4096,
        )
    };
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(err));
    let first = lines
        .by_ref()
        .map_while(|l| l.ok())
        .find(|l| l.contains(" deleted "));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.is_some(), "the prune deleted nothing");
    let left: Vec<String> = all_keys(&replica, "app")
        .into_iter()
        .filter(|k| doomed.contains(k))
        .collect();
    eprintln!(
        "killed with {} of {} doomed objects left",
        left.len(),
        doomed.len()
    );
    if backend == Backend::Local {
        assert!(!left.is_empty(), "the kill landed after the prune finished");
    }
    restores_exactly_or_fails(&t, &replica, &states, window, "a prune killed with -9");

    // Phase two stopped with every other remaining segment gone.
    for k in snaps {
        st.delete(k).unwrap();
    }
    for k in segs.iter().step_by(2) {
        st.delete(k).unwrap();
    }
    restores_exactly_or_fails(
        &t,
        &replica,
        &states,
        window,
        "snapshots and some segments gone",
    );

    // The next prune finishes the job; before the window, one line naming the oldest time.
    let o = walsync(&[
        "prune",
        "app",
        "-b",
        &replica.url(),
        "--retention",
        &keep_now(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(all_keys(&replica, "app")
        .iter()
        .all(|k| !doomed.contains(k)));
    restores_exactly_or_fails(&t, &replica, &states, window, "after the prune");
    let r = restore(&replica, "app", &t.join("old.db"), Some(&states[0].1.iso()));
    let first = stderr(&r).lines().next().unwrap_or("").to_string();
    assert!(first.contains("; the earliest is at "), "{first}");
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(v.status.success(), "{}", stderr(&v));
}

crate::both!(prune_interrupted_anywhere, super::prune_interrupted);
