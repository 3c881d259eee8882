//! Where the S3 keys come from, in the AWS SDKs' order: `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`), the profile (`AWS_PROFILE`) of the shared
//! files (`profile.rs`: static keys, or a `credential_process` whose keys may expire), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, the EKS IRSA
//! path: STS AssumeRoleWithWebIdentity), the container endpoint of ECS, EKS Pod Identity and Fargate
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`, with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN` or `_TOKEN_FILE`), then, when S3 itself is AWS (no
//! endpoint given), the EC2 instance metadata service (IMDSv2: a session token, the role, its
//! keys; `AWS_EC2_METADATA_DISABLED=true` skips it). Keys from the last four expire: they are
//! fetched again when half their remaining life has passed (at most 5 minutes before they
//! expire), and after S3 refuses them, so temporary credentials never expire into endless 403s.

use std::sync::Mutex;
use std::time::Duration;

mod sources;

use super::super::http::Client;
use super::super::sigv4::{self, Keys};
use super::profile::Profile;
use crate::error::{Error, Result};
use crate::time::Stamp;
use log::{info, warn};
use sources::{
    assume_role, call, container_source, metadata_client, run_process, sts_keys,
    web_identity_source,
};

/// Keys signing requests.
#[derive(Debug, Clone)]
pub struct Creds {
    pub access: String,
    pub secret: String,
    pub token: Option<String>,
}

/// A source that hands out keys that expire.
enum Refreshing {
    /// ECS/EKS container endpoint: the URL and the authorization header value, if any.
    Container {
        client: Client,
        path: String,
        auth: Auth,
    },
    /// EC2 instance metadata (IMDSv2).
    Imds { client: Client },
    /// Web identity (EKS IRSA): STS AssumeRoleWithWebIdentity with the token file's token.
    WebIdentity {
        client: Client,
        /// The request path up to the token (action, role, session name).
        query: String,
        token_file: String,
    },
    /// A profile's `credential_process`: a command printing the keys as JSON.
    Process { command: String, profile: String },
    /// A profile's `role_arn`: STS AssumeRole, signed with the source's keys (which refresh
    /// themselves).
    AssumeRole {
        client: Client,
        /// The endpoint's base path.
        base: String,
        region: String,
        /// Action, role, session name, duration and external id.
        params: Vec<(&'static str, String)>,
        source: Box<Provider>,
    },
}

/// The container endpoint's authorization: none, a token, or a file holding one (read at
/// every fetch: EKS rotates it).
enum Auth {
    None,
    Token(String),
    File(String),
}

/// After a failed refresh, the old keys are kept and the source is asked again this much later.
const RETRY: Duration = Duration::from_secs(10);

struct Current {
    creds: Creds,
    /// When the keys expire (ms since the epoch; None: never).
    expires: Option<Stamp>,
    /// When to fetch again.
    refresh_at: Option<Stamp>,
}

pub struct Provider {
    source: Option<Refreshing>,
    what: String,
    cur: Mutex<Current>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`), if set.
fn env_keys() -> Option<Creds> {
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(k), Some(s)) => Some(Creds {
            access: k,
            secret: s,
            token: env("AWS_SESSION_TOKEN"),
        }),
        _ => None,
    }
}

impl Provider {
    /// Keys that never change.
    fn fixed(creds: Creds, what: String) -> Provider {
        Provider {
            source: None,
            what,
            cur: Mutex::new(Current {
                creds,
                expires: None,
                refresh_at: None,
            }),
        }
    }

    /// A refreshing source, fetched once now (its first error is the caller's).
    fn fetched(source: Refreshing, what: String) -> Result<Provider> {
        let c = fetch(&source)?;
        info!("S3 credentials from {what}{}", expiry_note(&c));
        Ok(Provider {
            source: Some(source),
            what,
            cur: Mutex::new(c),
        })
    }

    /// What a profile itself gives: a role to assume, static keys, or a credential_process.
    fn of_profile(profile: &Profile) -> Result<Option<Provider>> {
        if let Some(role) = &profile.role {
            return assume_role(role, profile).map(Some);
        }
        if let Some((access, secret, token)) = profile.keys.clone() {
            let c = Creds {
                access,
                secret,
                token,
            };
            return Ok(Some(Provider::fixed(c, profile.keys_from.clone())));
        }
        if let Some(command) = profile.process.clone() {
            let name = profile.name.clone();
            let what = format!("the credential_process of {}", profile_shown(&name));
            let src = Refreshing::Process {
                command,
                profile: name,
            };
            return Provider::fetched(src, what).map(Some);
        }
        Ok(None)
    }

    /// The first source of the chain that has keys. `aws`: S3 is AWS itself (no endpoint).
    pub fn discover(bucket: &str, aws: bool, profile: &Profile) -> Result<Provider> {
        if let Some(c) = env_keys() {
            return Ok(Provider::fixed(c, "the environment".into()));
        }
        if let Some(p) = Provider::of_profile(profile)? {
            return Ok(p);
        }
        let (source, what) = if let Some(src) = web_identity_source()? {
            (src, "web identity (STS AssumeRoleWithWebIdentity)".into())
        } else if let Some(src) = container_source()? {
            (src, "the container credentials endpoint".into())
        } else if aws && env("AWS_EC2_METADATA_DISABLED").is_none_or(|v| v != "true") {
            let url = env("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| "http://169.254.169.254".into());
            let client = metadata_client(&url)?;
            (
                Refreshing::Imds { client },
                "the EC2 instance metadata".into(),
            )
        } else {
            return Err(no_creds(bucket, ""));
        };
        let imds = matches!(source, Refreshing::Imds { .. });
        Provider::fetched(source, what).map_err(|e| match imds {
            true => no_creds(bucket, &format!(" (instance metadata: {e})")),
            false => e,
        })
    }

    /// The keys to sign with now, fetched again first when due.
    pub fn get(&self) -> Creds {
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(src), Some(at)) = (&self.source, cur.refresh_at) {
            if Stamp::now() >= at {
                match fetch(src) {
                    Ok(c) => {
                        info!(
                            "S3 credentials refreshed from {}{}",
                            self.what,
                            expiry_note(&c)
                        );
                        *cur = c;
                    }
                    Err(e) => {
                        // Keep the old keys (they may still be valid) and try again in 10 s.
                        warn!("S3 credentials from {}: {e}; retrying in 10 s", self.what);
                        cur.refresh_at = Some(Stamp::now().after(RETRY));
                    }
                }
            }
        }
        cur.creds.clone()
    }

    /// Where the keys come from, for messages ("the environment", "~/.aws/credentials [x]").
    pub fn source(&self) -> &str {
        &self.what
    }

    /// S3 refused the keys: fetch again before the next request (refreshing sources only).
    pub fn refused(&self) {
        if self.source.is_some() {
            let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
            let now = Stamp::now();
            if cur.refresh_at.is_some_and(|t| t > now.after(RETRY)) {
                cur.refresh_at = Some(now);
            }
        }
    }
}

fn profile_shown(name: &str) -> String {
    if name == "default" {
        "the default profile".into()
    } else {
        format!("profile '{name}'")
    }
}

fn no_creds(bucket: &str, why: &str) -> Error {
    Error::Config {
        file: "environment".into(),
        key: String::new(),
        msg: format!(
            "no S3 credentials for bucket {bucket}{why}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE to a profile with keys or a credential_process"
        ),
    }
}

fn expiry_note(c: &Current) -> String {
    c.expires
        .map(|t| format!(", valid until {t}"))
        .unwrap_or_default()
}

/// STS AssumeRole, signed with the source's keys (SigV4, service sts): the role's keys as
/// JSON.
fn assume_role_call(
    client: &Client,
    base: &str,
    region: &str,
    params: &[(&'static str, String)],
    source: &Provider,
) -> Result<String> {
    let c = source.get();
    let keys = Keys {
        access: c.access,
        secret: c.secret,
        token: c.token,
        region: region.to_string(),
    };
    let host = client.target().host_header();
    let path = format!("{base}/");
    let query: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let empty = sigv4::sha256_hex(b"");
    let req = sigv4::Request {
        service: "sts",
        method: "GET",
        host: &host,
        path: &path,
        query: &query,
        headers: &[("Accept".to_string(), "application/xml".to_string())],
        payload_hash: &empty,
    };
    let (qs, head) = sigv4::sign(&keys, &req, Stamp::now());
    let xml = call(client, "GET", &format!("{path}?{qs}"), &head);
    if xml.is_err() {
        // Refused keys of a refreshing source: fetch them again first next time.
        source.refused();
    }
    Ok(sts_keys(&xml?))
}

fn fetch(src: &Refreshing) -> Result<Current> {
    let json = match src {
        Refreshing::Process { command, profile } => run_process(command, profile)?,
        Refreshing::Container { client, path, auth } => {
            let token = match auth {
                Auth::None => None,
                Auth::Token(t) => Some(t.clone()),
                Auth::File(f) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| Error::io("read", f, e))?
                        .trim()
                        .to_string(),
                ),
            };
            let head: Vec<(String, String)> = token
                .into_iter()
                .map(|t| ("Authorization".to_string(), t))
                .collect();
            call(client, "GET", path, &head)?
        }
        Refreshing::Imds { client } => {
            let ttl = [(
                "X-aws-ec2-metadata-token-ttl-seconds".to_string(),
                "21600".to_string(),
            )];
            let token = call(client, "PUT", "/latest/api/token", &ttl)?;
            let head = [(
                "X-aws-ec2-metadata-token".to_string(),
                token.trim().to_string(),
            )];
            let base = "/latest/meta-data/iam/security-credentials/";
            let role = call(client, "GET", base, &head)?;
            let role = role.lines().next().unwrap_or("").trim().to_string();
            if role.is_empty() {
                return Err(Error::other("the instance has no IAM role attached"));
            }
            call(client, "GET", &format!("{base}{role}"), &head)?
        }
        Refreshing::WebIdentity {
            client,
            query,
            token_file,
        } => {
            let token = std::fs::read_to_string(token_file)
                .map_err(|e| Error::io("read", token_file, e))?;
            let path = format!(
                "{query}{}",
                super::super::sigv4::encode(token.trim(), false)
            );
            let accept = [("Accept".to_string(), "application/xml".to_string())];
            sts_keys(&call(client, "GET", &path, &accept)?)
        }
        Refreshing::AssumeRole {
            client,
            base,
            region,
            params,
            source,
        } => assume_role_call(client, base, region, params, source)?,
    };
    parse(&json)
}

/// The keys and their expiry from the JSON both endpoints answer with.
fn parse(json: &str) -> Result<Current> {
    let field = |name: &str| json_field(json, name);
    let (Some(access), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err(Error::other(
            "the credentials endpoint answered without AccessKeyId and SecretAccessKey",
        ));
    };
    let expires = field("Expiration").and_then(|e| Stamp::parse_iso(&e));
    let now = Stamp::now();
    // Fetched again 5 minutes before the expiry, or after half of what is left if less.
    let refresh_at = expires.map(|e| {
        let left = e.since(now);
        now.after(
            left.saturating_sub((left / 2).min(Duration::from_secs(300)))
                .max(Duration::from_secs(1)),
        )
    });
    Ok(Current {
        creds: Creds {
            access,
            secret,
            token: field("Token")
                .or_else(|| field("SessionToken"))
                .filter(|t| !t.is_empty()),
        },
        expires,
        refresh_at,
    })
}

/// The string value of `"name": "..."` in a flat JSON object (no escapes in these values).
fn json_field(json: &str, name: &str) -> Option<String> {
    let at = json.find(&format!("\"{name}\""))? + name.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_container_and_imds_answers() {
        let later = Stamp::now().after(Duration::from_secs(3600));
        let json = format!(
            "{{\n  \"Code\" : \"Success\",\n  \"AccessKeyId\" : \"ASIA1\",\n  \"SecretAccessKey\" : \"s/2\",\n  \"Token\" : \"t+3\",\n  \"Expiration\" : \"{}\"\n}}",
            later.iso()
        );
        let c = parse(&json).unwrap();
        assert_eq!(c.creds.access, "ASIA1");
        assert_eq!(c.creds.secret, "s/2");
        assert_eq!(c.creds.token.as_deref(), Some("t+3"));
        assert_eq!(c.expires, Some(later));
        // An hour left: fetched again 5 minutes before it expires.
        let at = c.refresh_at.unwrap().ms();
        let want = later.before(Duration::from_secs(300)).ms();
        assert!(at.abs_diff(want) < 2_000, "{at} vs {want}");
        // 20 s left: after half of it.
        let soon = Stamp::now().after(Duration::from_secs(20));
        let c = parse(&json.replace(&later.iso(), &soon.iso())).unwrap();
        let want = soon.before(Duration::from_secs(10)).ms();
        assert!(c.refresh_at.unwrap().ms().abs_diff(want) < 2_000);
        // No expiry: never.
        let c = parse("{\"AccessKeyId\":\"a\",\"SecretAccessKey\":\"b\"}").unwrap();
        assert_eq!((c.expires, c.refresh_at), (None, None));
        assert!(parse("{\"AccessKeyId\":\"a\"}").is_err());
    }
}
