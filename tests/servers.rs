//! Issue #17: two more independent S3 implementations beside Garage, both of which (unlike
//! Garage) enforce conditional writes: moto's server (Python; checks no signatures;
//! tests/s3/moto.sh) and s3s-fs (Rust, filesystem-backed; checks signatures;
//! tests/s3/s3s-fs.sh). Against each: replication with point-in-time restore and verify, a
//! large snapshot (multipart upload with signed parts, restored by parallel ranges), and the
//! namespace lease on S3 itself: a second walsync on another database of the same name is
//! refused naming the holder, and takes the lease at once when the holder stops. Against moto
//! also the storage conformance checks (in-process, with the suite's keys: moto takes any).

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;
use crate::workload;

/// One S3 server: endpoint, bucket, keys.
#[derive(Clone)]
struct Server {
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
}

/// Start (or reuse) a server with its project script; parse its `export` lines.
fn start(script: &str, port_var: &str, port: &str, vars: [&str; 4]) -> Result<Server, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let port = std::env::var(port_var).unwrap_or_else(|_| port.into());
    let o = Command::new(&script)
        .args(["start", &port])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !o.status.success() {
        return Err(format!("{} start failed: {}", script.display(), stderr(&o)));
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let get = |k: &str| {
        if k.is_empty() {
            return Ok("any".to_string()); // moto takes any keys
        }
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("export {k}=")))
            .map(str::to_string)
            .ok_or_else(|| format!("{} printed no {k}: {out}", script.display()))
    };
    Ok(Server {
        endpoint: get(vars[0])?,
        bucket: get(vars[1])?,
        key: get(vars[2])?,
        secret: get(vars[3])?,
    })
}

fn moto() -> Server {
    static S: OnceLock<Result<Server, String>> = OnceLock::new();
    let vars = ["MOTO_ENDPOINT", "MOTO_BUCKET", "", ""];
    S.get_or_init(|| start("tests/s3/moto.sh", "WALSYNC_TEST_MOTO_PORT", "3950", vars))
        .clone()
        .unwrap_or_else(|e| panic!("the moto tests need moto's server: {e}"))
}

fn s3s_fs() -> Server {
    static S: OnceLock<Result<Server, String>> = OnceLock::new();
    let vars = ["S3S_ENDPOINT", "S3S_BUCKET", "S3S_KEY", "S3S_SECRET"];
    S.get_or_init(|| start("tests/s3/s3s-fs.sh", "WALSYNC_TEST_S3S_PORT", "3960", vars))
        .clone()
        .unwrap_or_else(|e| panic!("the s3s-fs tests need s3s-fs: {e}"))
}

