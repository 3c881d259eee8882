//! Unit tests of the module beside it.

use super::*;
use std::io::BufRead;

#[test]
fn targets() {
    let (t, p) = Target::parse("https://s3.example.com").unwrap();
    assert_eq!(
        (t.https, t.host.as_str(), t.port, p.as_str()),
        (true, "s3.example.com", 443, "")
    );
    assert_eq!(t.host_header(), "s3.example.com");
    let (t, p) = Target::parse("http://127.0.0.1:3900/base/").unwrap();
    assert_eq!(
        (t.https, t.host.as_str(), t.port, p.as_str()),
        (false, "127.0.0.1", 3900, "/base")
    );
    assert_eq!(t.host_header(), "127.0.0.1:3900");
    let (t, _) = Target::parse("http://[::1]:9000").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("[::1]", 9000));
    assert!(Target::parse("ftp://x").is_none());
    assert!(Target::parse("http://:80").is_none());
    assert!(Target::parse("http://h:port").is_none());
}

/// A server that reads a request's head, then whatever `then` does with the connection.
fn server(then: fn(std::net::TcpStream)) -> Target {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        then(s);
    });
    Target {
        https: false,
        host: "127.0.0.1".into(),
        port,
    }
}

/// PUT 64 MiB (far more than loopback's socket buffers hold) to `t`.
fn put_big(c: &Client) -> io::Result<Response> {
    let mut body = io::repeat(7).take(64 << 20);
    c.send("PUT", "/b/k", &[], ReqBody::Stream(&mut body, 64 << 20))
}

#[test]
fn early_answer_while_the_body_is_sent_is_read() {
    // S3 answers some errors before reading the body, then stops reading.
    let t = server(|mut s| {
        s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\nAccessDenied")
            .unwrap();
        std::thread::sleep(Duration::from_secs(30));
    });
    let c = Client::new(t).unwrap();
    let t0 = Instant::now();
    let resp = put_big(&c).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(resp.status, 403);
    assert_eq!(resp.text(100).unwrap(), "AccessDenied");
    assert!(
        c.pool.lock().unwrap().is_empty(),
        "an early answer's connection is not reused"
    );
}

#[test]
fn server_closing_mid_body_fails_fast() {
    let t = server(|s| {
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
    });
    let c = Client::new(t).unwrap();
    let t0 = Instant::now();
    let e = put_big(&c).err().expect("must fail");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{:?}: {e}",
        t0.elapsed()
    );
}

#[test]
fn a_dead_connection_times_out_without_progress() {
    // Neither an answer nor a reset: the server holds the connection and reads nothing.
    let t = server(|_s| std::thread::sleep(Duration::from_secs(30)));
    let c = Client::new(t)
        .unwrap()
        .with_io_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let e = put_big(&c).err().expect("must fail");
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(
        e.to_string()
            .starts_with("no progress sending the request for 2 s"),
        "{e}"
    );
}

/// A self-signed CA certificate (P-256), as a company CA in the system store would be.
#[cfg(feature = "tls")]
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUT/FA5OTOZbzHODP6Fx1BePgWrGUwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPd2Fsc3luYyB0ZXN0IENBMCAXDTI2MTIwNDAxNTEzOFoYDzIx
MjYxMTEwMDE1MTM4WjAaMRgwFgYDVQQDDA93YWxzeW5jIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATaxLZRV8rT35XhKnivktdwjAdkhMFkZnWxr37/
XGKwEcePqEAZ8+iGkIpt8Wp5arJ6EUpBgt1wHT9aFH0tfONZo1MwUTAdBgNVHQ4E
FgQUx0O6846ykLV2bcqWbCvcevy2R1EwHwYDVR0jBBgwFoAUx0O6846ykLV2bcqW
bCvcevy2R1EwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA0/mU
a/MB61otAH+8Mt28+H5yAb0+gUGseB1ngbcSzvECIQCNszs8OYLLF82unV4okoJD
xwLwifNAwzsLt2e6xZGgsA==
-----END CERTIFICATE-----
";

#[cfg(feature = "tls")]
#[test]
fn system_store_bundle_then_cert_dirs() {
    let dir = std::env::temp_dir().join(format!("walsync-certs-{}", std::process::id()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let bundle = dir.join("bundle.crt");
    std::fs::write(&bundle, format!("{TEST_CA}{TEST_CA}")).unwrap();
    std::fs::write(a.join("company.pem"), TEST_CA).unwrap();
    std::fs::write(b.join("README"), "not a certificate").unwrap();
    let missing = dir.join("absent.crt");
    let bundles = [
        missing.to_str().unwrap(),
        bundle.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ];
    let dirs = std::env::join_paths([&a, &b, &dir.join("nowhere")]).unwrap();
    // The first bundle found (two certificates, once), then each file of the directories.
    let (certs, skipped) = conn::system_roots(&bundles, Some(dirs));
    assert_eq!((certs.len(), skipped), (3, 1));
    let (none, skipped) = conn::system_roots(&[missing.to_str().unwrap()], None);
    assert_eq!((none.len(), skipped), (0, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn name_lookups_have_a_deadline() {
    let literal = resolve("127.0.0.1", 9, Duration::from_millis(1), lookup).unwrap();
    assert_eq!(literal, vec!["127.0.0.1:9".parse().unwrap()]);
    let local = resolve("localhost", 9, Duration::from_secs(30), lookup).unwrap();
    assert!(
        local.iter().all(|a| a.port() == 9 && a.ip().is_loopback()),
        "{local:?}"
    );
    fn dead_dns(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_millis(500));
        Ok(vec![])
    }
    let e = resolve("s3.example.com", 443, Duration::from_millis(20), dead_dns).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        e.to_string(),
        "looking up s3.example.com took longer than 0.02 s (DNS)"
    );
}

#[test]
fn a_trickling_answer_is_given_up() {
    use response::Pace;
    let w = Duration::from_secs(60);
    let mut p = Pace::new();
    // 1 byte a minute: within every read timeout, yet given up after a window of waiting.
    let e = p.add(1, Duration::from_secs(61), w, 16 << 10).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        e.to_string(),
        "the answer came at 1 bytes in 61 s, too slow: given up"
    );
    // A slow but steady download keeps going, window after window.
    let mut p = Pace::new();
    for _ in 0..1000 {
        p.add(4096, Duration::from_millis(200), w, 16 << 10)
            .unwrap();
    }
    // A head trickled byte by byte is cut at the deadline.
    let mut slow = io::BufReader::with_capacity(1, &b"HTTP/1.1 200 OK\r\n"[..]);
    let mut line = Vec::new();
    let e = response::read_line_by(&mut slow, &mut line, 1024, Instant::now()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    let n = response::read_line_by(&mut slow, &mut line, 1024, Instant::now() + w).unwrap();
    assert_eq!((n, &line[..]), (17, &b"HTTP/1.1 200 OK\r\n"[..]));
}
