//! A small fault-injecting TCP proxy on 127.0.0.1 in front of the real S3 server. It counts
//! HTTP requests by method (and LIST separately), and injects storage faults: refused
//! connections (the server "down", which also cuts the connections already open), connections
//! reset in the middle of an upload, downloads cut off mid-way, 500/503 answers, and slow answers. Bytes that pass go
//! through untouched, so signatures stay valid.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to each request (and, for `Down`, to each connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Refuse new connections and cut the open ones.
    Down,
    /// Forward the head and half the body of the next request, then reset the connection.
    ResetMidUpload,
    /// Answer with this status without asking the server.
    Status(u16),
    /// Hold each request this long before forwarding it.
    Slow(Duration),
    /// Forward each object GET but cut its answer after 2 KiB (headers and the start of the
    /// body): a download that breaks off mid-way.
    CutDownloads,
    /// Answer each object GET with this status (other requests pass).
    GetStatus(u16),
    /// `Stall` for object GETs only.
    StallGets,
    /// A dead connection: read nothing more and answer nothing (the client's writes and reads
    /// block) until the fault is cleared, then cut the connection.
    Stall,
}

struct Shared {
    fault: Mutex<Fault>,
    counts: Mutex<BTreeMap<String, u64>>,
    open: Mutex<Vec<TcpStream>>,
    injected: AtomicU64,
    /// Request body bytes of PUT and POST requests forwarded.
    bytes_up: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            counts: Mutex::new(BTreeMap::new()),
            open: Mutex::new(Vec::new()),
            injected: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
        });
        let sh = shared.clone();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                if *sh.fault.lock().unwrap() == Fault::Down {
                    sh.injected.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let sh = sh.clone();
                thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(upstream) else {
                        return;
                    };
                    {
                        let mut open = sh.open.lock().unwrap();
                        open.retain(|s| s.peer_addr().is_ok());
                        open.push(client.try_clone().unwrap());
                        open.push(server.try_clone().unwrap());
                    }
                    let (c2s_in, s2c_out) = (client.try_clone().unwrap(), client);
                    let (s_out, s_in) = (server.try_clone().unwrap(), server);
                    let budget = Arc::new(AtomicI64::new(-1));
                    let b = budget.clone();
                    let back = thread::spawn(move || pump(s_in, s2c_out, &b));
                    forward_requests(c2s_in, s_out, &sh, &budget);
                    let _ = back.join();
                });
            }
        });
        Proxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_fault(&self, f: Fault) {
        *self.shared.fault.lock().unwrap() = f;
        if f == Fault::Down {
            for s in self.shared.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn set_down(&self, down: bool) {
        self.set_fault(if down { Fault::Down } else { Fault::None });
    }

    /// Requests or connections a fault was applied to.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Body bytes of the PUT and POST requests forwarded so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.shared.counts.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        self.shared.counts.lock().unwrap().clear();
    }
}

/// Server to client; `budget` (bytes, -1 for no limit) cuts both connections once spent.
fn pump(mut from: TcpStream, mut to: TcpStream, budget: &AtomicI64) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let left = budget.load(Ordering::SeqCst);
        if left >= 0 && n as i64 > left {
            let _ = to.write_all(&buf[..left as usize]);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        if left >= 0 {
            budget.fetch_sub(n as i64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Forward client bytes to the server, parsing each request's head to count it and to apply
/// the current fault.
fn forward_requests(from: TcpStream, mut to: TcpStream, sh: &Shared, budget: &AtomicI64) {
    let mut answer = from.try_clone().unwrap();
    let mut r = BufReader::new(from);
    let cut = |to: &TcpStream, answer: &TcpStream| {
        let _ = to.shutdown(Shutdown::Both);
        let _ = answer.shutdown(Shutdown::Both);
    };
    loop {
        let mut head = Vec::new();
        let mut len = 0u64;
        let mut chunked = false;
        let mut ranged = false;
        let mut first = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            head.extend_from_slice(line.as_bytes());
            let l = line.trim_end().to_ascii_lowercase();
            if first.is_empty() {
                first = line.trim_end().to_string();
            } else if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            } else if l.starts_with("range:") {
                ranged = true;
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("?").to_string();
        let target = parts.next().unwrap_or("");
        let kind = if method == "GET" && (target.contains("list-type=") || target.ends_with('/')) {
            "LIST".to_string()
        } else {
            method
        };
        if kind == "PUT" || kind == "POST" {
            sh.bytes_up.fetch_add(len, Ordering::SeqCst);
        }
        *sh.counts.lock().unwrap().entry(kind.clone()).or_default() += 1;
        if ranged && kind == "GET" {
            // Counted apart too: a resumed or parallel download.
            *sh.counts
                .lock()
                .unwrap()
                .entry("GET range".into())
                .or_default() += 1;
        }
        let fault = match *sh.fault.lock().unwrap() {
            Fault::GetStatus(code) if kind == "GET" => Fault::Status(code),
            Fault::StallGets if kind == "GET" => Fault::Stall,
            Fault::GetStatus(_) | Fault::StallGets => Fault::None,
            f => f,
        };
        // Answers come one at a time on a connection: a cut armed for an earlier (small) answer
        // must not cut this one.
        budget.store(-1, Ordering::SeqCst);
        match fault {
            Fault::None | Fault::GetStatus(_) | Fault::StallGets => {}
            Fault::Down => {
                sh.injected.fetch_add(1, Ordering::SeqCst);
                cut(&to, &answer);
                return;
            }
            Fault::ResetMidUpload => {
                sh.injected.fetch_add(1, Ordering::SeqCst);
                let _ = to.write_all(&head);
                let _ = std::io::copy(&mut (&mut r).take(len / 2), &mut to);
                cut(&to, &answer);
                return;
            }
            Fault::Status(code) => {
                sh.injected.fetch_add(1, Ordering::SeqCst);
                if std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).is_err() {
                    return;
                }
                let body = if kind_is_head(&first) {
                    String::new()
                } else {
                    format!(
                    "<?xml version=\"1.0\"?><Error><Code>{}</Code><Message>injected</Message></Error>",
                    if code == 503 { "SlowDown" } else { "InternalError" }
                )
                };
                let resp = format!(
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if answer.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            Fault::CutDownloads if kind == "GET" => {
                sh.injected.fetch_add(1, Ordering::SeqCst);
                budget.store(2048, Ordering::SeqCst);
            }
            Fault::CutDownloads => {}
            Fault::Slow(d) => {
                sh.injected.fetch_add(1, Ordering::SeqCst);
                thread::sleep(d);
            }
            Fault::Stall => {
                sh.injected.fetch_add(1, Ordering::SeqCst);
                while matches!(*sh.fault.lock().unwrap(), Fault::Stall | Fault::StallGets) {
                    thread::sleep(Duration::from_millis(50));
                }
                cut(&to, &answer);
                return;
            }
        }
        if to.write_all(&head).is_err() {
            return;
        }
        if chunked {
            // Not used by walsync's client; pass the rest through as is.
            let _ = std::io::copy(&mut r, &mut to);
            return;
        }
        if std::io::copy(&mut (&mut r).take(len), &mut to).is_err() {
            return;
        }
    }
}

fn kind_is_head(request_line: &str) -> bool {
    request_line.starts_with("HEAD ")
}
