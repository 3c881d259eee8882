//! Issue #17: credentials that expire. walsync takes its keys from the container credentials
//! endpoint (ECS, EKS Pod Identity, Fargate: `AWS_CONTAINER_CREDENTIALS_FULL_URI` with an
//! authorization token), fetches them again before they expire, and keeps shipping; an
//! endpoint that cannot be reached is one clear line.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// A credentials endpoint on 127.0.0.1 handing out the test server's real keys, valid for 4 s
/// from each fetch: `answer(request line, headers)` gives the body for the keys (`{key}`,
/// `{secret}`, `{exp}` filled in), or None for a 403. Returns its address and the count of
/// keys handed out.
fn endpoint(
    answer: impl Fn(&str, &str) -> Option<&'static str> + Send + 'static,
) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicU64::new(0));
    let n = served.clone();
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let (mut first, mut headers) = (String::new(), String::new());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if first.is_empty() {
                    first = line.clone();
                } else {
                    headers.push_str(&line.to_ascii_lowercase());
                }
            }
            let (status, body) = match answer(&first, &headers) {
                None => ("403 Forbidden", "{}".to_string()),
                Some(tpl) => {
                    n.fetch_add(1, Ordering::SeqCst);
                    let exp = walsync::time::iso(walsync::time::now_ms() + 4_000);
                    let body = tpl
                        .replace("{key}", &key)
                        .replace("{secret}", &secret)
                        .replace("{exp}", &exp);
                    ("200 OK", body)
                }
            };
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, served)
}

/// A container credentials endpoint (ECS): `GET /v2/credentials/abc` with `Authorization: tok`.
fn credentials_endpoint() -> (String, Arc<AtomicU64>) {
    let (addr, n) = endpoint(|first, headers| {
        (first.starts_with("GET /v2/credentials/abc ") && headers.contains("authorization: tok\r\n"))
            .then_some("{\"AccessKeyId\":\"{key}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"\",\"Expiration\":\"{exp}\"}")
    });
    (format!("http://{addr}/v2/credentials/abc"), n)
}

/// The environment of a process that has no keys but the container endpoint's.
fn without_keys(cmd: &mut Command, t: &TestDir, url: &str) {
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("HOME", t.join("home"))
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok");
}

#[test]
fn container_credentials_are_refreshed_before_they_expire() {
    ensure_s3();
    let t = TestDir::new("creds");
    let replica = Replica::new(&t, Backend::S3);
    let (url, served) = credentials_endpoint();
    let db = t.join("app.db");
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    drop(c);
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
        .args(["--sync-interval", "0"]);
    without_keys(&mut cmd, &t, &url);
    let d = Daemon::spawn(cmd, &t.join("log"));
    d.wait_log(
        "S3 credentials from the container credentials endpoint, valid until ",
        Duration::from_secs(10),
    );
    // 12 s of writes: keys valid 4 s at a time must be fetched again, at least twice.
    let scratch = t.join("scratch.db");
    let began = std::time::Instant::now();
    let mut i = 0;
    while began.elapsed() < Duration::from_secs(12) {
        open_app(&db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(&replica, "app", &db, &scratch);
        std::thread::sleep(Duration::from_millis(500)); // the application's own pace
        i += 1;
    }
    d.wait_log(
        "S3 credentials refreshed from the container credentials endpoint",
        Duration::from_secs(10),
    );
    let log = d.log_text();
    d.stop();
    assert!(served.load(Ordering::SeqCst) >= 3, "{log}");
    assert!(!log.contains("access denied"), "{log}");
    assert_restores_equal(&replica, "app", &db, &t.join("out.db"));
}

#[test]
fn unreachable_credentials_endpoint_is_one_line() {
    ensure_s3();
    let t = TestDir::new("creds-down");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["list", "-b", "s3://walsync-test"]);
    without_keys(&mut cmd, &t, &format!("http://{closed}/creds"));
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let first = stderr(&o).lines().next().unwrap_or("").to_string();
    assert!(
        first.starts_with(&format!("walsync: error: cannot reach {closed}/creds: ")),
        "{first}"
    );
}

