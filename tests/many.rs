//! Many databases in one process: names colliding across directories, the config file with a
//! `dir` entry, `restore --prefix` and `restore-all`.

use std::thread::sleep;
use std::time::Duration;

use crate::harness::*;
use crate::workload;

/// The `[storage]` keys of a config file for this test's replica.
pub fn storage_toml(backend: Backend, replica: &Replica) -> String {
    match backend {
        Backend::S3 => format!(
            "bucket = \"{}\"\nendpoint = \"{}\"\n",
            replica.url(),
            std::env::var("AWS_ENDPOINT_URL_S3").unwrap_or_default()
        ),
        Backend::Local => format!("bucket = \"{}\"\n", replica.url()),
    }
}

/// Issue #4, test 1 (first part): 50 databases whose file names collide across directories,
/// written concurrently while one `walsync watch` replicates them all (named on the command
/// line); SIGTERM; `restore-all` with a config file describing the same databases (two `dir`
/// entries) finds the same layout and reproduces every one exactly.
fn colliding_names_written_concurrently(backend: Backend) {
    let t = TestDir::new("many");
    let replica = Replica::new(&t, backend);
    let mut dbs = Vec::new();
    for dir in ["east", "west"] {
        std::fs::create_dir_all(t.join(dir)).unwrap();
        for i in 0..25 {
            dbs.push(t.join(dir).join(format!("tenant{i}.db")));
        }
    }
    let conns: Vec<_> = dbs.iter().map(|p| open_app(p)).collect();
    for c in &conns {
        workload::schema(c);
    }
    let refs: Vec<&std::path::Path> = dbs.iter().map(|p| p.as_path()).collect();
    let d = Daemon::start(
        &refs,
        &replica,
        &["--sync-interval", "200ms"],
        &t.join("log"),
    );
    let writers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                let mut rng = Rng(1000 + i as u64);
                for k in 0..40 {
                    workload::step(&mut c, &mut rng, k == 20 && i % 10 == 0);
                    if k % 10 == 0 {
                        sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    d.stop();
    // The command line named them east/tenantN and west/tenantN; a config with two dir entries
    // gives the same namespaces, so restore-all finds every one.
    let cfg = t.join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\n{}\n[[databases]]\ndir = \"east\"\nprefix = \"east\"\n\n[[databases]]\ndir = \"west\"\nprefix = \"west\"\n",
            storage_toml(backend, &replica)
        ),
    )
    .unwrap();
    let outdir = t.join("restored");
    let o = walsync(&[
        "restore-all",
        "--config",
        cfg.to_str().unwrap(),
        "--output-dir",
        outdir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        dbs.len()
    );
    for (i, p) in dbs.iter().enumerate() {
        let name = format!(
            "{}/tenant{}.db",
            if i < 25 { "east" } else { "west" },
            i % 25
        );
        let out = outdir.join(&name);
        integrity_ok(&out);
        assert_eq!(content_hash(&out), content_hash(p), "{name}");
    }
}

crate::both!(
    colliding_names_written_concurrently,
    super::colliding_names_written_concurrently
);

/// Issue #4, test 1 (second part): the config file (a `path` entry with a prefix and a `dir`
/// entry with a pattern, `${VAR}` expansion), `restore --prefix` and `restore-all`.
fn config_file_and_restore_all(backend: Backend) {
    let t = TestDir::new("config");
    let replica = Replica::new(&t, backend);
    std::fs::create_dir_all(t.join("tenants")).unwrap();
    let users = t.join("users.db");
    let mut dbs = vec![users.clone()];
    for i in 0..6 {
        dbs.push(t.join("tenants").join(format!("t{i}.db")));
    }
    std::fs::write(t.join("tenants").join("notes.txt"), b"not a database").unwrap();
    let mut conns: Vec<_> = dbs.iter().map(|p| open_app(p)).collect();
    for c in &conns {
        workload::schema(c);
    }
    let cfg = t.join("walsync.toml");
    let storage = storage_toml(backend, &replica);
    std::fs::write(
        &cfg,
        format!(
            "[storage]\n{storage}\n[defaults]\nsync_interval = \"${{WALSYNC_TEST_SYNC}}\"\n\n[[databases]]\npath = \"users.db\"\nprefix = \"accounts\"\n\n[[databases]]\ndir = \"tenants\"\npattern = \"t*.db\"\nprefix = \"tenants\"\n"
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["watch", "--config", cfg.to_str().unwrap()])
        .env("WALSYNC_TEST_SYNC", "100ms");
    let d = Daemon::spawn(cmd, &t.join("log"));
    let mut rng = Rng(77);
    for _ in 0..15 {
        for c in conns.iter_mut() {
            workload::step(c, &mut rng, false);
        }
    }
    sleep(Duration::from_millis(300));
    d.stop();

    // The config expands ${WALSYNC_TEST_SYNC}: every command reading it needs the variable.
    let walsync = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("WALSYNC_TEST_SYNC", "100ms")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = t.join("accounts.db");
    let o = walsync(&[
        "restore",
        "--prefix",
        "accounts",
        "-o",
        out.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(content_hash(&out), content_hash(&users));

    let outdir = t.join("restored");
    let o = walsync(&[
        "restore-all",
        "--config",
        cfg.to_str().unwrap(),
        "--output-dir",
        outdir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        7,
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        content_hash(&outdir.join("accounts.db")),
        content_hash(&users)
    );
    for i in 0..6 {
        let got = outdir.join("tenants").join(format!("t{i}.db"));
        integrity_ok(&got);
        assert_eq!(content_hash(&got), content_hash(&dbs[i + 1]), "t{i}");
    }
    // A second restore-all refuses to overwrite, naming the file.
    let o = walsync(&[
        "restore-all",
        "--config",
        cfg.to_str().unwrap(),
        "--output-dir",
        outdir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

crate::both!(
    config_file_and_restore_all,
    super::config_file_and_restore_all
);

/// Issue #4: a database created in a watched `dir` after start is picked up without a restart
/// and is restorable; a deleted one is let go; SIGHUP re-reads the config and adds a database.
fn dir_watching_and_sighup(backend: Backend) {
    let t = TestDir::new("dirwatch");
    let replica = Replica::new(&t, backend);
    std::fs::create_dir_all(t.join("tenants")).unwrap();
    let first = t.join("tenants").join("first.db");
    let c1 = open_app(&first);
    workload::schema(&c1);
    let cfg = t.join("walsync.toml");
    let storage = storage_toml(backend, &replica);
    let base_cfg = format!("[storage]\n{storage}\n[defaults]\nsync_interval = \"100ms\"\n\n[[databases]]\ndir = \"tenants\"\nprefix = \"tenants\"\n");
    std::fs::write(&cfg, &base_cfg).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["watch", "--config", cfg.to_str().unwrap()]);
    let d = Daemon::spawn(cmd, &t.join("log"));
    let log_text = || d.log_text();
    wait_until(
        "the first database shipped",
        Duration::from_secs(10),
        || !replica.objects("tenants/first", "snapshots").is_empty(),
    );

    // Created after start.
    let late = t.join("tenants").join("late.db");
    let mut c2 = open_app(&late);
    workload::schema(&c2);
    let mut rng = Rng(5);
    for _ in 0..10 {
        workload::step(&mut c2, &mut rng, false);
    }
    wait_until("the new database picked up", Duration::from_secs(5), || {
        log_text().contains("late.db added")
    });

    // Deleted: let go.
    let gone = t.join("tenants").join("gone.db");
    let c3 = open_app(&gone);
    workload::schema(&c3);
    wait_until("gone.db picked up", Duration::from_secs(5), || {
        log_text().contains("gone.db added")
    });
    drop(c3);
    sleep(Duration::from_millis(300));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", gone.display()));
    }
    wait_until("gone.db let go", Duration::from_secs(10), || {
        log_text().contains("gone.db let go")
    });

    // SIGHUP with a new path entry.
    let extra = t.join("extra.db");
    let c4 = open_app(&extra);
    workload::schema(&c4);
    c4.execute("INSERT INTO log(msg) VALUES ('extra')", [])
        .unwrap();
    std::fs::write(
        &cfg,
        format!("{base_cfg}\n[[databases]]\npath = \"extra.db\"\n"),
    )
    .unwrap();
    d.signal("HUP");
    wait_until("extra.db added on SIGHUP", Duration::from_secs(5), || {
        log_text().contains("extra.db added")
    });

    // SIGHUP with a changed interval (applied) and a changed prefix (needs a restart: said).
    std::fs::write(
        &cfg,
        format!(
            "{}\n[[databases]]\npath = \"extra.db\"\nprefix = \"moved\"\n",
            base_cfg.replace("100ms", "250ms")
        ),
    )
    .unwrap();
    d.signal("HUP");
    wait_until("the new interval applied", Duration::from_secs(5), || {
        log_text().contains("sync_interval 100ms -> 250ms")
    });
    wait_until("the prefix change reported", Duration::from_secs(5), || {
        let log = log_text();
        log.contains("extra.db its prefix changed in the config (namespace ")
            && log.contains("moved); restart walsync to apply it")
    });

    for _ in 0..10 {
        workload::step(&mut c2, &mut rng, false);
    }
    sleep(Duration::from_millis(300));
    d.stop();
    for (name, path) in [
        ("tenants/first", &first),
        ("tenants/late", &late),
        ("extra", &extra),
    ] {
        let out = t.join(&format!("{}.restored.db", name.replace('/', "-")));
        restore_ok(&replica, name, &out, None);
        integrity_ok(&out);
        assert_eq!(content_hash(&out), content_hash(path), "{name}");
    }
}

crate::both!(dir_watching_and_sighup, super::dir_watching_and_sighup);

/// Issue #4: many databases written at once stay within a small open-files limit: walsync
/// keeps only as many databases pinned as the limit allows after its reserve and the uploads in
/// flight, and releases the others right after each step. Here 200 databases under
/// `prlimit --nofile=256`; every one restores exactly.
#[test]
fn many_databases_within_an_open_files_limit() {
    let t = TestDir::new("nofile");
    let replica = Replica::new(&t, Backend::Local);
    let dbs: Vec<_> = (0..200).map(|i| t.join(&format!("db{i:03}.db"))).collect();
    let conns: Vec<_> = dbs.iter().map(|p| open_app(p)).collect();
    for c in &conns {
        workload::schema(c);
    }
    let log = t.join("log");
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=256", BIN, "watch"]).args(&dbs).args([
        "-b",
        &replica.url(),
        "--sync-interval",
        "100ms",
    ]);
    cmd.env("RUST_LOG", "walsync=info");
    let d = Daemon::spawn(cmd, &log);
    let log_text = || d.log_text();
    wait_until("every database replicated", Duration::from_secs(60), || {
        log_text().matches("starting generation").count() >= dbs.len()
    });
    for round in 0..5 {
        for (i, c) in conns.iter().enumerate() {
            c.execute(
                "INSERT INTO log(msg) VALUES (?1)",
                [format!("r{round} d{i}")],
            )
            .unwrap();
        }
        sleep(Duration::from_millis(200));
    }
    sleep(Duration::from_millis(500));
    d.stop();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("Too many open files") && !text.contains("ERROR"),
        "{text}"
    );
    for i in [0usize, 57, 123, 199] {
        let out = t.join(&format!("out{i}.db"));
        restore_ok(&replica, &format!("db{i:03}"), &out, None);
        assert_eq!(content_hash(&out), content_hash(&dbs[i]), "db{i:03}");
    }
}
