//! Issue #16: the daemon's start-up does not list the world. `state.json` names the newest
//! object as of its writing, so a restart lists only what came after it; a stale `state.json`
//! (after `kill -9` it may lag by up to a minute of uploads), one naming an object that is
//! gone, or one that is not walsync's, still resumes from the real newest object, and every
//! case restores exactly.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;

fn write(db: &Path, v: &str) {
    let c = open_app(db);
    c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
}

/// The key the daemon said it resumed from, and how its listing went.
fn resumed_from(d: &Daemon) -> (String, String) {
    d.wait_log("found chain ending at ", std::time::Duration::from_secs(30));
    let log = d.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("found chain ending at "))
        .unwrap();
    let rest = line.split("found chain ending at ").nth(1).unwrap();
    let (key, how) = rest.split_once(' ').unwrap();
    (key.to_string(), how.to_string())
}

fn newest_key(replica: &Replica, name: &str) -> String {
    let mut all = replica.objects(name, "snapshots");
    all.extend(replica.objects(name, "wal"));
    let mut objs: Vec<_> = all
        .iter()
        .filter_map(|k| walsync::layout::parse_key(k, 0).map(|(_, o)| o))
        .collect();
    walsync::layout::sort(&mut objs);
    objs.last().unwrap().key.clone()
}

fn put_state(replica: &Replica, name: &str, json: &str) {
    let (st, prefix) = replica.storage();
    let key = walsync::layout::state_key(&walsync::layout::join(&prefix, name));
    st.put(
        &key,
        &mut json.as_bytes(),
        json.len() as u64,
        &Default::default(),
    )
    .unwrap();
}

fn get_state(replica: &Replica, name: &str) -> String {
    let (st, prefix) = replica.storage();
    let key = walsync::layout::state_key(&walsync::layout::join(&prefix, name));
    let mut s = String::new();
    std::io::Read::read_to_string(&mut st.get(&key).unwrap().reader, &mut s).unwrap();
    s
}

fn resume_from_state(backend: Backend) {
    let t = TestDir::new("resume");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let scratch = t.join("scratch.db");
    let out = t.join("out.db");
    let args = ["--sync-interval", "0"];

    // A history of a dozen objects; a clean stop writes state.json naming the newest.
    let d = Daemon::start(&[&db], &replica, &args, &t.join("log1"));
    for i in 0..12 {
        write(&db, &format!("first {i}"));
        wait_shipped(&replica, "app", &db, &scratch);
    }
    d.stop();
    let stale = get_state(&replica, "app");
    let newest = newest_key(&replica, "app");
    assert!(stale.contains(&newest), "{stale} names {newest}");

    // A restart lists nothing but what follows it.
    let d = Daemon::start(&[&db], &replica, &args, &t.join("log2"));
    let (key, how) = resumed_from(&d);
    assert_eq!(key, newest);
    assert!(how.contains("; 0 object(s) newer than "), "{how}");
    for i in 0..5 {
        write(&db, &format!("second {i}"));
        wait_shipped(&replica, "app", &db, &scratch);
    }
    d.kill9();

    // state.json put back to the first run's: five objects or more are newer than it.
    put_state(&replica, "app", &stale);
    let newest = newest_key(&replica, "app");
    let d = Daemon::start(&[&db], &replica, &args, &t.join("log3"));
    let (key, how) = resumed_from(&d);
    assert_eq!(
        key, newest,
        "resumed from the newest object, not state.json's"
    );
    assert!(!how.contains("; 0 object"), "{how}");
    write(&db, "third");
    wait_shipped(&replica, "app", &db, &scratch);
    d.stop();

    // Naming an object that is gone, then not walsync's at all: the whole namespace is listed.
    let (_, prefix) = replica.storage();
    let ns = walsync::layout::join(&prefix, "app");
    let later = Stamp::now().after(Duration::from_secs(86_400));
    let gone = format!(
        "{{\"generation\":4000000000,\"last_object\":\"{}\"}}",
        walsync::layout::segment_key(&ns, 4_000_000_000, later)
    );
    for (bad, says) in [
        (gone.as_str(), "which is gone; listing the whole namespace"),
        (
            "{\"hello\":1}",
            "is not one walsync wrote; listing the whole namespace",
        ),
    ] {
        put_state(&replica, "app", bad);
        let newest = newest_key(&replica, "app");
        let log = t.join(&format!("log-{}", bad.len()));
        let d = Daemon::start(&[&db], &replica, &args, &log);
        let (key, how) = resumed_from(&d);
        assert_eq!(key, newest);
        assert!(how.contains("object(s) listed"), "{how}");
        assert!(d.log_text().contains(says), "{}", d.log_text());
        write(&db, bad);
        wait_shipped(&replica, "app", &db, &scratch);
        d.stop();
    }
    assert_restores_equal(&replica, "app", &db, &out);
    let v = walsync(&["verify", "app", "-b", &replica.url()]);
    assert!(v.status.success(), "{}", stderr(&v));
}

crate::both!(resume_from_state_json, super::resume_from_state);

/// Issue #16: restore shows its progress on a terminal (objects, bytes, rate, ETA; the line
/// cleared at the end) and prints nothing of it otherwise.
#[test]
fn restore_progress_only_on_a_terminal() {
    let t = TestDir::new("progress");
    let replica = Replica::new(&t, Backend::Local);
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t(v) SELECT randomblob(1000) FROM n;")
        .unwrap();
    let o = walsync(&["snapshot", db.to_str().unwrap(), "-b", &replica.url()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = t.join("out.db");
    let o = restore(&replica, "app", &out, None);
    assert!(o.status.success());
    assert_eq!(
        stderr(&o),
        "",
        "no progress line when stderr is not a terminal"
    );
    // Under a pseudo-terminal (util-linux `script`).
    let out2 = t.join("out2.db");
    let cmd = format!(
        "{BIN} restore app -o {} -b {}",
        out2.display(),
        replica.url()
    );
    let o = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux) runs the restore under a terminal");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("\r\x1b[Krestoring app: ")
            && text.contains(" objects, ")
            && text.contains(" MB/s, ETA "),
        "{text:?}"
    );
    assert!(text.contains("\r\x1b[Krestored app to "), "{text:?}");
    assert_eq!(content_hash(&out2), content_hash(&db));
}
