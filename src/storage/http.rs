//! A small blocking HTTP/1.1 client with keep-alive, for the S3 backend.
//!
//! rust-s3's sync transport (attohttpc) opens a TCP connection, over HTTPS a full TLS
//! handshake, and a watchdog thread for every request. Here every request borrows an idle
//! connection from a small pool and gives it back once its response body has been read to the
//! end, so a worker shipping segments one after another keeps one connection for all of them.
//!
//! Memory is bounded: request bodies are streamed from the caller's reader, response bodies
//! are handed out as readers, headers are capped at 64 KiB, each connection owns one 16 KiB
//! read buffer (plus rustls's own buffers over HTTPS) and at most `MAX_IDLE` connections are
//! kept. `release_idle` closes them all, which the daemon does when it goes quiet, so an idle
//! daemon holds no socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_IDLE: usize = 8;
/// An idle connection older than this is closed rather than reused: servers drop idle
/// keep-alive connections after 5 to 75 s, and a request sent on a half-closed one fails.
const IDLE_TTL: Duration = Duration::from_secs(15);
const MAX_HEAD: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// Ask Linux to acknowledge at once while we wait for an answer: a server that writes a
    /// response in two pieces without TCP_NODELAY (Garage's body after its head) otherwise
    /// waits for our delayed ACK, 40 ms per request.
    fn quickack(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::TcpStreamExt;
            let _ = self.tcp().set_quickack(true);
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

struct Conn {
    io: BufReader<Stream>,
    idle_since: Instant,
    reused: bool,
}

impl Conn {
    /// Whether an idle connection still looks usable: nothing buffered, and the socket has
    /// neither been closed by the server nor received anything unasked.
    fn alive(&self) -> bool {
        if !self.io.buffer().is_empty() || self.idle_since.elapsed() > IDLE_TTL {
            return false;
        }
        let tcp = self.io.get_ref().tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let ok = matches!(tcp.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        ok && tcp.set_nonblocking(false).is_ok()
    }
}

/// Where requests go: scheme, host and port of an endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parse `http(s)://host[:port][/...]`; returns the target and any base path.
    pub fn parse(url: &str) -> Option<(Target, String)> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let default = if https { 443 } else { 80 };
        let (host, port) = if hostport.starts_with('[') {
            let end = hostport.find(']')?;
            let port = match &hostport[end + 1..] {
                "" => default,
                p => p.strip_prefix(':')?.parse().ok()?,
            };
            (&hostport[..=end], port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (hostport, default),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some((
            Target {
                https,
                host: host.to_string(),
                port,
            },
            path.to_string(),
        ))
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        if self.port == if self.https { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A request body: nothing, a small buffer (may be resent), or `len` bytes from a reader
/// (sent once).
pub enum ReqBody<'a> {
    Empty,
    Bytes(&'a [u8]),
    Stream(&'a mut dyn Read, u64),
}

pub struct Client {
    target: Target,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
    pool: Arc<Mutex<Vec<Conn>>>,
    connects: AtomicU64,
}

impl Client {
    pub fn new(target: Target) -> io::Result<Client> {
        #[cfg(feature = "tls")]
        let tls = if target.https {
            Some(tls_config()?)
        } else {
            None
        };
        #[cfg(not(feature = "tls"))]
        if target.https {
            return Err(io::Error::other(
                "this build has no TLS support (built without the `tls` feature)",
            ));
        }
        Ok(Client {
            target,
            #[cfg(feature = "tls")]
            tls,
            pool: Arc::new(Mutex::new(Vec::new())),
            connects: AtomicU64::new(0),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Connections opened so far (for the benchmark's figures).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Close every idle connection.
    pub fn release_idle(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn connect(&self) -> io::Result<Conn> {
        let t = &self.target;
        let host = t.host.trim_start_matches('[').trim_end_matches(']');
        let mut last = io::Error::other(format!("{host} resolves to no address"));
        let mut tcp = None;
        for addr in (host, t.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "tls")]
        let stream = match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let conn = rustls::ClientConnection::new(Arc::clone(cfg), name)
                    .map_err(io::Error::other)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
            None => Stream::Plain(tcp),
        };
        #[cfg(not(feature = "tls"))]
        let stream = Stream::Plain(tcp);
        Ok(Conn {
            io: BufReader::with_capacity(16 * 1024, stream),
            idle_since: Instant::now(),
            reused: false,
        })
    }

    fn checkout(&self) -> io::Result<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut c) = pool.pop() {
            if c.alive() {
                c.reused = true;
                return Ok(c);
            }
        }
        drop(pool);
        self.connect()
    }

    /// Send one request; `head` holds every header but `Host` and `Content-Length`. A
    /// request without a streamed body that fails on a reused connection before any answer
    /// came back is sent once more on a new connection (the server may have closed it).
    pub fn send(
        &self,
        method: &str,
        path_query: &str,
        head: &[(String, String)],
        mut body: ReqBody,
    ) -> io::Result<Response> {
        loop {
            let mut conn = self.checkout()?;
            let reused = conn.reused;
            match self.exchange(&mut conn, method, path_query, head, &mut body) {
                Ok((status, headers, framing, keep)) => {
                    let body = BodyReader {
                        conn: Some(conn),
                        framing,
                        keep,
                        pool: Arc::clone(&self.pool),
                    };
                    let mut resp = Response {
                        status,
                        headers,
                        body,
                    };
                    if framing_done(&resp.body.framing) {
                        resp.body.give_back();
                    }
                    return Ok(resp);
                }
                Err(e) if reused && !matches!(body, ReqBody::Stream(..)) => {
                    log::debug!(
                        "{method} {path_query}: reused connection failed ({e}); reconnecting"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn exchange(
        &self,
        conn: &mut Conn,
        method: &str,
        path_query: &str,
        head: &[(String, String)],
        body: &mut ReqBody,
    ) -> io::Result<Head> {
        let len = match body {
            ReqBody::Empty => 0,
            ReqBody::Bytes(b) => b.len() as u64,
            ReqBody::Stream(_, n) => *n,
        };
        let mut req = format!(
            "{method} {path_query} HTTP/1.1\r\nHost: {}\r\n",
            self.target.host_header()
        );
        for (k, v) in head {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        if len > 0 || matches!(method, "PUT" | "POST") {
            req.push_str(&format!("Content-Length: {len}\r\n"));
        }
        req.push_str("\r\n");
        let w = conn.io.get_mut();
        w.write_all(req.as_bytes())?;
        match body {
            ReqBody::Empty => {}
            ReqBody::Bytes(b) => w.write_all(b)?,
            ReqBody::Stream(r, n) => {
                let sent = io::copy(&mut r.take(*n), w)?;
                if sent != *n {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("request body ended after {sent} of {n} bytes"),
                    ));
                }
            }
        }
        w.flush()?;
        w.quickack();
        loop {
            let (status, headers) = read_head(&mut conn.io)?;
            if (100..200).contains(&status) {
                continue; // 100 Continue and friends: the real answer follows
            }
            let get = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.as_str())
            };
            let chunked = get("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            let length = get("content-length").and_then(|v| v.trim().parse::<u64>().ok());
            let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let framing = if method == "HEAD" || status == 204 || status == 304 {
                Framing::Length(0)
            } else if chunked {
                Framing::Chunked {
                    left: 0,
                    done: false,
                }
            } else if let Some(n) = length {
                Framing::Length(n)
            } else {
                Framing::Close
            };
            let keep = !close && !matches!(framing, Framing::Close);
            return Ok((status, headers, framing, keep));
        }
    }
}

fn read_head(r: &mut BufReader<Stream>) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut total = 0;
    let mut line = Vec::new();
    let mut next_line = |line: &mut Vec<u8>| -> io::Result<()> {
        line.clear();
        let n = r
            .by_ref()
            .take((MAX_HEAD - total) as u64 + 1)
            .read_until(b'\n', line)?;
        total += n;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        if total > MAX_HEAD || line.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head over 64 KiB",
            ));
        }
        Ok(())
    };
    next_line(&mut line)?;
    let status_line = String::from_utf8_lossy(&line);
    let mut parts = status_line.split_whitespace();
    let status = match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u16>().ok()),
    ) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") => s,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP response: {:?}", status_line.trim_end()),
            ))
        }
    };
    let mut headers = Vec::new();
    loop {
        next_line(&mut line)?;
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// Status, headers, body framing, and whether the connection may be reused.
type Head = (u16, Vec<(String, String)>, Framing, bool);

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked { left: u64, done: bool },
    Close,
}

