//! Issue #17: credentials that expire. walsync takes its keys from the container credentials
//! endpoint (ECS, EKS Pod Identity, Fargate: `AWS_CONTAINER_CREDENTIALS_FULL_URI` with an
//! authorization token), from STS (web identity, a profile's role), or from a profile's
//! `credential_process`, fetches them again before they expire, and keeps shipping; a source
//! that cannot be used is one clear line.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// A credentials endpoint on 127.0.0.1 handing out the test server's real keys, valid for 4 s
/// from each fetch: `answer(request line, headers)` gives the body for the keys (`{key}`,
/// `{secret}`, `{exp}` filled in; a body starting with `!` is a 403 with the rest as its body),
/// or None for a bare 403. Returns its address and the count of
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
                Some(tpl) if tpl.starts_with('!') => ("403 Forbidden", tpl[1..].to_string()),
                Some(tpl) => {
                    n.fetch_add(1, Ordering::SeqCst);
                    let exp = Stamp::now().after(Duration::from_secs(4)).iso();
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

/// Four commits at the application's pace (1.5 s apart: keys valid 4 s are due again after
/// two), each shipped; the log says the keys were fetched again from `source`, the source
/// handed keys out at least twice, and the restore is exact.
fn ships_across_a_refresh(
    d: Daemon,
    t: &TestDir,
    replica: &Replica,
    db: &std::path::Path,
    source: &str,
    served: &AtomicU64,
) {
    let scratch = t.join("scratch.db");
    for i in 0..4 {
        open_app(db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(replica, "app", db, &scratch);
        std::thread::sleep(Duration::from_millis(1500)); // the application's own pace
    }
    d.wait_log(
        &format!("S3 credentials refreshed from {source}"),
        Duration::from_secs(10),
    );
    d.stop();
    assert!(served.load(Ordering::SeqCst) >= 2);
    assert_restores_equal(replica, "app", db, &t.join("out.db"));
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
    ships_across_a_refresh(d, &t, &replica, &db, "web identity", &served);
}

/// The environment of a process whose keys and region can only come from `profile` of the
/// shared files in `home`.
fn only_profile(cmd: &mut Command, home: &std::path::Path, profile: &str) {
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("HOME", home)
        .env("AWS_PROFILE", profile);
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
            .env("S", std::env::var("AWS_SECRET_ACCESS_KEY").unwrap());
        only_profile(cmd, &home, profile);
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

/// A profile that assumes a role (`role_arn`, `source_profile`, `external_id`,
/// `role_session_name`, `duration_seconds`, as the AWS CLI reads them): the source profile's
/// keys sign STS AssumeRole (service sts, the profile's region), the role's keys ship and are
/// fetched again before they expire; the restore is exact. STS refusing, an MFA profile, an SSO
/// profile and a missing source profile are one line each.
#[test]
fn assume_role_profile() {
    ensure_s3();
    let t = TestDir::new("assume-role");
    let replica = Replica::new(&t, Backend::S3);
    let region = std::env::var("AWS_REGION").unwrap();
    let scope = format!("/{region}/sts/aws4_request, signedheaders=accept;host;x-amz-date, ");
    let (sts, served) = endpoint(move |first, headers| {
        let signed = headers.contains("authorization: aws4-hmac-sha256 credential=akidsource/")
            && headers.contains(&scope);
        let role = |r: &str| {
            first.starts_with("GET /?Action=AssumeRole&DurationSeconds=900&ExternalId=tenant-7&")
                && first.contains(&format!("&RoleArn=arn%3Aaws%3Aiam%3A%3A123%3Arole%2F{r}&"))
                && first.contains("&RoleSessionName=nightly&Version=2011-06-15 ")
        };
        if signed && role("backup") {
            Some(
                "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
                 <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                 <SessionToken></SessionToken><Expiration>{exp}</Expiration></Credentials>\
                 </AssumeRoleResult></AssumeRoleResponse>",
            )
        } else if signed && role("other") {
            Some("!<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:iam::123:user/base is not authorized to perform: sts:AssumeRole</Message></Error></ErrorResponse>")
        } else {
            None
        }
    });
    let home = t.join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let role = |name: &str, r: &str| {
        format!(
            "[profile {name}]\nrole_arn = arn:aws:iam::123:role/{r}\nsource_profile = base\n\
             external_id = tenant-7\nrole_session_name = nightly\nduration_seconds = 900\nregion = {region}\n\n"
        )
    };
    let config = format!(
        "[profile base]\naws_access_key_id = AKIDSOURCE\naws_secret_access_key = not-the-s3-key\n\n{}{}\
         [profile mfa]\nrole_arn = arn:aws:iam::123:role/admin\nsource_profile = base\nmfa_serial = arn:aws:iam::123:mfa/me\n\n\
         [profile lost]\nrole_arn = arn:aws:iam::123:role/backup\nsource_profile = nowhere\n\n\
         [profile sso]\nsso_session = corp\nsso_account_id = 123\nsso_role_name = Backup\n",
        role("backup", "backup"),
        role("denied", "other")
    );
    std::fs::write(home.join(".aws/config"), config).unwrap();
    let with_profile = |cmd: &mut Command, profile: &str| {
        only_profile(cmd, &home, profile);
        cmd.env("AWS_ENDPOINT_URL_STS", format!("http://{sts}"));
    };
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
        .args(["--sync-interval", "0"]);
    with_profile(&mut cmd, "backup");
    let d = Daemon::spawn(cmd, &t.join("log"));
    d.wait_log(
        "S3 credentials from role arn:aws:iam::123:role/backup of profile 'backup' (STS AssumeRole, signed with keys from ~/.aws/config [profile base])",
        Duration::from_secs(10),
    );
    let refreshed = "role arn:aws:iam::123:role/backup";
    ships_across_a_refresh(d, &t, &replica, &db, refreshed, &served);

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
        one_line("denied"),
        (
            Some(1),
            format!("walsync: error: {sts}/ answered HTTP 403: AccessDenied: User: arn:aws:iam::123:user/base is not authorized to perform: sts:AssumeRole")
        )
    );
    assert_eq!(
        one_line("mfa"),
        (Some(2), "walsync: error: config environment: AWS_PROFILE: profile 'mfa' assumes arn:aws:iam::123:role/admin with an MFA code (mfa_serial), which walsync, running unattended, cannot ask for; use a role without MFA or a credential_process".to_string())
    );
    assert_eq!(
        one_line("lost"),
        (Some(2), "walsync: error: config environment: AWS_PROFILE: profile 'lost': its source_profile 'nowhere' is in neither file".to_string())
    );
    assert_eq!(
        one_line("sso"),
        (Some(2), "walsync: error: config environment: AWS_PROFILE: profile 'sso' is an SSO profile, which walsync does not read; give it credential_process = aws configure export-credentials --profile sso --format process (AWS CLI v2), or use another profile".to_string())
    );
}