/// `walsync ARGS` against `srv`, with its keys.
fn cmd(srv: &Server, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .args(["--endpoint", &srv.endpoint])
        .env("AWS_ACCESS_KEY_ID", &srv.key)
        .env("AWS_SECRET_ACCESS_KEY", &srv.secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn");
    c
}

fn run(srv: &Server, args: &[&str]) -> Output {
    cmd(srv, args).output().unwrap()
}

fn restored(srv: &Server, url: &str, out: &Path, pit: Option<&str>) -> Option<String> {
    let o = out.to_str().unwrap();
    let mut a = vec!["restore", "app", "-o", o, "-b", url, "-f"];
    if let Some(t) = pit {
        a.extend(["--point-in-time", t]);
    }
    let r = run(srv, &a);
    r.status.success().then(|| content_hash(out))
}

fn wait_restorable(srv: &Server, url: &str, src: &Path, out: &Path) {
    let want = content_hash(src);
    wait_until("restorable", Duration::from_secs(60), || {
        restored(srv, url, out, None).as_deref() == Some(want.as_str())
    });
}

fn watch(srv: &Server, db: &Path, url: &str, log: &Path) -> Daemon {
    let args = [
        "watch",
        db.to_str().unwrap(),
        "-b",
        url,
        "--sync-interval",
        "0",
    ];
    let mut c = cmd(srv, &args);
    c.env("RUST_LOG", "walsync=debug");
    Daemon::spawn(c, log)
}

#[test]
fn storage_conformance_moto() {
    let srv = moto();
    let url = walsync::storage::parse_url(&format!("s3://{}/conformance", srv.bucket)).unwrap();
    let opts = walsync::storage::s3::S3Options {
        endpoint: Some(srv.endpoint),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    // This process's own client takes its keys from the environment: the Garage keys the
    // suite exports do (moto takes any), and the environment is set in one place only.
    ensure_s3();
    let (st, _) = walsync::storage::open(&url, &opts).unwrap();
    walsync::storage::local::check_storage(st.as_ref()).unwrap();
}

#[test]
fn replication_point_in_time_and_leases_on_moto() {
    replication_point_in_time_and_leases(&moto(), "moto");
}

#[test]
fn replication_point_in_time_and_leases_on_s3s_fs() {
    replication_point_in_time_and_leases(&s3s_fs(), "s3sfs");
}

fn replication_point_in_time_and_leases(srv: &Server, tag: &str) {
    let bucket = &srv.bucket;
    let t = TestDir::new(tag);
    std::fs::create_dir_all(t.join("a")).unwrap();
    std::fs::create_dir_all(t.join("b")).unwrap();
    let (a, b) = (t.join("a/app.db"), t.join("b/app.db"));
    let name = t.path.file_name().unwrap().to_string_lossy().into_owned();
    let url = format!("s3://{bucket}/{name}");
    let out = t.join("out.db");
    let mut ca = open_app(&a);
    workload::schema(&ca);
    // 70 MB: a multipart upload with signed parts, restored by parallel byte ranges.
    ca.execute_batch(
        "CREATE TABLE big(b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 70)
         INSERT INTO big(b) SELECT randomblob(1000000) FROM c;",
    )
    .unwrap();
    let mut cb = open_app(&b);
    workload::schema(&cb);
    let mut rng = Rng(17);

    let d = watch(srv, &a, &url, &t.join("log-a"));
    for _ in 0..20 {
        workload::step(&mut ca, &mut rng, false);
    }
    wait_restorable(srv, &url, &a, &out);
    let first = content_hash(&a);
    let at = Stamp::now().iso();
    // The next commit's segment gets a later timestamp than `at` (ms resolution).
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..20 {
        workload::step(&mut ca, &mut rng, false);
    }
    wait_restorable(srv, &url, &a, &out);
    assert!(
        d.log_text()
            .contains("enforces conditional writes; one lease per namespace"),
        "{}",
        d.log_text()
    );

    // Another database of the same name, from elsewhere: refused by the lease.
    let o = run(srv, &["snapshot", b.to_str().unwrap(), "-b", &url]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "walsync: error: namespace {name}/app is leased by walsync on "
        )) && err.contains(&format!(
            " (pid {}, database {}), renewed ",
            d.child.id(),
            a.canonicalize().unwrap().display()
        )),
        "{err}"
    );
    drop(ca);
    d.stop();

    // The holder stopped and released its lease: the newcomer takes it at once.
    workload::step(&mut cb, &mut rng, false);
    let d2 = watch(srv, &b, &url, &t.join("log-b"));
    d2.wait_log("taking the lease of ", Duration::from_secs(10));
    assert!(
        d2.log_text().contains(" over (released)"),
        "{}",
        d2.log_text()
    );
    wait_restorable(srv, &url, &b, &out);
    drop(cb);
    d2.stop();

    assert_eq!(restored(srv, &url, &out, None), Some(content_hash(&b)));
    assert_eq!(restored(srv, &url, &out, Some(&at)), Some(first));
    let v = run(srv, &["verify", "app", "-b", &url]);
    assert!(v.status.success(), "{}", stderr(&v));
}
