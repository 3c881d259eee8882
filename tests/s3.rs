//! S3-only scenarios, against the real server the suite starts (Garage): the storage
//! conformance checks, an outage in the middle of replication, request accounting, and the
//! errors users see for wrong credentials, a missing bucket and an unreachable endpoint.

use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::proxy::Proxy;
use crate::workload;

fn upstream() -> std::net::SocketAddr {
    ensure_s3();
    let ep = std::env::var("AWS_ENDPOINT_URL_S3").unwrap();
    ep.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
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

fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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
    let ep = proxy.endpoint();
    let d = Daemon::start(
        &[&db],
        &replica,
        &["--sync-interval", "200ms", "--endpoint", &ep],
        &t.join("log"),
    );
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
    restore_ok(&replica, "app", &t.join("restored.db"), None);
    integrity_ok(&t.join("restored.db"));
    assert_eq!(content_hash(&t.join("restored.db")), content_hash(&db));
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
    let ep = proxy.endpoint();
    let d = Daemon::start(
        &[&db],
        &replica,
        &["--sync-interval", "1s", "--endpoint", &ep],
        &t.join("log"),
    );
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
    }
}
