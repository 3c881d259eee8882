//! Request cost over HTTPS (issue #3): nginx from Debian's packages terminates TLS in front of
//! the suite's Garage, and walsync's S3 backend sends N small PUTs, then N GETs, then N HEADs.
//! Printed per phase: requests per second, CPU time per request, threads created (the system's
//! fork/clone counter from /proc/stat; the machine should be otherwise quiet) and TLS
//! connections opened (distinct connections in nginx's access log).
//!
//! ```sh
//! cargo test --release --test tests bench_https -- --ignored --nocapture
//! ```
//! `BENCH_REQUESTS` (default 300) sets N.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn self_cpu_ms() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("").to_string();
    let f: Vec<&str> = after.split_whitespace().collect();
    let t: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    t as f64 * 10.0 // USER_HZ = 100
}

fn forks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Start nginx terminating TLS on `port` in front of `upstream`; returns the child and the
/// CA certificate path.
pub fn start_tls_proxy(
    dir: &Path,
    port: u16,
    upstream: &str,
) -> Option<(Nginx, std::path::PathBuf)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    std::fs::create_dir_all(dir).unwrap();
    // A private CA and a server certificate it signs (webpki refuses a CA certificate used
    // as the server's own).
    let ca = dir.join("ca.pem");
    let sh = format!(
        "set -e; cd '{d}'; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walsync-test-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out srv.csr; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem",
        d = dir.display()
    );
    let ok = Command::new("sh")
        .args(["-c", &sh])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl could not make a certificate");
    let d = dir.display();
    // No keep-alive towards Garage: it writes a GET's head and body in two pieces without
    // TCP_NODELAY, and nginx's delayed ACK would add 40 ms to every GET. The leg measured is
    // walsync <-> nginx, which is where TLS is.
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  log_format conn '$connection $connection_requests $request_method';\n\
           access_log {d}/access.log conn;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream s3 {{ server {upstream}; }}\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
             client_max_body_size 0;\n    proxy_request_buffering off;\n    proxy_buffering off;\n\
             location / {{ proxy_pass http://s3; proxy_http_version 1.1; proxy_set_header Host $http_host; }}\n\
           }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_until("nginx listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Some((Nginx(child), ca))
}

/// The nginx child, stopped when dropped (also when a test panics).
pub struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn connections_in(log: &Path) -> usize {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let mut ids: Vec<&str> = s.lines().filter_map(|l| l.split(' ').next()).collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

#[test]
#[ignore = "benchmark: cargo test --release --test tests bench_https -- --ignored --nocapture"]
fn bench_https() {
    ensure_s3();
    let t = TestDir::new("bench-https");
    let up = std::env::var("AWS_ENDPOINT_URL_S3").unwrap();
    let up = up
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let port = 3943;
    let Some((_nginx, cert)) = start_tls_proxy(&t.join("nginx"), port, &up) else {
        eprintln!("nginx is not installed (apt-get install nginx-light); skipping");
        return;
    };
    // The private CA: walsync reads AWS_CA_BUNDLE or SSL_CERT_FILE.
    unsafe { std::env::set_var("SSL_CERT_FILE", &cert) };
    let n: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let url = walsync::storage::parse_url(&format!(
        "s3://{}/bench-https",
        std::env::var("S3_BUCKET").unwrap_or_else(|_| "walsync-test".into())
    ))
    .unwrap();
    let body = vec![7u8; 4096];
    let log = t.join("nginx/access.log");
    let key = |prefix: &str, i: usize| format!("{prefix}/obj-{i:05}");
    let phase = |st: &dyn walsync::storage::Storage, op: &str, f: &mut dyn FnMut(usize)| {
        let before_conns = connections_in(&log);
        let (c0, f0, t0) = (self_cpu_ms(), forks(), Instant::now());
        for i in 0..n {
            f(i);
        }
        let secs = t0.elapsed().as_secs_f64();
        let (cpu, threads) = (self_cpu_ms() - c0, forks() - f0);
        st.release_idle();
        std::thread::sleep(Duration::from_millis(300)); // let nginx write its log
        let conns = connections_in(&log) - before_conns;
        println!(
            "{op:<6} {:>10.0} {:>14.2} {:>16} {:>16}",
            n as f64 / secs,
            cpu / n as f64,
            threads,
            conns
        );
    };
    // The body's real SHA-256: PUTs sign it as the payload hash and the server checks it.
    let sha = {
        use sha2::{Digest, Sha256};
        walsync::digest::hex(Sha256::new_with_prefix(&body))
    };
    let meta: walsync::layout::Meta = [("sha256".to_string(), sha)].into_iter().collect();
    for (label, endpoint) in [
        (
            "HTTPS via nginx -> Garage",
            format!("https://localhost:{port}"),
        ),
        (
            "plain HTTP, Garage directly (no TLS, not in nginx's log)",
            format!("http://{up}"),
        ),
    ] {
        let opts = walsync::storage::s3::S3Options {
            endpoint: Some(endpoint),
            region: None,
            ..Default::default()
        };
        let (st, prefix) = walsync::storage::open(&url, &opts).unwrap();
        let st = st.as_ref();
        println!("\n{label}: {n} requests of each kind, 4 KiB objects, one thread");
        println!(
            "{:<6} {:>10} {:>14} {:>16} {:>16}",
            "op", "req/s", "CPU ms/req", "threads created", "TLS connections"
        );
        phase(st, "PUT", &mut |i| {
            st.put(&key(&prefix, i), &mut &body[..], body.len() as u64, &meta)
                .unwrap()
        });
        phase(st, "GET", &mut |i| {
            let mut b = st.get(&key(&prefix, i)).unwrap();
            std::io::copy(&mut b.reader, &mut std::io::sink()).unwrap();
        });
        phase(st, "HEAD", &mut |i| {
            st.head(&key(&prefix, i)).unwrap();
        });
        for i in 0..n {
            st.delete(&key(&prefix, i)).unwrap();
        }
    }
}
