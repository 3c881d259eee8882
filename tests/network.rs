//! Issue #17: networks between walsync and S3. An HTTP proxy with authentication and
//! `NO_PROXY`; virtual-hosted addressing reached through it; HTTPS with a private CA through
//! a `CONNECT` tunnel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// A request head (through its empty line), or None when the client closed before it ended.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

/// Join a client connection and an upstream one until either closes; `read` is what the
/// proxy already read from the client past the request head.
fn splice(mut s: TcpStream, mut up: TcpStream, read: &[u8]) {
    up.write_all(read).unwrap();
    let mut down = up.try_clone().unwrap();
    let mut from = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut down, &mut s);
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
                let Some(head) = read_head(&mut r) else {
                    return;
                };
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
                splice(s, up, r.buffer());
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

/// A private CA and a certificate it signs for `localhost` and 127.0.0.1, made by openssl in
/// `dir`: returns (CA file, certificate chain file, key file).
fn private_ca(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let sh = "set -e; \
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walsync-test-ca -keyout ca.key -out ca.pem; \
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out srv.csr; \
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem";
    let o = Command::new("sh")
        .args(["-c", sh])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl: {}", stderr(&o));
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Copy between a TLS session and a plain connection until either side closes (a test's
/// terminator: short read timeouts on both sockets let one thread serve both directions).
fn pump(mut tls: rustls::StreamOwned<rustls::ServerConnection, TcpStream>, mut up: TcpStream) {
    let tick = Some(Duration::from_millis(2));
    tls.sock.set_read_timeout(tick).unwrap();
    up.set_read_timeout(tick).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let idle = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if up.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        match up.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

/// HTTPS in front of `upstream` (host:port) on 127.0.0.1 with the certificate of `private_ca`;
/// returns its port.
fn tls_terminator(cert: &std::path::Path, key: &std::path::Path, upstream: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (config, upstream) = (config.clone(), upstream.clone());
            std::thread::spawn(move || {
                let Ok(up) = TcpStream::connect(&upstream) else {
                    return;
                };
                let conn = rustls::ServerConnection::new(config).unwrap();
                pump(rustls::StreamOwned::new(conn, s), up);
            });
        }
    });
    port
}

/// A CONNECT proxy on 127.0.0.1 (no authentication): tunnels each connection to the
/// `host:port` it names (`localhost` is 127.0.0.1). Returns its port and the targets it
/// tunnelled to.
fn connect_proxy() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let first = read_head(&mut r).unwrap_or_default();
                let mut s = s;
                let Some(target) = first
                    .strip_prefix("CONNECT ")
                    .and_then(|t| t.split(' ').next())
                else {
                    let _ = s
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                log.lock().unwrap().push(target.to_string());
                let Ok(up) = TcpStream::connect(target.replace("localhost", "127.0.0.1")) else {
                    let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                s.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .unwrap();
                splice(s, up, r.buffer());
            });
        }
    });
    (port, seen)
}

/// HTTPS through a `CONNECT` tunnel, as a corporate egress proxy sees it: the endpoint is
/// `https://localhost:PORT` with a private CA (`AWS_CA_BUNDLE`), the only way there is
/// `HTTPS_PROXY`. The daemon ships and `restore` restores exactly through the tunnel (TLS end
/// to end inside it); `NO_PROXY` goes around it; a proxy that is not running is one line
/// naming it; and without the CA the certificate is refused in one line.
#[test]
fn https_through_a_connect_proxy() {
    ensure_s3();
    let t = TestDir::new("connect");
    let replica = Replica::new(&t, Backend::S3);
    let (ca, cert, key) = private_ca(&t.join("pki"));
    let upstream = std::env::var("AWS_ENDPOINT_URL_S3")
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let tls_port = tls_terminator(&cert, &key, upstream);
    let endpoint = format!("https://localhost:{tls_port}");
    let (port, seen) = connect_proxy();
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('a');",
        )
        .unwrap();
    let through = |cmd: &mut Command, proxy: &str, no_proxy: &str| {
        cmd.env("HTTPS_PROXY", proxy)
            .env("AWS_CA_BUNDLE", &ca)
            .env("NO_PROXY", no_proxy)
            .env_remove("no_proxy")
            .env_remove("AWS_ENDPOINT_URL_S3");
    };
    let proxy = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
        .args(["--endpoint", &endpoint, "--sync-interval", "0"]);
    through(&mut cmd, &proxy, "");
    let d = Daemon::spawn(cmd, &t.join("log"));
    let scratch = t.join("scratch.db");
    for i in 0..3 {
        open_app(&db)
            .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        wait_shipped(&replica, "app", &db, &scratch);
    }
    d.stop();
    let target = format!("localhost:{tls_port}");
    assert!(
        seen.lock().unwrap().contains(&target),
        "no CONNECT {target}: {:?}",
        seen.lock().unwrap()
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
        "-o",
    ])
    .arg(&out);
    through(&mut cmd, &proxy, "");
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(content_hash(&out), content_hash(&db));

    let list = |proxy: &str, no_proxy: &str, ca_too: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["list", "-b", &replica.url(), "--endpoint", &endpoint]);
        through(&mut cmd, proxy, no_proxy);
        if !ca_too {
            cmd.env_remove("AWS_CA_BUNDLE");
        }
        let o = cmd.output().unwrap();
        (
            o.status.code(),
            stderr(&o).lines().next().unwrap_or("").to_string(),
        )
    };
    // NO_PROXY: straight to the endpoint, the proxy sees nothing more.
    let before = seen.lock().unwrap().len();
    assert_eq!(list(&proxy, "localhost", true), (Some(0), String::new()));
    assert_eq!(seen.lock().unwrap().len(), before);
    // The proxy gone: one line naming it.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, line) = list(&format!("http://{closed}"), "", true);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!("proxy {closed} (HTTPS_PROXY): ")),
        "{line}"
    );
    // Through the tunnel, but without the private CA: the certificate is refused.
    let (code, line) = list(&proxy, "", false);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("certificate"), "{line}");
}
