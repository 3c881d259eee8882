//! S3-only scenarios, against the real server the suite starts (Garage): the storage
//! conformance checks, an outage in the middle of replication, request accounting, and the
//! errors users see for wrong credentials, a missing bucket and an unreachable endpoint.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::proxy::{Fault, Proxy};
use crate::workload;

fn upstream() -> std::net::SocketAddr {
    ensure_s3();
    s3_upstream()
}

/// `walsync watch` of one database, sending its requests through `proxy`.
fn daemon_via(proxy: &Proxy, db: &Path, replica: &Replica, sync: &str, t: &TestDir) -> Daemon {
    let ep = proxy.endpoint();
    let args = ["--sync-interval", sync, "--endpoint", &ep];
    Daemon::start(&[db], replica, &args, &t.join("log"))
}

fn bucket() -> String {
    std::env::var("S3_BUCKET").unwrap_or_else(|_| "walsync-test".into())
}

#[test]
fn storage_conformance_s3() {
    ensure_s3();
    let url = walsync::storage::parse_url(&format!("s3://{}", bucket())).unwrap();
    let (st, _) = walsync::storage::open(&url, &Default::default()).unwrap();
    walsync::storage::local::check_storage(st.as_ref()).unwrap();
}

/// Issue #3, test 2: the S3 server is unreachable for a while during writes; walsync logs
/// retries, keeps its memory bounded, catches up, and the restore equals the source.
#[test]
fn outage_during_writes_is_survived() {
    let up = upstream();
    let proxy = Proxy::start(up);
    let t = TestDir::new("outage");
    let db = t.join("app.db");
    let replica = Replica::new(&t, Backend::S3);
    let mut c = open_app(&db);
    workload::schema(&c);
    let d = daemon_via(&proxy, &db, &replica, "200ms", &t);
    let mut rng = Rng(31);
    for _ in 0..30 {
        workload::step(&mut c, &mut rng, false);
    }
    sleep(Duration::from_millis(500));
    let outage: u64 = std::env::var("WALSYNC_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    proxy.set_down(true);
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(outage) {
        workload::step(&mut c, &mut rng, false);
        i += 1;
        sleep(Duration::from_millis(50));
    }
    let hwm_during = vm_hwm_kb(d.child.id());
    proxy.set_down(false);
    for _ in 0..20 {
        workload::step(&mut c, &mut rng, false);
    }
    let log = d.log_text();
    assert!(
        log.contains("retrying in"),
        "no retry logged during the outage:\n{log}"
    );
    drop(c);
    d.wait_log("recovered after", Duration::from_secs(90));
    let hwm = vm_hwm_kb(d.child.id());
    d.stop();
    eprintln!("outage {outage}s, {i} commits during it; walsync VmHWM {hwm_during} kB during, {hwm} kB after");
    assert!(hwm < 64 * 1024, "RSS must stay bounded: VmHWM {hwm} kB");
    assert_restores_equal(&replica, "app", &db, &t.join("restored.db"));
}

/// Issue #5's liveness finding: an upload that hangs (a dead connection: no answer, no reset)
/// must not stop the database from being captured. While the upload is stuck, committed frames
/// keep moving into the spool, the pin keeps moving, and the application's own checkpoints keep
/// its WAL bounded; once the connection is cut, everything is shipped and restores exactly.
#[test]
fn stalled_upload_does_not_stop_capture() {
    let proxy = Proxy::start(upstream());
    let t = TestDir::new("stall");
    let db = t.join("app.db");
    let wal = t.join("app.db-wal");
    let replica = Replica::new(&t, Backend::S3);
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE blob(id INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    let d = daemon_via(&proxy, &db, &replica, "200ms", &t);
    d.wait_log("uploaded", Duration::from_secs(20));
    proxy.set_fault(Fault::Stall);
    // 40 MB in 64 KiB rows, about 10x SQLite's auto-checkpoint threshold (1000 pages), with
    // short pauses between commits (an application committing without any pause can keep
    // the WAL from restarting while walsync's reader pins it: see README, "The WAL stays
    // bounded").
    let mut rng = Rng(77);
    let mut max_wal = 0u64;
    let t0 = Instant::now();
    for i in 0..640 {
        let b: Vec<u8> = (0..65536).map(|_| rng.below(256) as u8).collect();
        c.execute(
            "INSERT INTO blob(id, b) VALUES (?1, ?2)",
            rusqlite::params![i, b],
        )
        .unwrap();
        max_wal = max_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        sleep(Duration::from_millis(10));
    }
    let stalled = proxy.injected();
    let took = t0.elapsed();
    proxy.set_fault(Fault::None);
    drop(c);
    let log = d.log_text();
    d.stop();
    eprintln!(
        "40 MB written in {took:?} while uploads stalled ({stalled} requests hit): WAL peaked at {} KB",
        max_wal / 1024
    );
    assert!(stalled >= 1, "the stall must have hit an upload:\n{log}");
    assert!(
        max_wal < 16 << 20,
        "the WAL grew to {max_wal} bytes while an upload was stuck:\n{log}"
    );
    assert_restores_equal(&replica, "app", &db, &t.join("restored.db"));
}

/// Issue #3, test 3: one PUT per shipped segment (commits batched by the sync interval), no
/// LIST or GET during steady replication, and no request at all while idle.
#[test]
fn request_accounting() {
    let proxy = Proxy::start(upstream());
    let t = TestDir::new("requests");
    let db = t.join("app.db");
    let replica = Replica::new(&t, Backend::S3);
    let c = open_app(&db);
    workload::schema(&c);
    let d = daemon_via(&proxy, &db, &replica, "1s", &t);
    d.wait_log("uploaded", Duration::from_secs(10));
    sleep(Duration::from_millis(500));
    let startup = proxy.counts();
    proxy.reset();
    let before = replica.objects("app", "wal").len();
    for batch in 0..8 {
        for k in 0..5 {
            c.execute(
                "INSERT INTO log(msg) VALUES (?1)",
                [format!("b{batch}k{k}")],
            )
            .unwrap();
        }
        sleep(Duration::from_millis(2500));
    }
    let steady = proxy.counts();
    let segments = replica.objects("app", "wal").len() - before;
    eprintln!("startup requests {startup:?}; steady {steady:?} for {segments} segments");
    assert_eq!(segments, 8, "one segment per batch");
    assert_eq!(
        steady.get("PUT").copied().unwrap_or(0),
        segments as u64,
        "one PUT per segment"
    );
    for k in ["GET", "LIST", "HEAD", "POST", "DELETE"] {
        assert_eq!(
            steady.get(k).copied().unwrap_or(0),
            0,
            "no {k} during steady replication: {steady:?}"
        );
    }
    // Idle: nothing at all (the database is released after a few seconds).
    sleep(Duration::from_secs(5));
    proxy.reset();
    sleep(Duration::from_secs(10));
    assert!(
        proxy.counts().is_empty(),
        "requests while idle: {:?}",
        proxy.counts()
    );
    drop(c);
    d.stop();
    restore_ok(&replica, "app", &t.join("restored.db"), None);
    assert_eq!(content_hash(&t.join("restored.db")), content_hash(&db));
}

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    ensure_s3();
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Issue #3, test 4: wrong credentials, a missing bucket and an unreachable endpoint each give
/// one line naming the bucket and endpoint, and a non-zero exit.
#[test]
fn s3_errors_are_one_line_and_name_bucket_and_endpoint() {
    ensure_s3();
    let ep = std::env::var("AWS_ENDPOINT_URL_S3").unwrap();
    let b = bucket();
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            vec!["list".into(), "-b".into(), format!("s3://{b}")],
            vec![("AWS_SECRET_ACCESS_KEY", "wrong-secret")],
            format!("walsync: error: s3://{b} at {ep}: access denied to bucket {b} at {ep}"),
        ),
        (
            vec![
                "list".into(),
                "-b".into(),
                "s3://no-such-bucket-walsync".into(),
            ],
            vec![],
            format!("walsync: error: s3://no-such-bucket-walsync at {ep}: "),
        ),
        (
            vec![
                "list".into(),
                "-b".into(),
                format!("s3://{b}"),
                "--endpoint".into(),
                "http://127.0.0.1:9".into(),
            ],
            vec![],
            format!(
                "walsync: error: s3://{b} at http://127.0.0.1:9: cannot reach http://127.0.0.1:9"
            ),
        ),
    ];
    for (args, env, want) in cases {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = run_with_env(&a, &env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with(&want),
            "{args:?}:\n got {err}\nwant {want}..."
        );
        assert!(err.lines().count() <= 2, "{err}");
        if want.contains("access denied") {
            // S3's own reason, and which keys were refused.
            let line = err.lines().next().unwrap_or("");
            assert!(
                line.ends_with(
                    "; check the keys and the bucket's policy (keys from the environment)"
                ),
                "{err}"
            );
        }
    }
}

