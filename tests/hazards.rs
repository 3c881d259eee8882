//! Issue #12: reproduced paths to a wrong restore or to writing where walsync must not. Each
//! test failed on the commit before its fix.

use std::time::Duration;

use crate::harness::*;

/// Finding 1: a namespace with a `snapshots` (or `wal`) path component. Keys were parsed by
/// looking for `/snapshots/` first, so every WAL segment of such a namespace was ignored:
/// restore exit 0 with the first snapshot's rows only, verify "chain continuous".
fn namespace_named_snapshots_keeps_its_segments(backend: Backend) {
    let t = TestDir::new("ns-snapshots");
    let replica = Replica::new(&t, backend);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let cfg = t.join("walsync.toml");
    let storage = crate::many::storage_toml(backend, &replica);
    std::fs::write(
        &cfg,
        format!("[storage]\n{storage}\n[[databases]]\npath = \"app.db\"\nprefix = \"team/snapshots/wal\"\n\n[defaults]\nsync_interval = \"0\"\n"),
    )
    .unwrap();
    let cfgs = cfg.to_str().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["watch", "--config", cfgs]);
    let d = Daemon::spawn(cmd, &t.join("log"));
    d.wait_log("uploaded", Duration::from_secs(20));
    for i in 0..50 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    let out = t.join("out.db");
    let want = content_hash(&db);
    wait_until("all 50 rows restorable", Duration::from_secs(30), || {
        let _ = std::fs::remove_file(&out);
        walsync(&[
            "restore",
            "--prefix",
            "team/snapshots/wal",
            "-o",
            out.to_str().unwrap(),
            "--config",
            cfgs,
        ])
        .status
        .success()
            && content_hash(&out) == want
    });
    d.stop();
    let segs = replica.objects("team/snapshots/wal", "wal").len();
    assert!(segs >= 1, "segments shipped");
    let o = walsync(&["verify", "--prefix", "team/snapshots/wal", "--config", cfgs]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    if o.status.success() {
        assert!(text.contains(&format!("{} segment(s)", segs)), "{text}");
    }
}

/// Finding 5: names from storage are untrusted. A namespace `tenants/../../evil` in the
/// bucket must not make `restore-all` write outside `--output-dir`.
fn restore_all_stays_inside_output_dir(backend: Backend) {
    let t = TestDir::new("traversal");
    let replica = Replica::new(&t, backend);
    let db = t.join("tenants").join("good.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        .unwrap();
    let o = walsync(&[
        "snapshot",
        db.to_str().unwrap(),
        "-b",
        &format!("{}/tenants", replica.url()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Copy the good snapshot (with its metadata) under a hostile name.
    let (st, prefix) = replica.storage();
    let good = replica.objects("tenants/good", "snapshots");
    assert_eq!(good.len(), 1, "{good:?}");
    let body = st.get(&good[0]).unwrap();
    let mut bytes = Vec::new();
    let meta = body.meta.clone();
    std::io::Read::read_to_end(&mut { body.reader }, &mut bytes).unwrap();
    let evil_ns = walsync::layout::join(&prefix, "tenants/../../evil");
    let key = format!("{evil_ns}/snapshots/20261203000000000.db");
    if st
        .put(&key, &mut &bytes[..], bytes.len() as u64, &meta)
        .is_err()
    {
        eprintln!("store refused {key}");
        return; // a store that refuses such keys is safe by itself
    }
    let cfg = t.join("walsync.toml");
    let storage = crate::many::storage_toml(backend, &replica);
    std::fs::write(
        &cfg,
        format!("[storage]\n{storage}\n[[databases]]\ndir = \"tenants\"\nprefix = \"tenants\"\n"),
    )
    .unwrap();
    let outdir = t.join("a").join("b").join("out");
    let o = walsync(&[
        "restore-all",
        "--config",
        cfg.to_str().unwrap(),
        "--output-dir",
        outdir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a plain relative path"),
        "{}",
        stderr(&o)
    );
    assert!(!t.join("a").join("evil.db").exists());
    assert!(!t.join("evil.db").exists());
    assert_eq!(
        content_hash(&outdir.join("tenants").join("good.db")),
        content_hash(&db)
    );
}

crate::both!(
    namespace_named_snapshots_keeps_its_segments,
    super::namespace_named_snapshots_keeps_its_segments
);
crate::both!(
    restore_all_stays_inside_output_dir,
    super::restore_all_stays_inside_output_dir
);
