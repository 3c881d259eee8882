//! Issue #18: `walsync status`, `/metrics` and `/healthz` after shipping, during a storage
//! outage (lag grows, the error class is shown, the health check fails) and after recovery;
//! the exposition is parsed by the Prometheus project's own Python parser.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::proxy::Proxy;

/// GET `path` from the metrics endpoint: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let code = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = s
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// Parse an exposition with `prometheus_client` (installed by tests/run.sh); returns
/// `name{labels} value` lines, sorted, as the parser read them.
fn prometheus_parse(text: &str) -> Vec<String> {
    // tests/run.sh's virtualenv, also when cargo test is run by hand after it.
    let venv = std::env::var("HOME").unwrap_or_default() + "/.cache/walsync/py/bin/python";
    let py = std::env::var("WALSYNC_TEST_PYTHON").unwrap_or_else(|_| {
        if Path::new(&venv).exists() {
            venv
        } else {
            "python3".into()
        }
    });
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
        out = []\nfor fam in f(sys.stdin.read()):\n    for s in fam.samples:\n        \
        out.append('%s %s %s' % (s.name, ','.join('%s=%s' % kv for kv in sorted(s.labels.items())), float(s.value)))\n\
        print('\\n'.join(sorted(out)))\n";
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {py}: {e} (tests/run.sh installs prometheus_client)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "prometheus_client could not parse the exposition: {}\n(tests/run.sh installs it; set WALSYNC_TEST_PYTHON)",
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn sample<'a>(parsed: &'a [String], name: &str) -> &'a str {
    parsed
        .iter()
        .find(|l| l.split(' ').next() == Some(name))
        .map(|l| l.rsplit(' ').next().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {parsed:?}"))
}

