//! A small blocking HTTP/1.1 client with keep-alive, for the S3 backend.
//!
//! A per-request transport (rust-s3's sync one, attohttpc) opens a TCP connection, over HTTPS
//! a full TLS handshake, and a watchdog thread for every request. Here every request borrows an idle
//! connection from a small pool and gives it back once its response body has been read to the
//! end, so a worker shipping segments one after another keeps one connection for all of them.
//!
//! Memory is bounded: request bodies are streamed from the caller's reader, response bodies
//! are handed out as readers, headers are capped at 64 KiB, each connection owns one 16 KiB
//! read buffer (plus rustls's own buffers over HTTPS) and at most `MAX_IDLE` connections are
//! kept. `release_idle` closes them all, which the daemon does when it goes quiet, so an idle
//! daemon holds no socket.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod conn;
mod proxy;
mod response;

#[cfg(feature = "tls")]
use conn::tls_config;
use conn::{Conn, Stream};
use proxy::Proxy;
use response::{framing_done, read_head, Framing, Head};
pub use response::{BodyReader, Response};

const MAX_IDLE: usize = crate::cli::DEFAULT_UPLOADS;
/// An idle connection older than this is closed rather than reused: servers drop idle
/// keep-alive connections after 5 to 75 s, and a request sent on a half-closed one fails.
const IDLE_TTL: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request fails when the connection makes no progress for this long (no byte of the body
/// accepted, no byte of the answer received).
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// While a request body is being sent, a write that blocks this long makes the client look
/// for an early answer: a server that rejects a request (or is closing) may answer before
/// reading the whole body, and then stop reading, so the write would otherwise only end at
/// `IO_TIMEOUT`.
const SEND_POLL: Duration = Duration::from_millis(500);

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
    io_timeout: Duration,
    connect_timeout: Duration,
    /// The HTTP(S)_PROXY this target is reached through, if any.
    proxy: Option<Proxy>,
}

