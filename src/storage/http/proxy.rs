//! Going through an HTTP proxy, as every other S3 tool does: `HTTPS_PROXY` for https
//! endpoints (a `CONNECT` tunnel, TLS end to end inside it), `HTTP_PROXY` for http ones
//! (requests in absolute form), either in lower case too, `user:password@` for Basic
//! authentication, and `NO_PROXY` (comma-separated host names, `.domain` suffixes, `host:port`,
//! or `*`) for the hosts reached directly.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;

use super::Target;

#[derive(Debug, Clone)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` header value.
    pub auth: Option<String>,
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

impl Proxy {
    /// The proxy the environment names for `target`, if any; an unusable setting is an error
    /// naming the variable.
    pub fn for_target(target: &Target) -> io::Result<Option<Proxy>> {
        let (names, var): (&[&str], &str) = if target.https {
            (&["HTTPS_PROXY", "https_proxy"], "HTTPS_PROXY")
        } else {
            (&["HTTP_PROXY", "http_proxy"], "HTTP_PROXY")
        };
        let Some(url) = env(names) else {
            return Ok(None);
        };
        if no_proxy(&env(&["NO_PROXY", "no_proxy"]).unwrap_or_default(), target) {
            return Ok(None);
        }
        Proxy::parse(&url).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{var} '{url}' is not http://[user:password@]host[:port]"),
            )
        })
    }

    fn parse(url: &str) -> Option<Proxy> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.contains("://") {
            return None; // https:// proxies (TLS to the proxy) are not supported
        }
        let rest = rest.split('/').next()?;
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (hostport, 80),
        };
        if host.is_empty() {
            return None;
        }
        Some(Proxy {
            host: host.to_string(),
            port,
            auth: auth.map(|a| format!("Basic {}", crate::digest::base64(a.as_bytes()))),
        })
    }

    /// Through the proxy to `target`: a tunnel opened with `CONNECT` (https targets; the
    /// caller then speaks TLS over it).
    pub fn tunnel(&self, tcp: &mut TcpStream, target: &Target) -> io::Result<()> {
        let hp = format!("{}:{}", target.host, target.port);
        let mut req = format!("CONNECT {hp} HTTP/1.1\r\nHost: {hp}\r\n");
        if let Some(a) = &self.auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes())?;
        // Read the answer's head byte by byte: nothing after it may be consumed (TLS follows).
        let mut r = BufReader::with_capacity(1, tcp.try_clone()?);
        let mut status = String::new();
        r.read_line(&mut status)?;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if code != "200" {
            return Err(io::Error::other(format!(
                "proxy {}:{} refused CONNECT {hp}: {}",
                self.host,
                self.port,
                status.trim()
            )));
        }
        Ok(())
    }
}

/// Does `NO_PROXY` exempt `target`?
fn no_proxy(list: &str, target: &Target) -> bool {
    let host = target
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|e| {
            if e == "*" {
                return true;
            }
            let e = e.to_ascii_lowercase();
            let (name, port) = match e.rsplit_once(':') {
                Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !n.contains(':') => {
                    (n.to_string(), p.parse::<u16>().ok())
                }
                _ => (e.clone(), None),
            };
            let name = name.trim_start_matches('.').trim_start_matches("*.");
            port.is_none_or(|p| p == target.port)
                && (host == name || host.ends_with(&format!(".{name}")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Target {
        Target {
            https: true,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_proxies_and_no_proxy() {
        let p = Proxy::parse("http://u:p@proxy.corp:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.auth.as_deref(), Some("Basic dTpw"));
        let p = Proxy::parse("proxy.corp").unwrap();
        assert_eq!((p.port, p.auth), (80, None));
        assert!(Proxy::parse("https://proxy:443").is_none());
        assert!(Proxy::parse("http://:8080").is_none());
        let s3 = t("bucket.s3.eu-west-1.amazonaws.com", 443);
        assert!(no_proxy("localhost, .amazonaws.com", &s3));
        assert!(no_proxy("amazonaws.com", &s3));
        assert!(no_proxy("*", &s3));
        assert!(!no_proxy("s3.amazonaws.co,localhost", &s3));
        assert!(no_proxy("127.0.0.1", &t("127.0.0.1", 3900)));
        assert!(no_proxy("127.0.0.1:3900", &t("127.0.0.1", 3900)));
        assert!(!no_proxy("127.0.0.1:80", &t("127.0.0.1", 3900)));
        assert!(!no_proxy("", &s3));
    }
}
