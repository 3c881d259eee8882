//! Reading an answer: its head (status line and headers, at most 64 KiB), its body framing,
//! and the body reader that gives the connection back to the pool when read to its end.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn::{Conn, Stream};
use super::MAX_IDLE;

const MAX_HEAD: usize = 64 * 1024;

/// A server trickling its answer (each read within the read timeout, yet a byte a minute)
/// must not hold a worker forever: a head must be complete within `HEAD_DEADLINE`, and a body
/// that brings less than `MIN_BYTES_PER_WINDOW` in a `SPEED_WINDOW` is given up (a transient
/// error: the request is retried), as curl's --speed-limit does.
const HEAD_DEADLINE: Duration = Duration::from_secs(120);
pub(super) const SPEED_WINDOW: Duration = Duration::from_secs(60);
pub(super) const MIN_BYTES_PER_WINDOW: u64 = 16 * 1024;

/// A body's pace: bytes, and time spent waiting for them inside reads (a slow reader of the
/// body, such as a restore writing to a slow disk, is not the server's slowness).
#[derive(Debug)]
pub(super) struct Pace {
    waited: Duration,
    bytes: u64,
}

impl Pace {
    pub(super) fn new() -> Pace {
        Pace {
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Count `n` bytes that took `took` to come; an error when a window's worth of waiting
    /// brought too few.
    pub(super) fn add(
        &mut self,
        n: usize,
        took: Duration,
        window: Duration,
        min: u64,
    ) -> io::Result<()> {
        self.bytes += n as u64;
        self.waited += took;
        if self.waited >= window {
            if self.bytes < min {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the answer came at {} bytes in {} s, too slow: given up",
                        self.bytes,
                        self.waited.as_secs()
                    ),
                ));
            }
            *self = Pace::new();
        }
        Ok(())
    }
}

pub(super) fn read_head(r: &mut BufReader<Stream>) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut total = 0;
    let mut line = Vec::new();
    let began = Instant::now();
    let mut next_line = |line: &mut Vec<u8>| -> io::Result<()> {
        line.clear();
        let n = read_line_by(r, line, MAX_HEAD - total + 1, began + HEAD_DEADLINE)?;
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

/// One line (up to `limit` bytes) as `read_until` reads it, but given up at `deadline`
/// between two reads of the connection.
pub(super) fn read_line_by(
    r: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
) -> io::Result<usize> {
    let start = line.len();
    loop {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete answer head within {} s",
                    HEAD_DEADLINE.as_secs()
                ),
            ));
        }
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(line.len() - start);
        }
        let room = limit.saturating_sub(line.len() - start);
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), room <= buf.len()),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(line.len() - start);
        }
    }
}

/// An answer's head: status, headers, body framing, whether the connection may be reused,
/// and whether the answer came before the whole request body was sent.
pub(super) struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    pub keep: bool,
    pub early: bool,
}

#[derive(Debug)]
pub(super) enum Framing {
    Length(u64),
    Chunked { left: u64, done: bool },
    Close,
}

pub(super) fn framing_done(f: &Framing) -> bool {
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
    pub(super) pace: Pace,
    pub(super) conn: Option<Conn>,
    pub(super) framing: Framing,
    pub(super) keep: bool,
    pub(super) pool: Arc<Mutex<Vec<Conn>>>,
}

impl BodyReader {
    pub(super) fn give_back(&mut self) {
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

/// Read from a chunked body: `left` bytes remain of the current chunk; `done` once the
/// last chunk and the trailers are read.
fn read_chunked(
    r: &mut BufReader<Stream>,
    buf: &mut [u8],
    left: &mut u64,
    done: &mut bool,
) -> io::Result<usize> {
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
        return Ok(0);
    }
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
    Ok(n)
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
        let began = Instant::now();
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
            Framing::Chunked { left, done } => read_chunked(r, buf, left, done)?,
        };
        if n > 0 {
            if let Err(e) = self
                .pace
                .add(n, began.elapsed(), SPEED_WINDOW, MIN_BYTES_PER_WINDOW)
            {
                self.conn = None; // mid-body: the connection cannot be reused
                return Err(e);
            }
        }
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