/// EKS IRSA: STS AssumeRoleWithWebIdentity with the role and the token file's token; the keys
/// it answers are used and fetched again before they expire.
#[test]
fn web_identity_credentials_from_sts() {
    ensure_s3();
    let t = TestDir::new("creds-sts");
    let replica = Replica::new(&t, Backend::S3);
    let (sts, served) = endpoint(|first, _| {
        (first.starts_with("GET /?Action=AssumeRoleWithWebIdentity&")
            && first.contains("&RoleArn=arn%3Aaws%3Aiam%3A%3A123%3Arole%2Fapp&")
            && first.contains("&WebIdentityToken=eyJ.tok%2Ben "))
        .then_some(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
             <SessionToken></SessionToken><Expiration>{exp}</Expiration></Credentials>\
             </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
        )
    });
    let token = t.join("token");
    std::fs::write(&token, "eyJ.tok+en\n").unwrap();
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
        .args(["--sync-interval", "0"]);
    without_keys(&mut cmd, &t, "");
    cmd.env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
        .env("AWS_ROLE_ARN", "arn:aws:iam::123:role/app")
        .env("AWS_ENDPOINT_URL_STS", format!("http://{sts}"));
    let d = Daemon::spawn(cmd, &t.join("log"));
    d.wait_log("S3 credentials from web identity", Duration::from_secs(10));
    let scratch = t.join("scratch.db");
    for i in 0..4 {
        open_app(&db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(&replica, "app", &db, &scratch);
        std::thread::sleep(Duration::from_millis(1500)); // the application's own pace
    }
    d.wait_log(
        "S3 credentials refreshed from web identity",
        Duration::from_secs(10),
    );
    d.stop();
    assert!(served.load(Ordering::SeqCst) >= 2);
    assert_restores_equal(&replica, "app", &db, &t.join("out.db"));
}

/// An HTTP proxy on 127.0.0.1 that wants `Proxy-Authorization: Basic dTpw` (u:p) on the first
/// request of each connection, then forwards the connection to the host its absolute URL
/// names (`*.localhost` is 127.0.0.1). Returns its port and the count of connections it forwarded.
fn http_proxy() -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let forwarded = Arc::new(AtomicU64::new(0));
    let n = forwarded.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let n = n.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut s = s;
                let url = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let Some(hostport) = url
                    .strip_prefix("http://")
                    .and_then(|u| u.split('/').next())
                else {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                if !head.contains("\r\nProxy-Authorization: Basic dTpw\r\n") {
                    let _ = s.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
                // Names under .localhost are this machine (RFC 6761), as a resolver that
                // knows it would say: the virtual-hosted bucket names of the test server.
                let up = match hostport.rsplit_once(':') {
                    Some((h, p)) if h.ends_with(".localhost") => format!("127.0.0.1:{p}"),
                    _ => hostport.to_string(),
                };
                let mut up = std::net::TcpStream::connect(up).unwrap();
                n.fetch_add(1, Ordering::SeqCst);
                up.write_all(head.as_bytes()).unwrap();
                up.write_all(r.buffer()).unwrap();
                let mut down = up.try_clone().unwrap();
                let mut from = s.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut up);
                    let _ = up.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut down, &mut s);
            });
        }
    });
    (port, forwarded)
}