fn status_of(db: &std::path::Path) -> (bool, String) {
    let o = walsync(&["status", db.to_str().unwrap()]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn status_metrics_and_health_through_an_outage() {
    ensure_s3();
    let up = s3_upstream();
    let proxy = Proxy::start(up);
    let t = TestDir::new("status");
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(x)").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bucket = std::env::var("S3_BUCKET").unwrap_or_else(|_| "walsync-test".into());
    let cfg = t.join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nbucket = \"s3://{bucket}/status-test-{}\"\nendpoint = \"{}\"\n\
             [defaults]\nsync_interval = \"200ms\"\n[[databases]]\npath = \"app.db\"\n\
             [metrics]\naddr = \"127.0.0.1:{port}\"\nmax_lag = \"2s\"\nmax_failing = \"2s\"\n",
            std::process::id(),
            proxy.endpoint()
        ),
    )
    .unwrap();
    let d = Daemon::start_args(
        &["watch", "--config", cfg.to_str().unwrap()],
        &t.join("log"),
    );
    d.wait_log("metrics on http://", Duration::from_secs(10));
    c.execute("INSERT INTO t VALUES (1)", []).unwrap();
    // After shipping: ok, nothing pending, the health check passes.
    wait_until(
        "status ok with everything shipped",
        Duration::from_secs(30),
        || {
            let (ok, out) = status_of(&db);
            let m = prometheus_parse(&get(port, "/metrics").1);
            ok && out.contains(" ok ")
                && sample(&m, "walsync_last_upload_timestamp_seconds") != "0.0"
                && sample(&m, "walsync_pending_objects") == "0.0"
        },
    );
    let parsed = prometheus_parse(&get(port, "/metrics").1);
    assert_eq!(sample(&parsed, "walsync_replication_lag_seconds"), "0.0");
    assert_eq!(sample(&parsed, "walsync_failing"), "0.0");
    assert_eq!(sample(&parsed, "walsync_databases"), "1.0");
    assert_eq!(
        get(port, "/healthz"),
        (200, "ok: 1 database(s) replicated\n".into())
    );
    let json = walsync(&["status", "--config", cfg.to_str().unwrap(), "--json"]);
    let line = String::from_utf8_lossy(&json.stdout).into_owned();
    assert!(json.status.success(), "{line}");
    assert!(
        line.contains("\"running\":true") && line.contains("\"lag_seconds\":0.000"),
        "{line}"
    );

    // Storage down while the application writes: lag grows, the class is named, healthz 503.
    proxy.set_down(true);
    c.execute("INSERT INTO t VALUES (2)", []).unwrap();
    wait_until("healthz failing", Duration::from_secs(60), || {
        get(port, "/healthz").0 == 503
    });
    let (code, why) = get(port, "/healthz");
    assert_eq!(code, 503);
    assert!(why.starts_with(&format!("{} ", db.display())), "{why}");
    assert!(why.contains("lags") || why.contains("failing for"), "{why}");
    let lag1: f64 = sample(
        &prometheus_parse(&get(port, "/metrics").1),
        "walsync_replication_lag_seconds",
    )
    .parse()
    .unwrap();
    wait_until(
        "the status names the error class",
        Duration::from_secs(60),
        || status_of(&db).1.contains("storage_unavailable since"),
    );
    // Its thresholds are the config's (2 s).
    let status_cfg = || {
        let o = walsync(&["status", "--config", cfg.to_str().unwrap()]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    wait_until("status exits 1", Duration::from_secs(30), || {
        !status_cfg().0
    });
    let (ok, out) = status_cfg();
    assert!(!ok, "status exits 1 while a database fails or lags:\n{out}");
    assert!(
        out.contains(" failing ") || out.contains(" behind "),
        "{out}"
    );
    let parsed = prometheus_parse(&get(port, "/metrics").1);
    let lag2: f64 = sample(&parsed, "walsync_replication_lag_seconds")
        .parse()
        .unwrap();
    assert!(
        lag2 > lag1 && lag2 >= 2.0,
        "lag grows during the outage: {lag1} then {lag2}"
    );
    assert!(
        parsed
            .iter()
            .any(|l| l.starts_with("walsync_failing_since_seconds class=storage_unavailable,db=")),
        "{parsed:?}"
    );
    // Errors by class, requests by type (the PUTs that shipped before the outage).
    assert!(
        parsed
            .iter()
            .any(|l| l.starts_with("walsync_errors_total class=storage_unavailable ")),
        "{parsed:?}"
    );
    let puts = parsed
        .iter()
        .find(|l| l.starts_with("walsync_requests_total type=put "))
        .expect("a put counter");
    assert!(!puts.ends_with(" 0.0"), "{puts}");

    // Storage back: everything shipped, healthy again.
    proxy.set_down(false);
    wait_until("healthy again", Duration::from_secs(60), || {
        get(port, "/healthz").0 == 200 && status_of(&db).0
    });
    let parsed = prometheus_parse(&get(port, "/metrics").1);
    assert_eq!(sample(&parsed, "walsync_replication_lag_seconds"), "0.0");
    assert_eq!(sample(&parsed, "walsync_pending_objects"), "0.0");
    assert!(status_of(&db).1.contains(" ok "));
    drop(c);
    d.stop();

    // No daemon: said so, exit 1.
    let o = walsync(&["status", db.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(" no daemon "));
    assert_eq!(
        stderr(&o),
        "walsync: error: 1 of 1 database(s) not replicated as they should be\nhint: see the STATE column; 'walsync watch' logs say why\n"
    );
    let never = t.join("never.db");
    open_app(&never).execute_batch("CREATE TABLE t(x)").unwrap();
    let o = walsync(&["status", never.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(" never shipped "));
}

/// systemd's notify protocol: READY=1 once watching, WATCHDOG=1 at half of WATCHDOG_USEC
/// from the event loop, STOPPING=1 at SIGTERM (a datagram socket standing in for systemd's).
#[test]
fn systemd_notify_ready_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let t = TestDir::new("notify");
    let db = t.join("app.db");
    open_app(&db).execute_batch("CREATE TABLE t(x)").unwrap();
    let sock_path = t.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walsync"));
    cmd.args([
        "watch",
        db.to_str().unwrap(),
        "-b",
        t.join("replica").to_str().unwrap(),
    ])
    .env("NOTIFY_SOCKET", &sock_path)
    .env("WATCHDOG_USEC", "400000");
    let d = Daemon::spawn(cmd, &t.join("log"));
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    // Two pings while nothing happens: the loop itself is alive.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    d.signal("TERM");
    let mut got = next();
    while got == "WATCHDOG=1" {
        got = next();
    }
    assert_eq!(got, "STOPPING=1");
    let mut d = d;
    assert!(d.child.wait().unwrap().success(), "{}", d.log_text());
}

/// `[alerts]`: the heartbeat URL is fetched while every database is healthy and not while one
/// fails; `on_failure` runs once for a failure lasting `after`, with the database and the error
/// in its environment.
#[test]
fn alerts_heartbeat_and_on_failure() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    ensure_s3();
    let up = s3_upstream();
    let proxy = Proxy::start(up);
    let t = TestDir::new("alerts");
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(x)").unwrap();
    // A heartbeat receiver: counts GET /ping/<uuid>.
    let hb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hb_port = hb.local_addr().unwrap().port();
    let pings = Arc::new(AtomicU64::new(0));
    let p2 = pings.clone();
    std::thread::spawn(move || {
        for conn in hb.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            if String::from_utf8_lossy(&buf[..n]).starts_with("GET /ping/1234 ") {
                p2.fetch_add(1, Ordering::SeqCst);
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        }
    });
    let alerts = t.join("alerts.txt");
    let bucket = std::env::var("S3_BUCKET").unwrap_or_else(|_| "walsync-test".into());
    let cfg = t.join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nbucket = \"s3://{bucket}/alerts-test-{}\"\nendpoint = \"{}\"\n\
             [defaults]\nsync_interval = \"200ms\"\n[[databases]]\npath = \"app.db\"\n\
             [alerts]\non_failure = 'echo \"$WALSYNC_DB $WALSYNC_ERROR_CLASS\" >> {}'\n\
             after = \"1s\"\nheartbeat_url = \"http://127.0.0.1:{hb_port}/ping/1234\"\n\
             heartbeat_interval = \"200ms\"\n",
            std::process::id(),
            proxy.endpoint(),
            alerts.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_args(
        &["watch", "--config", cfg.to_str().unwrap()],
        &t.join("log"),
    );
    c.execute("INSERT INTO t VALUES (1)", []).unwrap();
    wait_until("heartbeats while healthy", Duration::from_secs(30), || {
        pings.load(Ordering::SeqCst) >= 3
    });
    proxy.set_down(true);
    c.execute("INSERT INTO t VALUES (2)", []).unwrap();
    wait_until("on_failure ran", Duration::from_secs(60), || {
        std::fs::read_to_string(&alerts).is_ok_and(|s| s.ends_with('\n'))
    });
    assert_eq!(
        std::fs::read_to_string(&alerts).unwrap(),
        format!("{} storage_unavailable\n", db.display())
    );
    // While failing, the heartbeats stop: two skipped beats in a row with no ping between.
    let skipped = |log: &str| log.matches("heartbeat skipped: ").count();
    let n0 = skipped(&d.log_text());
    wait_until("a skipped heartbeat", Duration::from_secs(30), || {
        skipped(&d.log_text()) > n0
    });
    let p0 = pings.load(Ordering::SeqCst);
    let n1 = skipped(&d.log_text());
    wait_until("another skipped heartbeat", Duration::from_secs(30), || {
        skipped(&d.log_text()) > n1
    });
    assert_eq!(
        pings.load(Ordering::SeqCst),
        p0,
        "no heartbeat while failing"
    );
    // Still one alert: it repeats at most once an hour.
    assert_eq!(std::fs::read_to_string(&alerts).unwrap().lines().count(), 1);
    proxy.set_down(false);
    wait_until("heartbeats again", Duration::from_secs(60), || {
        pings.load(Ordering::SeqCst) >= p0 + 2
    });
    drop(c);
    d.stop();
}