/// The system resolver, as `to_socket_addrs` calls it.
fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Resolve `host` within `timeout`: the system resolver has no timeout of its own to give (a
/// dead DNS server holds `getaddrinfo` for the resolver's retries, tens of seconds), so the
/// lookup runs on a thread of its own and a late answer is abandoned (1 MiB of stack, most of it
/// never touched: glibc's DNS code may put a 64 KiB answer buffer on it). Address literals
/// need none.
fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
    lookup: fn(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let name = host.to_string();
    std::thread::Builder::new()
        .name("walsync-dns".into())
        .stack_size(1 << 20)
        .spawn(move || {
            let _ = tx.send(lookup(&name, port));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "looking up {host} took longer than {} s (DNS)",
                timeout.as_secs_f64()
            ),
        )),
    }
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
        let proxy = Proxy::for_target(&target)?;
        Ok(Client {
            target,
            #[cfg(feature = "tls")]
            tls,
            pool: Arc::new(Mutex::new(Vec::new())),
            connects: AtomicU64::new(0),
            io_timeout: IO_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            proxy,
        })
    }

    /// How long a request may go without progress (default 60 s).
    pub fn with_io_timeout(mut self, t: Duration) -> Client {
        self.io_timeout = t;
        self
    }

    /// Never through a proxy (the instance and container credential endpoints).
    pub fn without_proxy(mut self) -> Client {
        self.proxy = None;
        self
    }

    /// How long a connection may take to open (default 10 s).
    pub fn with_connect_timeout(mut self, t: Duration) -> Client {
        self.connect_timeout = t;
        self
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
        let (via, via_port) = match &self.proxy {
            Some(p) => (p.host.trim_start_matches('[').trim_end_matches(']'), p.port),
            None => (host, t.port),
        };
        let mut last = io::Error::other(format!("{via} resolves to no address"));
        let mut tcp = None;
        for addr in resolve(via, via_port, self.connect_timeout, lookup)? {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut tcp = match (tcp, &self.proxy) {
            (Some(t), _) => t,
            (None, Some(_)) => {
                let var = if t.https { "HTTPS_PROXY" } else { "HTTP_PROXY" };
                return Err(io::Error::new(
                    last.kind(),
                    format!("proxy {via}:{via_port} ({var}): {last}"),
                ));
            }
            (None, None) => return Err(last),
        };
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(self.io_timeout))?;
        tcp.set_write_timeout(Some(self.io_timeout))?;
        if let (Some(p), true) = (&self.proxy, t.https) {
            p.tunnel(&mut tcp, t)?;
        }
        self.connects.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "tls")]
        let stream = match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let conn = rustls::ClientConnection::new(Arc::clone(cfg), name)
                    .map_err(io::Error::other)?;
                Stream::Tls {
                    s: Box::new(rustls::StreamOwned::new(conn, tcp)),
                    early: false,
                }
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
                Ok(Head {
                    status,
                    early: true,
                    ..
                }) if (200..300).contains(&status) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{method} {path_query}: the server answered {status} before the request body was sent"),
                    ));
                }
                Ok(Head {
                    status,
                    headers,
                    framing,
                    keep,
                    early,
                }) => {
                    if early {
                        log::debug!("{method} {path_query}: answered {status} before the whole body was sent");
                    }
                    let body = BodyReader {
                        pace: response::Pace::new(),
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
        let host = self.target.host_header();
        let mut req = match &self.proxy {
            // Through an HTTP proxy, a plain request names its whole URL.
            Some(p) if !self.target.https => {
                let mut r =
                    format!("{method} http://{host}{path_query} HTTP/1.1\r\nHost: {host}\r\n");
                if let Some(a) = &p.auth {
                    r.push_str(&format!("Proxy-Authorization: {a}\r\n"));
                }
                r
            }
            _ => format!("{method} {path_query} HTTP/1.1\r\nHost: {host}\r\n"),
        };
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
        let early = match body {
            ReqBody::Empty => self.send_all(conn, &mut io::empty(), req.as_bytes(), 0)?,
            ReqBody::Bytes(b) => self.send_all(conn, &mut &b[..], req.as_bytes(), len)?,
            ReqBody::Stream(r, n) => self.send_all(conn, r, req.as_bytes(), *n)?,
        };
        conn.io.get_ref().quickack();
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
            let keep = !early && !close && !matches!(framing, Framing::Close);
            return Ok(Head {
                status,
                headers,
                framing,
                keep,
                early,
            });
        }
    }

    /// Write the request head and `n` body bytes from `src`. Returns true when the server
    /// answered (or closed the connection) before the body was all sent: the caller reads
    /// that answer, and the connection is not reused. Fails when no byte is accepted for the
    /// I/O timeout (a connection that went dead without a reset).
    fn send_all(
        &self,
        conn: &mut Conn,
        src: &mut dyn Read,
        head: &[u8],
        n: u64,
    ) -> io::Result<bool> {
        let stream = conn.io.get_mut();
        stream.tcp().set_write_timeout(Some(SEND_POLL))?;
        let r = self.send_inner(stream, src, head, n);
        // A stream in a bad state is dropped with the connection anyway.
        let _ = stream.tcp().set_write_timeout(Some(self.io_timeout));
        r
    }

    fn send_inner(
        &self,
        stream: &mut Stream,
        src: &mut dyn Read,
        head: &[u8],
        n: u64,
    ) -> io::Result<bool> {
        let mut buf = vec![0u8; if n == 0 { 0 } else { 16 * 1024 }];
        let mut progress = Instant::now();
        if self.write_out(stream, head, &mut progress, n)? {
            return Ok(true);
        }
        let mut left = n;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let k = match src.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("request body ended after {} of {n} bytes", n - left),
                    ))
                }
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            left -= k as u64;
            if self.write_out(stream, &buf[..k], &mut progress, left)? {
                return Ok(true);
            }
        }
        loop {
            match stream.flush() {
                Ok(()) => return Ok(false),
                Err(e) => {
                    if self.stalled(stream, e, progress, 0)? {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Write all of `data`; true when the server answered first.
    fn write_out(
        &self,
        stream: &mut Stream,
        mut data: &[u8],
        progress: &mut Instant,
        left: u64,
    ) -> io::Result<bool> {
        while !data.is_empty() {
            match stream.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    data = &data[k..];
                    *progress = Instant::now();
                }
                Err(e) => {
                    if self.stalled(stream, e, *progress, left + data.len() as u64)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// The stream refused bytes: true when the server answered (or closed) meanwhile, an
    /// error when it is a hard error or the stall lasted the I/O timeout, false to go on.
    fn stalled(
        &self,
        stream: &mut Stream,
        e: io::Error,
        progress: Instant,
        left: u64,
    ) -> io::Result<bool> {
        let retry = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        );
        // Reset or broken pipe: the server may still have answered before it closed.
        if stream.answered().unwrap_or(false) {
            return Ok(true);
        }
        if !retry {
            return Err(e);
        }
        if progress.elapsed() >= self.io_timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no progress sending the request for {} s ({left} bytes not sent)",
                    self.io_timeout.as_secs()
                ),
            ));
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests;