/// HTTP_PROXY (with Basic authentication) carries every request; NO_PROXY bypasses it; a
/// proxy refusing the credentials is one line naming the proxy's answer.
#[test]
fn http_proxy_with_auth_and_no_proxy() {
    ensure_s3();
    let t = TestDir::new("proxy-env");
    let replica = Replica::new(&t, Backend::S3);
    let (port, forwarded) = http_proxy();
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('a');",
        )
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
        .args(["--sync-interval", "0"])
        .env("HTTP_PROXY", format!("http://u:p@127.0.0.1:{port}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let d = Daemon::spawn(cmd, &t.join("log"));
    let scratch = t.join("scratch.db");
    for i in 0..3 {
        open_app(&db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(&replica, "app", &db, &scratch);
    }
    d.stop();
    assert!(
        forwarded.load(Ordering::SeqCst) >= 1,
        "nothing went through the proxy"
    );
    assert_restores_equal(&replica, "app", &db, &t.join("out.db"));

    // NO_PROXY: straight to the server.
    let before = forwarded.load(Ordering::SeqCst);
    let o = list_via(
        &replica,
        &format!("http://u:p@127.0.0.1:{port}"),
        "localhost,127.0.0.1",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(forwarded.load(Ordering::SeqCst), before);

    // Wrong proxy password.
    let o = list_via(&replica, &format!("http://u:wrong@127.0.0.1:{port}"), "");
    assert_eq!(o.status.code(), Some(1));
    let first = stderr(&o).lines().next().unwrap_or("").to_string();
    assert!(first.contains("HTTP 407"), "{first}");

    // No proxy listening: one line naming it.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = list_via(&replica, &format!("http://{closed}"), "");
    assert_eq!(o.status.code(), Some(1));
    let first = stderr(&o).lines().next().unwrap_or("").to_string();
    assert!(
        first.contains(&format!("proxy {closed} (HTTP_PROXY): ")),
        "{first}"
    );
}

/// Virtual-hosted addressing against a real server: Garage answers `<bucket>.s3.garage.localhost`
/// (its `root_domain`), a name only the proxy resolves, so every request of the daemon (forced
/// by `addressing` in the config file) and of the restore (by `--addressing`) goes to the
/// bucket's own host name; the restore is exact. A style walsync does not know, and an address
/// where a host name is needed, are one line each.
#[test]
fn virtual_hosted_addressing_through_a_proxy() {
    ensure_s3();
    if std::env::var("WALSYNC_TEST_S3_EXTERNAL").is_ok() {
        eprintln!("skipped: needs the suite's own Garage (its root_domain)");
        return;
    }
    let t = TestDir::new("vhost");
    let replica = Replica::new(&t, Backend::S3);
    let (port, forwarded) = http_proxy();
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .unwrap()
        .replace("127.0.0.1", "s3.garage.localhost");
    assert!(endpoint.contains("s3.garage.localhost"), "{endpoint}");
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('a');",
        )
        .unwrap();
    let config = t.join("walsync.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbucket = \"{}\"\nendpoint = \"{endpoint}\"\naddressing = \"virtual\"\n\n\
             [defaults]\nsync_interval = \"0\"\n\n[[databases]]\npath = \"{}\"\nprefix = \"app\"\n",
            replica.url(),
            db.display()
        ),
    )
    .unwrap();
    let via_proxy = |cmd: &mut Command| {
        cmd.env("HTTP_PROXY", format!("http://u:p@127.0.0.1:{port}"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("AWS_ENDPOINT_URL_S3");
    };
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", "--config"]).arg(&config);
    via_proxy(&mut cmd);
    let d = Daemon::spawn(cmd, &t.join("log"));
    let scratch = t.join("scratch.db");
    for i in 0..3 {
        open_app(&db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(&replica, "app", &db, &scratch);
    }
    d.stop();
    assert!(
        forwarded.load(Ordering::SeqCst) >= 1,
        "nothing went through the proxy"
    );

    let out = t.join("out.db");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "restore",
        "app",
        "-b",
        &replica.url(),
        "--endpoint",
        &endpoint,
    ])
    .args(["--addressing", "virtual", "-o"])
    .arg(&out);
    via_proxy(&mut cmd);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(content_hash(&out), content_hash(&db));

    // Path style to a name nobody resolves but the proxy: Garage sees no bucket in the host,
    // takes the first path segment as the bucket, and the listing works the same.
    let mut cmd = Command::new(BIN);
    cmd.args([
        "list",
        "-b",
        &replica.url(),
        "--endpoint",
        &endpoint,
        "--addressing",
        "path",
    ]);
    via_proxy(&mut cmd);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("app"));

    let o = Command::new(BIN)
        .args(["list", "-b", &replica.url(), "--addressing", "vhost"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).trim_end(),
        "walsync: error: option --addressing: 'vhost' is not path, virtual or auto\nhint: run 'walsync --help' for usage"
    );
    let o = Command::new(BIN)
        .args(["list", "-b", &replica.url(), "--addressing", "virtual"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("walsync: error: virtual-hosted addressing needs a host name in the endpoint, not the address in 'http://127.0.0.1:"),
        "{}",
        stderr(&o)
    );
}

/// `walsync list` of the replica with HTTP_PROXY `proxy` and NO_PROXY `no_proxy` (none if empty).
fn list_via(replica: &Replica, proxy: &str, no_proxy: &str) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["list", "-b", &replica.url()])
        .env("HTTP_PROXY", proxy)
        .env_remove("no_proxy");
    if no_proxy.is_empty() {
        cmd.env_remove("NO_PROXY");
    } else {
        cmd.env("NO_PROXY", no_proxy);
    }
    cmd.output().unwrap()
}