/// Run walsync and return its output and its peak RSS in KB, as walsync itself reports it at
/// exit (VmHWM; sampling /proc from outside misses the end of a short run).
fn run_sampling_hwm(args: &[&str]) -> (std::process::Output, u64) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "walsync=debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let kb = err
        .lines()
        .find_map(|l| l.split("peak RSS ").nth(1))
        .and_then(|v| v.trim_end_matches(" KB").parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS line in:\n{err}"));
    (out, kb)
}

/// Issue #3: a snapshot of a large database (1 GiB; `WALSYNC_TEST_BIG_MB`) goes up as a
/// streamed multipart upload and comes back through a streamed GET, each with peak RSS a few
/// MB above the same command on a tiny database; the restore equals the source.
#[test]
fn large_snapshot_streams_in_bounded_memory() {
    ensure_s3();
    let mb: u64 = std::env::var("WALSYNC_TEST_BIG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let t = TestDir::new("big");
    let replica = Replica::new(&t, Backend::S3);
    let tiny = t.join("tiny.db");
    let c = open_app(&tiny);
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let big = t.join("big.db");
    let c = rusqlite::Connection::open(&big).unwrap();
    c.execute_batch(&format!(
        "PRAGMA page_size=65536; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {})
         INSERT INTO t(b) SELECT randomblob(65000) FROM c;",
        mb * 16
    ))
    .unwrap();
    let _: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    drop(c);
    let size = std::fs::metadata(&big).unwrap().len();
    let (o, hwm_tiny) = run_sampling_hwm(&["snapshot", tiny.to_str().unwrap(), "-b", &replica.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t0 = Instant::now();
    let (o, hwm_big) = run_sampling_hwm(&["snapshot", big.to_str().unwrap(), "-b", &replica.url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let up = t0.elapsed();
    let out = t.join("restored.db");
    let (o, hwm_restore_tiny) = run_sampling_hwm(&[
        "restore",
        "tiny",
        "-b",
        &replica.url,
        "-o",
        t.join("tiny-restored.db").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t0 = Instant::now();
    let (o, hwm_restore) = run_sampling_hwm(&[
        "restore",
        "big",
        "-b",
        &replica.url,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let down = t0.elapsed();
    println!(
        "{} MB database: snapshot {:.1} s, peak RSS {} KB (tiny database: {} KB); restore {:.1} s, peak RSS {} KB (tiny: {} KB)",
        size >> 20,
        up.as_secs_f64(),
        hwm_big,
        hwm_tiny,
        down.as_secs_f64(),
        hwm_restore,
        hwm_restore_tiny
    );
    assert!(
        hwm_big < hwm_tiny + 8 * 1024,
        "snapshot of {size} bytes raised peak RSS from {hwm_tiny} KB to {hwm_big} KB"
    );
    assert!(
        hwm_restore < hwm_restore_tiny + 8 * 1024,
        "restore of {size} bytes raised peak RSS from {hwm_restore_tiny} KB to {hwm_restore} KB"
    );
    assert_eq!(content_hash(&out), content_hash(&big));
}

/// Issue #3, test 4 (second half): uploads cut in the middle (single PUT and multipart) and
/// injected 500s leave no object visible: `list` shows nothing new, and the replica still
/// restores exactly what it held before; once the faults stop, the next run succeeds.
#[test]
fn failed_uploads_leave_no_partial_objects() {
    use crate::proxy::Fault;
    let proxy = Proxy::start(upstream());
    let ep = proxy.endpoint();
    let t = TestDir::new("partial");
    let replica = Replica::new(&t, Backend::S3);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB); INSERT INTO t(b) VALUES (x'01');",
    )
    .unwrap();
    let snap = |extra: &[&str]| {
        let mut a = vec![
            "snapshot",
            db.to_str().unwrap(),
            "-b",
            &replica.url,
            "--endpoint",
            &ep,
        ];
        a.extend_from_slice(extra);
        run_with_env(&a, &[])
    };
    let o = snap(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = content_hash(&db);
    let keys = |replica: &Replica| {
        let url = walsync::storage::parse_url(&replica.url).unwrap();
        let (st, prefix) = walsync::storage::open(&url, &Default::default()).unwrap();
        let mut v = Vec::new();
        st.list(&prefix, &mut |e| v.push((e.key, e.size))).unwrap();
        v
    };
    let before = keys(&replica);
    // ~20 MB of new pages: the next snapshot is a multipart upload, its segment a single PUT.
    c.execute_batch(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 320)
         INSERT INTO t(b) SELECT randomblob(65000) FROM c;",
    )
    .unwrap();
    for fault in [
        Fault::ResetMidUpload,
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(413),
    ] {
        proxy.set_fault(fault);
        let o = snap(&[]);
        proxy.set_fault(Fault::None);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{fault:?}: {err}");
        assert!(err.starts_with("walsync: error: "), "{fault:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{fault:?}: {err}");
        if fault == Fault::Status(413) {
            // A proxy in front of S3 limiting request bodies (nginx's default is 1 MB).
            assert!(
                err.contains(&format!("HTTP 413: {ep} refused a request body of this size (walsync sends up to 16 MiB per request); if a proxy stands in front of S3, raise its limit (nginx: client_max_body_size)")),
                "{err}"
            );
        }
        assert_eq!(keys(&replica), before, "{fault:?} left an object behind");
        let out = t.join("restored.db");
        restore_ok(&replica, "app", &out, None);
        assert_eq!(content_hash(&out), first, "{fault:?}");
        std::fs::remove_file(&out).unwrap();
    }
    assert!(proxy.injected() >= 4);
    let o = snap(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = t.join("restored.db");
    restore_ok(&replica, "app", &out, None);
    assert_eq!(content_hash(&out), content_hash(&db));
}

/// Issue #15 / #12 finding 4: with a slow store (every answer 200 ms late) and commits coming
/// faster than uploads, pending captures merge into one object instead of queueing: the spool
/// holds a few objects at any time, far fewer PUTs than commits, and the restore is exact.
#[test]
fn slow_store_merges_the_backlog() {
    let proxy = Proxy::start(upstream());
    let t = TestDir::new("slow-merge");
    let db = t.join("app.db");
    let spool = t.join(".app.db-walsync");
    let replica = Replica::new(&t, Backend::S3);
    let mut c = open_app(&db);
    workload::schema(&c);
    let d = daemon_via(&proxy, &db, &replica, "0", &t);
    d.wait_log("uploaded", Duration::from_secs(20));
    proxy.set_fault(Fault::Slow(Duration::from_millis(200)));
    let mut rng = Rng(5);
    let (mut max_spooled, mut hwm) = (0usize, 0u64);
    let commits = 300;
    for _ in 0..commits {
        workload::step(&mut c, &mut rng, false);
        let n = std::fs::read_dir(&spool).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                .count()
        });
        max_spooled = max_spooled.max(n);
        hwm = hwm.max(vm_hwm_kb(d.child.id()));
        sleep(Duration::from_millis(5));
    }
    proxy.set_fault(Fault::None);
    drop(c);
    d.stop();
    let segments = replica.objects("app", "wal").len();
    let log = std::fs::read_to_string(t.join("log")).unwrap();
    eprintln!(
        "{commits} commits against a 200 ms store: {segments} segment objects, at most {max_spooled} pending in the spool, VmHWM {hwm} kB"
    );
    assert!(log.contains("merged with pending frames"), "{log}");
    assert!(
        segments * 4 < commits,
        "{segments} objects for {commits} commits"
    );
    assert!(max_spooled <= 4, "{max_spooled} segments pending at once");
    assert_restores_equal(&replica, "app", &db, &t.join("restored.db"));
}

/// Issue #12 finding 4: storage down while the application writes far more than the spool
/// may hold. Merged segments keep the objects few, and compaction keeps a merged segment near
/// the pages it changed; past the limit (64 MiB, or twice the database) the pending objects are
/// dropped and a new generation starts from a snapshot, so the spool stays bounded on the
/// application's disk and RSS stays flat; when storage returns the restore equals the source.
/// `WALSYNC_TEST_OUTAGE_MB` (default 160) sets how much is written during the outage.
///
/// Two applications: one rewriting a small working set (compaction alone keeps the spool
/// small), and one with `auto_vacuum=FULL` that also deletes (its commits shrink the database,
/// which compaction leaves alone, so the limit is what bounds the spool).
fn outage_keeps_the_spool_bounded(name: &str, auto_vacuum: bool) {
    let proxy = Proxy::start(upstream());
    let t = TestDir::new(name);
    let db = t.join("app.db");
    let spool = t.join(".app.db-walsync");
    let replica = Replica::new(&t, Backend::S3);
    let c = open_app(&db);
    if auto_vacuum {
        // The database file exists already (WAL mode is in its header): VACUUM applies it.
        c.execute_batch("PRAGMA auto_vacuum=FULL; VACUUM").unwrap();
        let av: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(av, 1, "auto_vacuum=FULL in effect");
    }
    c.execute_batch("CREATE TABLE blob(id INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    let d = daemon_via(&proxy, &db, &replica, "200ms", &t);
    d.wait_log("uploaded", Duration::from_secs(20));
    proxy.set_down(true);
    let mb: u64 = std::env::var("WALSYNC_TEST_OUTAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    let spool_bytes = || {
        std::fs::read_dir(&spool).map_or(0, |rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
    };
    let (mut max_spool, mut max_db, mut max_wal, mut hwm) = (0u64, 0u64, 0u64, 0u64);
    let mut rng = Rng(99);
    for i in 0..mb * 16 {
        // 64 KiB rows, half of them replacing earlier ones: the database stays smaller than
        // what is written.
        let b: Vec<u8> = (0..65536).map(|_| rng.below(256) as u8).collect();
        c.execute(
            "INSERT OR REPLACE INTO blob(id, b) VALUES (?1, ?2)",
            rusqlite::params![(i % 400) as i64, b],
        )
        .unwrap();
        if auto_vacuum && i % 3 == 0 {
            c.execute("DELETE FROM blob WHERE id = ?1", [((i * 7) % 400) as i64])
                .unwrap();
        }
        if i % 16 == 0 {
            max_spool = max_spool.max(spool_bytes());
            max_wal = max_wal.max(wal_len(&db));
            max_db = max_db.max(std::fs::metadata(&db).map_or(0, |m| m.len()));
            hwm = hwm.max(vm_hwm_kb(d.child.id()));
        }
    }
    proxy.set_down(false);
    let want = content_hash(&db);
    drop(c);
    d.wait_log("recovered after", Duration::from_secs(120));
    d.stop();
    let log = std::fs::read_to_string(t.join("log")).unwrap();
    let limit = (64u64 << 20).max(2 * max_db);
    eprintln!(
        "{name}: {mb} MB written while storage was down: spool peaked at {} MB (limit {} MB; database {} MB, WAL {} MB), VmHWM {hwm} kB, dropped: {}",
        max_spool >> 20,
        limit >> 20,
        max_db >> 20,
        max_wal >> 20,
        log.contains("dropped")
    );
    for l in log.lines().filter(|l| l.contains("dropped")) {
        eprintln!("  {}", l.split_once(" the spool ").map_or(l, |(_, r)| r));
    }
    if auto_vacuum {
        assert!(
            log.contains("dropped"),
            "the limit was never reached:\n{log}"
        );
    }
    // What the bound holds by construction: the limit (objects waiting), the object an upload
    // is reading when the rest is dropped (never dropped, but a merged backlog stops growing
    // at 16 MiB, so at most that or one capture: before that cap it could be the whole
    // backlog, and a clean-clone CI run under load peaked at 163 MB with the limit at 64 MB,
    // database 25 MB, WAL 33 MB), one snapshot of the database, one capture in progress (at
    // most what the WAL held), and a margin (the page map; the WAL and the spool are sampled).
    let cap = walsync::replicate::upload::MERGE_CAP;
    assert!(
        max_spool <= limit + cap + max_db + 2 * max_wal + (32 << 20),
        "spool peaked at {max_spool} bytes"
    );
    assert!(hwm < 64 * 1024, "RSS must stay bounded: VmHWM {hwm} kB");
    let out = t.join("restored.db");
    restore_ok(&replica, "app", &out, None);
    integrity_ok(&out);
    assert_eq!(content_hash(&out), want);
}

#[test]
fn long_outage_keeps_the_spool_bounded() {
    outage_keeps_the_spool_bounded("spool-bound", false);
}

#[test]
fn long_outage_with_shrinking_commits_drops_and_resnapshots() {
    outage_keeps_the_spool_bounded("spool-bound-av", true);
}

/// Single PUTs sign the object's SHA-256 as their payload hash: the server itself checks the
/// bytes it receives, and refuses an object whose bytes do not match (a spool file damaged on
/// disk, a proxy that altered the body), naming the key.
#[test]
fn s3_verifies_the_signed_payload() {
    let t = TestDir::new("signed-payload");
    let replica = Replica::new(&t, Backend::S3);
    let (st, prefix) = replica.storage();
    let body = b"the bytes walsync hashed".to_vec();
    let sha = {
        use sha2::{Digest, Sha256};
        walsync::digest::hex(Sha256::new_with_prefix(&body))
    };
    let mut meta = walsync::layout::Meta::new();
    meta.insert("sha256".into(), sha);
    let key = walsync::layout::join(&prefix, "x/good.bin");
    st.put(&key, &mut &body[..], body.len() as u64, &meta)
        .unwrap();
    let bad_key = walsync::layout::join(&prefix, "x/bad.bin");
    let altered = b"the bytes walsync hashes!".to_vec();
    let e = st
        .put(&bad_key, &mut &altered[..], altered.len() as u64, &meta)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&bad_key), "{e}");
    let mut keys = Vec::new();
    st.list(&walsync::layout::join(&prefix, "x/"), &mut |e| {
        keys.push(e.key)
    })
    .unwrap();
    assert_eq!(keys, vec![key], "the altered object must not exist");
}

/// Run `walsync ARGS` (warnings on stderr) with `fault` on in the proxy until a line it logs
/// satisfies `heal_at`, then clear the fault: the exit status and everything it logged.
fn run_healing(
    proxy: &Proxy,
    args: &[&str],
    fault: Fault,
    heal_at: impl Fn(&str) -> bool,
) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader};
    proxy.set_fault(fault);
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    for l in BufReader::new(child.stderr.take().unwrap()).lines() {
        let l = l.unwrap();
        if heal_at(&l) {
            proxy.set_fault(Fault::None);
        }
        err.push_str(&l);
        err.push('\n');
    }
    let status = child.wait().unwrap();
    proxy.set_fault(Fault::None);
    (status, err)
}

/// A snapshot download (one stream: under the size fetched as parallel ranges) that breaks off
/// mid-way resumes where it stopped: the retry asks for the rest with a range GET, and the
/// restore is exact.
#[test]
fn a_broken_snapshot_download_resumes_where_it_stopped() {
    let proxy = Proxy::start(upstream());
    let ep = proxy.endpoint();
    let t = TestDir::new("resume-dl");
    let replica = Replica::new(&t, Backend::S3);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 2000)
         INSERT INTO t(b) SELECT randomblob(2000) FROM c;",
    )
    .unwrap();
    drop(c);
    let o = walsync(&["snapshot", db.to_str().unwrap(), "-b", &replica.url()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = t.join("out.db");
    let url = replica.url();
    let args = [
        "restore",
        "app",
        "-o",
        out.to_str().unwrap(),
        "-b",
        &url,
        "--endpoint",
        &ep,
        "-f",
    ];
    proxy.reset();
    let (status, err) = run_healing(&proxy, &args, Fault::CutDownloads, |l| {
        l.contains("the download broke off after ")
    });
    assert!(status.success(), "{err}");
    assert!(err.contains("/snapshots/"), "{err}");
    assert!(!err.contains("SHA-256"), "{err}");
    let counts = proxy.counts();
    assert_eq!(counts.get("GET range"), Some(&1), "{counts:?}\n{err}");
    assert_eq!(counts.get("GET"), Some(&2), "{counts:?}\n{err}");
    assert_eq!(content_hash(&out), content_hash(&db));
}

/// A download cut off mid-way (or a 503 SlowDown, or a stalled answer) is the network's fault,
/// not the replica's:
/// restore and verify fetch the object again (one warning line per retry) and succeed exactly
/// once the network heals; when it does not, the one-line error says the download broke off and that the
/// stored object may be intact, never "SHA-256 mismatch" or "the replica is damaged".
#[test]
fn restore_and_verify_ride_out_broken_downloads() {
    use std::process::Stdio;
    let proxy = Proxy::start(upstream());
    let ep = proxy.endpoint();
    let t = TestDir::new("cutdl");
    let replica = Replica::new(&t, Backend::S3);
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 40)
         INSERT INTO t(b) SELECT randomblob(3000) FROM c;
         -- 72 MB: the snapshot is fetched as parallel byte ranges (restore/parts.rs).
         CREATE TABLE big(b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 72)
         INSERT INTO big(b) SELECT randomblob(1000000) FROM c;",
    )
    .unwrap();
    let d = Daemon::start(
        &[&db],
        &replica,
        &["--sync-interval", "100ms"],
        &t.join("log"),
    );
    for _ in 0..5 {
        c.execute("INSERT INTO t(b) VALUES (randomblob(9000))", [])
            .unwrap();
        wait_shipped(&replica, "app", &db, &t.join("scratch.db"));
    }
    d.stop();
    let out = t.join("out.db");
    let url = replica.url();
    let outs = out.to_str().unwrap().to_string();
    let restore_args = [
        "restore",
        "app",
        "-o",
        &outs,
        "-b",
        &url,
        "--endpoint",
        &ep,
        "-f",
    ];
    let verify_args = ["verify", "app", "-b", &url, "--endpoint", &ep];
    // Run a command under `fault` until its first retry line (holding `needle`), then heal.
    let heals = |args: &[&str], fault: Fault, needle: &str, each: &str| {
        let (status, err) = run_healing(&proxy, args, fault, |l| {
            l.contains(needle) && l.contains("again in")
        });
        assert!(status.success(), "{args:?} {fault:?}: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(
            !err.contains("SHA-256") && !err.contains("damaged"),
            "{err}"
        );
        // One line per retry, and one retry per object that failed while the fault was on.
        assert!(err.lines().all(|l| l.contains(each)), "{err}");
        err
    };
    let cut = "the download broke off after ";
    let slow_down = "HTTP 503";
    for (fault, needle) in [
        (Fault::CutDownloads, cut),
        (Fault::GetStatus(503), slow_down),
    ] {
        let each = "(attempt 1 of 5; fetching ";
        let err = heals(&restore_args, fault, needle, each);
        // The large snapshot came as parallel byte ranges, each fetched again.
        assert!(err.contains(" (bytes 0+16777216) again in "), "{err}");
        assert_eq!(content_hash(&out), content_hash(&db));
        std::fs::remove_file(&out).unwrap();
        heals(&verify_args, fault, needle, each);
    }
    // A storage answering 503 to everything, from the bucket check on, is waited out too
    // (an unreachable one still fails at once: s3_errors_are_one_line_...).
    let each = "(attempt 1 of 5; checking the bucket again in ";
    heals(&restore_args, Fault::Status(503), slow_down, each);
    assert_eq!(content_hash(&out), content_hash(&db));
    std::fs::remove_file(&out).unwrap();
    assert!(proxy.injected() >= 4);

    // A stalled answer (the server reads the request and says nothing): once the stall ends
    // with a cut connection, the GET is made again and the restore completes: one warning line
    // per stalled GET at most, none when the stalled request was on a reused keep-alive
    // connection (the client sends such a GET again on a new connection by itself, as it does
    // for any connection the server closed while idle).
    let injected = proxy.injected();
    proxy.set_fault(Fault::StallGets);
    let child = Command::new(BIN)
        .args(restore_args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("a request stalled", Duration::from_secs(30), || {
        proxy.injected() > injected
    });
    proxy.set_fault(Fault::None);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let stalls = proxy.injected() - injected;
    assert!(
        err.lines().count() as u64 <= stalls,
        "{stalls} stalls: {err}"
    );
    assert!(err.lines().all(|l| l.contains(" again in ")), "{err}");
    assert!(
        !err.contains("SHA-256") && !err.contains("damaged"),
        "{err}"
    );
    assert_eq!(content_hash(&out), content_hash(&db));
    std::fs::remove_file(&out).unwrap();

    // The network does not heal: one error line, exit 1, nothing written.
    proxy.set_fault(Fault::CutDownloads);
    let o = run_with_env(&restore_args, &[("RUST_LOG", "error")]);
    proxy.set_fault(Fault::None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(
        last.starts_with("walsync: error: s3://")
            && last.contains("/app/")
            && last.contains("the download broke off after ")
            && last.ends_with("; the stored object may be intact"),
        "{err}"
    );
    assert!(
        !err.contains("SHA-256") && !err.contains("damaged"),
        "{err}"
    );
    assert!(!out.exists(), "a failed restore left {}", out.display());
}
