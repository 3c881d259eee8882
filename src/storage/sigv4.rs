//! AWS Signature Version 4 for S3 requests sent as headers (`Authorization`), over the
//! keep-alive client. Object bodies are streamed, so their payload hash is
//! `UNSIGNED-PAYLOAD` (the transport is TLS where it matters, and every object carries its own
//! SHA-256 which restore verifies); small XML bodies are hashed.

use sha2::{Digest, Sha256};

use crate::time::Stamp;

pub const UNSIGNED: &str = "UNSIGNED-PAYLOAD";

pub struct Keys {
    pub access: String,
    pub secret: String,
    pub token: Option<String>,
    pub region: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    crate::digest::hex(Sha256::new_with_prefix(data))
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Percent-encode per SigV4: everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `20261122T030405Z`.
fn amz_date(t: Stamp) -> String {
    let k = t.key(); // YYYYMMDDHHMMSSmmm
    format!("{}T{}Z", &k[..8], &k[8..14])
}

/// Sign a request. `path` is already encoded, `query` holds raw (unencoded) pairs, `headers`
/// are the headers to sign besides `host`, `x-amz-date`, `x-amz-content-sha256` and the
/// session token, which are added. Returns the query string and every header to send.
pub struct Request<'a> {
    /// `s3`, or `sts` for the credential calls (which sign no `x-amz-content-sha256`).
    pub service: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(String, String)],
    pub payload_hash: &'a str,
}

pub fn sign(keys: &Keys, req: &Request, now: Stamp) -> (String, Vec<(String, String)>) {
    let Request {
        service,
        method,
        host,
        path,
        query,
        headers,
        payload_hash,
    } = *req;
    let date = amz_date(now);
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode(k, false), encode(v, false)))
        .collect();
    q.sort();
    let query_string = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    signed.push(("host".into(), host.into()));
    signed.push(("x-amz-date".into(), date.clone()));
    if service == "s3" {
        signed.push(("x-amz-content-sha256".into(), payload_hash.into()));
    }
    if let Some(t) = &keys.token {
        signed.push(("x-amz-security-token".into(), t.clone()));
    }
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{path}\n{query_string}\n{canonical_headers}\n{signed_names}\n{payload_hash}"
    );
    let day = &date[..8];
    let scope = format!("{day}/{}/{service}/aws4_request", keys.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut k = hmac(format!("AWS4{}", keys.secret).as_bytes(), day.as_bytes());
    k = hmac(&k, keys.region.as_bytes());
    k = hmac(&k, service.as_bytes());
    k = hmac(&k, b"aws4_request");
    let sig: String = hmac(&k, to_sign.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={sig}",
        keys.access
    );
    let mut out: Vec<(String, String)> = signed.into_iter().filter(|(k, _)| k != "host").collect();
    out.push(("authorization".into(), auth));
    (query_string, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of the AWS SigV4 documentation (examplebucket, 2013-05-24).
    #[test]
    fn aws_documented_example() {
        let keys = Keys {
            access: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
            region: "us-east-1".into(),
        };
        let ms = Stamp::parse_iso("2013-05-24T00:00:00Z").unwrap();
        let empty = sha256_hex(b"");
        let req = Request {
            service: "s3",
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers: &[("Range".into(), "bytes=0-9".into())],
            payload_hash: &empty,
        };
        let (_, h) = sign(&keys, &req, ms);
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert!(
            auth.ends_with(
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date"));
    }

    /// The IAM `ListUsers` example of the AWS SigV4 documentation (2015-08-30): another
    /// service than s3, a query string, no payload hash header.
    #[test]
    fn aws_documented_example_of_another_service() {
        let keys = Keys {
            access: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token: None,
            region: "us-east-1".into(),
        };
        let ms = Stamp::parse_iso("2015-08-30T12:36:00Z").unwrap();
        let empty = sha256_hex(b"");
        let req = Request {
            service: "iam",
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: &[("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: &[(
                "Content-Type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            )],
            payload_hash: &empty,
        };
        let (qs, h) = sign(&keys, &req, ms);
        assert_eq!(qs, "Action=ListUsers&Version=2010-05-08");
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(encode("a b/c", false), "a%20b%2Fc");
    }

    #[test]
    fn hmac_rfc4231_case2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