/// The shared files as the AWS CLI reads them: `AWS_PROFILE` names a profile of
/// `~/.aws/config` whose `credential_process` prints keys valid for 4 s and whose `region`
/// is the one used (AWS_REGION unset). The keys are fetched again before they expire while the
/// daemon ships; the restore is exact. A failing process and an unknown profile are one line
/// each, naming the profile.
#[test]
fn shared_config_profile_with_credential_process() {
    ensure_s3();
    let t = TestDir::new("profile");
    let replica = Replica::new(&t, Backend::S3);
    let home = t.join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let counter = t.join("runs");
    let script = home.join("get-keys");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = --profile ] && [ \"$2\" = tenant ] || exit 9\necho run >> {}\n\
             exp=$(date -u -d \"@$(( $(date +%s) + 4 ))\" +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\": 1, \"AccessKeyId\": \"%s\", \"SecretAccessKey\": \"%s\", \"Expiration\": \"%s\"}}' \"$K\" \"$S\" \"$exp\"\n",
            counter.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    let region = std::env::var("AWS_REGION").unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!(
            "[default]\nregion = nowhere-1\n\n[profile tenant]\nregion = {region}\ncredential_process = {} --profile tenant\n\n\
             [profile broken]\ncredential_process = sh -c 'echo the SSO session has expired, run aws sso login >&2; exit 3'\n",
            script.display()
        ),
    )
    .unwrap();
    let with_profile = |cmd: &mut Command, profile: &str| {
        cmd.env("K", std::env::var("AWS_ACCESS_KEY_ID").unwrap())
            .env("S", std::env::var("AWS_SECRET_ACCESS_KEY").unwrap())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env("HOME", &home)
            .env("AWS_PROFILE", profile);
    };
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
        .args(["--sync-interval", "0"]);
    with_profile(&mut cmd, "tenant");
    let d = Daemon::spawn(cmd, &t.join("log"));
    d.wait_log(
        "S3 credentials from the credential_process of profile 'tenant', valid until ",
        Duration::from_secs(10),
    );
    let scratch = t.join("scratch.db");
    let mut i = 0;
    while !d
        .log_text()
        .contains("S3 credentials refreshed from the credential_process")
    {
        assert!(i < 200, "keys never fetched again: {}", d.log_text());
        open_app(&db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(&replica, "app", &db, &scratch);
        std::thread::sleep(Duration::from_millis(200)); // the application's own pace
        i += 1;
    }
    open_app(&db)
        .execute("INSERT INTO t(v) VALUES ('after the refresh')", [])
        .unwrap();
    wait_shipped(&replica, "app", &db, &scratch);
    let log = d.log_text();
    d.stop();
    let runs = std::fs::read_to_string(&counter).unwrap().lines().count();
    assert!(runs >= 2, "{runs} run(s)\n{log}");
    assert!(
        !log.contains("denied") && !log.contains("retrying"),
        "{log}"
    );
    assert_restores_equal(&replica, "app", &db, &t.join("out.db"));

    let one_line = |profile: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["list", "-b", &replica.url()]);
        with_profile(&mut cmd, profile);
        let o = cmd.output().unwrap();
        (
            o.status.code(),
            stderr(&o).lines().next().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        one_line("broken"),
        (Some(1), "walsync: error: credential_process of profile 'broken' (sh -c 'echo the SSO session has expired, run aws sso login >&2; exit 3') failed (exit status: 3): the SSO session has expired, run aws sso login".to_string())
    );
    // Static keys from the credentials file, the region from the config file (eu-west-1): the
    // server answers that the bucket is elsewhere, naming its region; walsync follows it,
    // saying so in one line, and the restore is exact.
    std::fs::write(
        home.join(".aws/credentials"),
        format!(
            "[elsewhere]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()
        ),
    )
    .unwrap();
    let mut conf = std::fs::read_to_string(home.join(".aws/config")).unwrap();
    conf.push_str("\n[profile elsewhere]\nregion = eu-west-1\n");
    std::fs::write(home.join(".aws/config"), conf).unwrap();
    let out = t.join("elsewhere.db");
    let mut cmd = Command::new(BIN);
    cmd.args(["restore", "app", "-b", &replica.url(), "-o"])
        .arg(&out);
    with_profile(&mut cmd, "elsewhere");
    let o = cmd.output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let moved: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("the bucket is in region"))
        .collect();
    assert_eq!(moved.len(), 1, "{err}");
    assert!(
        moved[0].contains(&format!(
            "the bucket is in region {region}, not eu-west-1 ("
        )) && moved[0].ends_with(&format!(
            "following it (set AWS_REGION={region}, or region in [storage], to go there directly)"
        )),
        "{err}"
    );
    assert_eq!(content_hash(&out), content_hash(&db));
    assert_eq!(
        one_line("nobody"),
        (
            Some(2),
            format!(
                "walsync: error: config environment: AWS_PROFILE: no profile 'nobody' in {} or {}",
                home.join(".aws/credentials").display(),
                home.join(".aws/config").display()
            )
        )
    );
}
