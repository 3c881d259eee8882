//! Issue #6, test 3: `walsync snapshot` from cron while a `walsync watch` daemon replicates the
//! same database. The daemon owns the database; the cron run asks it (a request file in the
//! spool directory and SIGUSR1) and waits for its answer, so both stay in one chain. Exit codes
//! reflect success, and a request naming another replica is refused.

use std::thread::sleep;
use std::time::Duration;

use crate::harness::*;
use crate::workload;

fn cron_snapshots_during_writes(backend: Backend) {
    let t = TestDir::new("cron");
    let db = t.join("app.db");
    let replica = Replica::new(&t, backend);
    let mut c = open_app(&db);
    workload::schema(&c);
    let d = Daemon::start(
        &[&db],
        &replica,
        &["--sync-interval", "100ms"],
        &t.join("log"),
    );
    d.wait_log("uploaded", Duration::from_secs(20));
    let snaps_before = replica.objects("app", "snapshots").len();
    let mut rng = Rng(77);
    for round in 0..4 {
        for i in 0..20 {
            workload::step(&mut c, &mut rng, round == 2 && i == 5);
        }
        let o = walsync(&["snapshot", db.to_str().unwrap(), "-b", &replica.url()]);
        assert!(o.status.success(), "cron run {round}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("snapshot uploaded to ") && out.trim_end().ends_with("app"),
            "{out}"
        );
        sleep(Duration::from_millis(50));
    }
    let snaps = replica.objects("app", "snapshots").len();
    assert!(
        snaps >= snaps_before + 4,
        "{snaps_before} snapshots before, {snaps} after four cron runs"
    );
    d.wait_log("snapshot asked for by pid", Duration::from_secs(1));
    // A request for another replica than the daemon's is refused, naming both.
    let other = t.join("other-replica");
    let o = walsync(&[
        "snapshot",
        db.to_str().unwrap(),
        "-b",
        other.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("this database is replicated to "),
        "{}",
        stderr(&o)
    );
    for _ in 0..10 {
        workload::step(&mut c, &mut rng, false);
    }
    drop(c);
    d.stop();
    let out = t.join("restored.db");
    restore_ok(&replica, "app", &out, None);
    integrity_ok(&out);
    assert_eq!(content_hash(&out), content_hash(&db));
    // With the daemon gone, cron takes the snapshot itself.
    let o = walsync(&["snapshot", db.to_str().unwrap(), "-b", &replica.url()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(replica.objects("app", "snapshots").len(), snaps + 1);
}

crate::both!(
    cron_snapshots_during_writes,
    super::cron_snapshots_during_writes
);

/// The packaged set-up: the daemon runs from a config file and cron names the same file.
#[test]
fn cron_with_the_daemons_config_file() {
    let t = TestDir::new("cron-config");
    let db = t.join("app.db");
    let mut c = open_app(&db);
    workload::schema(&c);
    let replica = t.join("replica");
    let cfg = t.join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nbucket = \"{}\"\n[[databases]]\npath = \"app.db\"\nprefix = \"tenants/app\"\n",
            replica.display()
        ),
    )
    .unwrap();
    let log = t.join("log");
    let d = Daemon::start_args(&["watch", "--config", cfg.to_str().unwrap()], &log);
    d.wait_log("uploaded", Duration::from_secs(20));
    let mut rng = Rng(5);
    for _ in 0..20 {
        workload::step(&mut c, &mut rng, false);
    }
    let o = walsync(&["snapshot", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_log("snapshot asked for by pid", Duration::from_secs(1));
    let other = t.join("other.db");
    open_app(&other);
    let o = walsync(&[
        "snapshot",
        "--config",
        cfg.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!(
            "walsync: error: database {} is not in the config file",
            other.canonicalize().unwrap().display()
        )),
        "{}",
        stderr(&o)
    );
    drop(c);
    d.stop();
    let out = t.join("restored.db");
    let o = walsync(&[
        "restore",
        "--config",
        cfg.to_str().unwrap(),
        "--prefix",
        "tenants/app",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(content_hash(&out), content_hash(&db));
}
