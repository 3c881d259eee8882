//! Issue #17: a second, independent S3 implementation, moto's server (tests/s3/moto.sh), which
//! unlike Garage enforces conditional writes. Against it: the storage conformance checks, and
//! replication with point-in-time restore and verify, and the namespace lease on S3 itself: a
//! second walsync on another database of the same name is refused naming the holder, and takes
//! the lease at once when the holder stops.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;
use crate::workload;

static MOTO: OnceLock<Result<(String, String), String>> = OnceLock::new();

/// The moto server's endpoint and bucket, started once per test run.
fn moto() -> (String, String) {
    let r = MOTO.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/moto.sh");
        let port = std::env::var("WALSYNC_TEST_MOTO_PORT").unwrap_or_else(|_| "3950".into());
        let o = Command::new(&script)
            .args(["start", &port])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !o.status.success() {
            return Err(format!("{} start failed: {}", script.display(), stderr(&o)));
        }
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .map(str::to_string)
                .ok_or_else(|| format!("moto.sh printed no {k}: {out}"))
        };
        Ok((get("MOTO_ENDPOINT")?, get("MOTO_BUCKET")?))
    });
    match r {
        Ok(x) => x.clone(),
        Err(e) => panic!("the moto tests need moto's server: {e}"),
    }
}

/// `walsync ARGS` against moto (any keys do: moto checks no signatures).
fn cmd(args: &[&str]) -> Command {
    let (ep, _) = moto();
    let mut c = Command::new(BIN);
    c.args(args)
        .args(["--endpoint", &ep])
        .env("AWS_ACCESS_KEY_ID", "moto")
        .env("AWS_SECRET_ACCESS_KEY", "moto")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    cmd(args).output().unwrap()
}

fn restored(url: &str, out: &Path, pit: Option<&str>) -> Option<String> {
    let o = out.to_str().unwrap();
    let mut a = vec!["restore", "app", "-o", o, "-b", url, "-f"];
    if let Some(t) = pit {
        a.extend(["--point-in-time", t]);
    }
    let r = run(&a);
    r.status.success().then(|| content_hash(out))
}

fn wait_restorable(url: &str, src: &Path, out: &Path) {
    let want = content_hash(src);
    wait_until("restorable from moto", Duration::from_secs(60), || {
        restored(url, out, None).as_deref() == Some(want.as_str())
    });
}

fn watch(db: &Path, url: &str, log: &Path) -> Daemon {
    let mut c = cmd(&[
        "watch",
        db.to_str().unwrap(),
        "-b",
        url,
        "--sync-interval",
        "0",
    ]);
    c.env("RUST_LOG", "walsync=debug");
    Daemon::spawn(c, log)
}

#[test]
fn storage_conformance_moto() {
    let (ep, bucket) = moto();
    let url = walsync::storage::parse_url(&format!("s3://{bucket}/conformance")).unwrap();
    let opts = walsync::storage::s3::S3Options {
        endpoint: Some(ep),
        region: Some("us-east-1".into()),
    };
    // This process's own client takes its keys from the environment: the Garage keys the
    // suite exports do (moto takes any), and the environment is set in one place only.
    ensure_s3();
    let (st, _) = walsync::storage::open(&url, &opts).unwrap();
    walsync::storage::local::check_storage(st.as_ref()).unwrap();
}

#[test]
fn replication_point_in_time_and_leases_on_moto() {
    let (_, bucket) = moto();
    let t = TestDir::new("moto");
    std::fs::create_dir_all(t.join("a")).unwrap();
    std::fs::create_dir_all(t.join("b")).unwrap();
    let (a, b) = (t.join("a/app.db"), t.join("b/app.db"));
    let name = t.path.file_name().unwrap().to_string_lossy().into_owned();
    let url = format!("s3://{bucket}/{name}");
    let out = t.join("out.db");
    let mut ca = open_app(&a);
    workload::schema(&ca);
    let mut cb = open_app(&b);
    workload::schema(&cb);
    let mut rng = Rng(17);

    let d = watch(&a, &url, &t.join("log-a"));
    for _ in 0..20 {
        workload::step(&mut ca, &mut rng, false);
    }
    wait_restorable(&url, &a, &out);
    let first = content_hash(&a);
    let at = walsync::time::iso(walsync::time::now_ms());
    // The next commit's segment gets a later timestamp than `at` (ms resolution).
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..20 {
        workload::step(&mut ca, &mut rng, false);
    }
    wait_restorable(&url, &a, &out);
    assert!(
        d.log_text()
            .contains("enforces conditional writes; one lease per namespace"),
        "{}",
        d.log_text()
    );

    // Another database of the same name, from elsewhere: refused by the lease.
    let o = run(&["snapshot", b.to_str().unwrap(), "-b", &url]);
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
    let d2 = watch(&b, &url, &t.join("log-b"));
    d2.wait_log("taking the lease of ", Duration::from_secs(10));
    assert!(
        d2.log_text().contains(" over (released)"),
        "{}",
        d2.log_text()
    );
    wait_restorable(&url, &b, &out);
    drop(cb);
    d2.stop();

    assert_eq!(restored(&url, &out, None), Some(content_hash(&b)));
    assert_eq!(restored(&url, &out, Some(&at)), Some(first));
    let v = run(&["verify", "app", "-b", &url]);
    assert!(v.status.success(), "{}", stderr(&v));
}