fn framing_done(f: &Framing) -> bool {
    matches!(f, Framing::Length(0) | Framing::Chunked { done: true, .. })
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: BodyReader,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, at most `limit` bytes; the connection goes back to the pool when
    /// the body was read to its end.
    pub fn text(mut self, limit: u64) -> io::Result<String> {
        let mut v = Vec::new();
        (&mut self.body).take(limit).read_to_end(&mut v)?;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
}

/// A response body. Reading it to the end returns its connection to the pool; dropping it
/// earlier closes the connection.
pub struct BodyReader {
    conn: Option<Conn>,
    framing: Framing,
    keep: bool,
    pool: Arc<Mutex<Vec<Conn>>>,
}

impl BodyReader {
    fn give_back(&mut self) {
        if let Some(mut c) = self.conn.take() {
            if self.keep {
                c.idle_since = Instant::now();
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < MAX_IDLE {
                    pool.push(c);
                }
            }
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(0);
        };
        let r = &mut conn.io;
        if r.buffer().is_empty() {
            r.get_ref().quickack();
        }
        let n = match &mut self.framing {
            Framing::Length(0) => 0,
            Framing::Length(left) => {
                let want = (*left).min(buf.len() as u64) as usize;
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("response body ended {left} bytes early"),
                    ));
                }
                *left -= n as u64;
                n
            }
            Framing::Close => r.read(buf)?,
            Framing::Chunked { left, done } => {
                if *left == 0 && !*done {
                    let mut line = Vec::new();
                    r.by_ref().take(1024).read_until(b'\n', &mut line)?;
                    let s = String::from_utf8_lossy(&line);
                    let hex = s.trim().split(';').next().unwrap_or("");
                    *left = u64::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
                    if *left == 0 {
                        // Trailers until an empty line.
                        loop {
                            line.clear();
                            let n = r.by_ref().take(8192).read_until(b'\n', &mut line)?;
                            if n == 0 || line == b"\r\n" || line == b"\n" {
                                break;
                            }
                        }
                        *done = true;
                    }
                }
                if *done {
                    0
                } else {
                    let want = (*left).min(buf.len() as u64) as usize;
                    let n = r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "chunked response body ended early",
                        ));
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        let mut crlf = [0u8; 2];
                        r.read_exact(&mut crlf)?;
                    }
                    n
                }
            }
        };
        if n == 0 || framing_done(&self.framing) {
            if matches!(self.framing, Framing::Close) {
                self.conn = None;
            } else {
                self.give_back();
            }
        }
        Ok(n)
    }
}

#[cfg(feature = "tls")]
fn tls_config() -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A private CA (a self-hosted MinIO or Garage behind TLS): AWS_CA_BUNDLE, as the AWS
    // tools read it, or SSL_CERT_FILE.
    for var in ["AWS_CA_BUNDLE", "SSL_CERT_FILE"] {
        let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| io::Error::other(format!("{var}={}: {e}", path.to_string_lossy())))?;
        for c in certs {
            let c = c.map_err(|e| io::Error::other(format!("{var}: {e}")))?;
            roots
                .add(c)
                .map_err(|e| io::Error::other(format!("{var}: {e}")))?;
        }
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
