//! A small TCP proxy on 127.0.0.1 in front of the real S3 server: it counts HTTP requests by
//! method (and LIST separately), and can be switched "down", refusing every connection, to
//! simulate an outage. Bytes pass through untouched, so signatures stay valid.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let (d, c) = (down.clone(), counts.clone());
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let c = c.clone();
                thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(upstream) else {
                        return;
                    };
                    let (c2s_in, s2c_out) = (client.try_clone().unwrap(), client);
                    let (s_out, s_in) = (server.try_clone().unwrap(), server);
                    let back = thread::spawn(move || pump(s_in, s2c_out));
                    count_requests(c2s_in, s_out, &c);
                    let _ = back.join();
                });
            }
        });
        Proxy { port, down, counts }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        self.counts.lock().unwrap().clear();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Forward client bytes to the server, parsing each request's head to count it.
fn count_requests(from: TcpStream, mut to: TcpStream, counts: &Mutex<BTreeMap<String, u64>>) {
    let mut r = BufReader::new(from);
    loop {
        let mut head = Vec::new();
        let mut len = 0u64;
        let mut chunked = false;
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
        *counts.lock().unwrap().entry(kind).or_default() += 1;
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
