//! Where a bucket's requests go and the region they are signed for.
//!
//! Addressing: AWS itself (no endpoint) is reached virtual-hosted style
//! (`bucket.s3.<region>.amazonaws.com`), except for bucket names with dots, which the
//! certificate's wildcard does not cover; custom endpoints (MinIO, Garage, Tigris, R2 and
//! friends) path style (`endpoint/bucket`). `addressing` (CLI `--addressing`, `[storage]`, or
//! the profile's `s3 = addressing_style`) forces either.
//!
//! A server that answers that the bucket lives in another region (301/307 or 400
//! AuthorizationHeaderMalformed naming it, or `x-amz-bucket-region`) is followed: the route is
//! rebuilt for that region (on AWS the host names the region too), a bounded number of times.

use super::super::http::{Client, Target};
use super::sigv4;

/// Path-style or virtual-hosted-style requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Addressing {
    /// Virtual-hosted for AWS (path style for dotted names), path style for endpoints.
    #[default]
    Auto,
    Path,
    Virtual,
}

impl Addressing {
    /// `path`, `virtual` or `auto` (as the AWS CLI's `addressing_style` spells them).
    pub fn parse(s: &str) -> Option<Addressing> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Addressing::Auto),
            "path" => Some(Addressing::Path),
            "virtual" => Some(Addressing::Virtual),
            _ => None,
        }
    }
}

/// How many times one storage follows the server to another region (a server sending it
/// back and forth is then reported, not followed forever).
pub(super) const MAX_MOVES: u32 = 3;

/// What stays fixed for a bucket: its name, the endpoint given (None: AWS) and the style.
pub(super) struct Plan {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub addressing: Addressing,
}

/// One route: the client for the host, the region signed for, the path prefix of every key
/// (`/bucket` with path style, empty with virtual-hosted style, plus any base path of the
/// endpoint) and the endpoint as messages show it.
pub(super) struct Route {
    pub client: Client,
    pub region: String,
    pub base: String,
    pub endpoint: String,
}

impl Plan {
    /// The route for `region`; Err is the one-line reason (an endpoint that does not parse, a
    /// TLS set-up that failed).
    pub fn route(&self, region: &str) -> Result<Route, String> {
        let bucket = sigv4::encode(&self.bucket, false);
        let (target, base, shown) = match &self.endpoint {
            Some(e) => {
                let (mut t, path) = Target::parse(e).ok_or_else(|| {
                    format!("invalid S3 endpoint '{e}': it must look like http(s)://host[:port]")
                })?;
                let base = if self.addressing == Addressing::Virtual {
                    let ip = t.host.starts_with('[') || t.host.parse::<std::net::IpAddr>().is_ok();
                    if ip {
                        return Err(format!(
                            "virtual-hosted addressing needs a host name in the endpoint, not the address in '{e}' (use --addressing path, or a name such as s3.example.com)"
                        ));
                    }
                    t.host = format!("{}.{}", self.bucket, t.host);
                    path
                } else {
                    format!("{path}/{bucket}")
                };
                (t, base, e.trim_end_matches('/').to_string())
            }
            None => {
                let aws = format!("s3.{region}.amazonaws.com");
                let virtual_hosted = match self.addressing {
                    Addressing::Auto => !self.bucket.contains('.'),
                    a => a == Addressing::Virtual,
                };
                let (host, base) = if virtual_hosted {
                    (format!("{}.{aws}", self.bucket), String::new())
                } else {
                    (aws.clone(), format!("/{bucket}"))
                };
                let t = Target {
                    https: true,
                    host,
                    port: 443,
                };
                (t, base, format!("https://{aws}"))
            }
        };
        let client = Client::new(target).map_err(|e| format!("S3 endpoint {shown}: {e}"))?;
        Ok(Route {
            client,
            region: region.to_string(),
            base,
            endpoint: shown,
        })
    }

    /// Whether a region the server named may be used: on AWS it becomes part of the host
    /// name, so it must have a region's form; an endpoint's own names ("garage") are only
    /// signed.
    pub fn usable_region(&self, r: &str) -> bool {
        match self.endpoint {
            None => valid_region(r),
            Some(_) => {
                !r.is_empty()
                    && r.len() <= 64
                    && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }
        }
    }
}

/// The shape of an AWS region name (us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5):
/// checked by form, not against a list, so regions newer than walsync work.
pub(super) fn valid_region(r: &str) -> bool {
    r.len() <= 32
        && r.starts_with(|c: char| c.is_ascii_lowercase())
        && r.ends_with(|c: char| c.is_ascii_digit())
        && r.contains('-')
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bucket: &str, endpoint: Option<&str>, a: Addressing) -> (String, String, String) {
        let p = Plan {
            bucket: bucket.into(),
            endpoint: endpoint.map(str::to_string),
            addressing: a,
        };
        let r = p.route("eu-west-1").unwrap();
        (r.client.target().host_header(), r.base, r.endpoint)
    }

    #[test]
    fn addressing_by_endpoint_and_choice() {
        use Addressing::*;
        let aws = "https://s3.eu-west-1.amazonaws.com".to_string();
        let rows: &[(&str, Option<&str>, Addressing, &str, &str)] = &[
            ("b", None, Auto, "b.s3.eu-west-1.amazonaws.com", ""),
            ("b.x", None, Auto, "s3.eu-west-1.amazonaws.com", "/b.x"),
            ("b", None, Path, "s3.eu-west-1.amazonaws.com", "/b"),
            ("b.x", None, Virtual, "b.x.s3.eu-west-1.amazonaws.com", ""),
            (
                "b",
                Some("http://127.0.0.1:3900"),
                Auto,
                "127.0.0.1:3900",
                "/b",
            ),
            ("b", Some("http://h:9000/base/"), Path, "h:9000", "/base/b"),
            (
                "b",
                Some("https://s3.example.com"),
                Virtual,
                "b.s3.example.com",
                "",
            ),
            (
                "b",
                Some("http://h:9000/base"),
                Virtual,
                "b.h:9000",
                "/base",
            ),
        ];
        for (bucket, ep, a, host, base) in rows {
            let (h, b, shown) = at(bucket, *ep, *a);
            assert_eq!(
                (h.as_str(), b.as_str()),
                (*host, *base),
                "{bucket} {ep:?} {a:?}"
            );
            let want = ep.map_or(aws.clone(), |e| e.trim_end_matches('/').to_string());
            assert_eq!(shown, want);
        }
    }

    #[test]
    fn styles_parse_as_the_aws_cli_spells_them() {
        assert_eq!(Addressing::parse("path"), Some(Addressing::Path));
        assert_eq!(Addressing::parse("Virtual"), Some(Addressing::Virtual));
        assert_eq!(Addressing::parse("auto"), Some(Addressing::Auto));
        assert_eq!(Addressing::parse("vhost"), None);
    }

    #[test]
    fn regions_the_server_names() {
        let aws = Plan {
            bucket: "b".into(),
            endpoint: None,
            addressing: Addressing::Auto,
        };
        assert!(aws.usable_region("ap-southeast-5"));
        assert!(!aws.usable_region("garage"));
        assert!(!aws.usable_region("evil.com/x"));
        let ep = Plan {
            endpoint: Some("http://h".into()),
            ..aws
        };
        assert!(ep.usable_region("garage"));
        assert!(!ep.usable_region("a b"));
        let ip = Plan {
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:3900".into()),
            addressing: Addressing::Virtual,
        };
        assert!(ip.route("garage").err().unwrap().starts_with("virtual-hosted addressing needs a host name in the endpoint, not the address in 'http://127.0.0.1:3900'"));
    }
}
