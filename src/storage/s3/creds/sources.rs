//! Where refreshing keys come from: the instance metadata and container endpoints, STS
//! (a profile's role with AssumeRole, web identity), a `credential_process`; each answers
//! the keys `fetch` parses.

use std::time::Duration;

use super::super::super::http::{Client, ReqBody, Target};
use super::super::profile::{Profile, Role, RoleSource};
use super::{env, env_keys, profile_shown, Auth, Provider, Refreshing};
use crate::error::{Error, Result};

pub(super) fn metadata_client(url: &str) -> Result<Client> {
    let (target, _) = Target::parse(url).ok_or_else(|| {
        Error::usage(format!(
            "invalid credentials endpoint '{url}': it must be http(s)://host[:port]"
        ))
    })?;
    Ok(Client::new(target)
        .map_err(|e| Error::other(format!("credentials endpoint {url}: {e}")))?
        .without_proxy()
        .with_connect_timeout(Duration::from_secs(1))
        .with_io_timeout(Duration::from_secs(5)))
}

/// STS: `AWS_ENDPOINT_URL_STS`, else the regional endpoint; its client and base path.
pub(super) fn sts_client(region: &str) -> Result<(Client, String)> {
    let url = env("AWS_ENDPOINT_URL_STS")
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    let (target, path) = Target::parse(&url).ok_or_else(|| {
        Error::usage(format!(
            "invalid AWS_ENDPOINT_URL_STS '{url}': it must be http(s)://host[:port]"
        ))
    })?;
    let client = Client::new(target)
        .map_err(|e| Error::other(format!("STS endpoint {url}: {e}")))?
        .with_connect_timeout(Duration::from_secs(5))
        .with_io_timeout(Duration::from_secs(30));
    Ok((client, path))
}

/// A profile's role: the source's keys (a profile's, the environment's, the instance's or
/// the container's) sign STS AssumeRole in the profile's region; the answer's keys expire
/// and are fetched again like the other temporary keys.
pub(super) fn assume_role(role: &Role, profile: &Profile) -> Result<Provider> {
    let source = match &role.source {
        RoleSource::Profile(p) => Provider::of_profile(p)?
            .ok_or_else(|| Error::other(format!("{} has no keys", profile_shown(&p.name))))?,
        RoleSource::Environment => {
            let c = env_keys().ok_or_else(|| {
                Error::other(format!(
                    "{}: credential_source Environment, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set",
                    profile_shown(&profile.name)
                ))
            })?;
            Provider::fixed(c, "the environment".into())
        }
        RoleSource::Ec2InstanceMetadata => {
            let url = env("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| "http://169.254.169.254".into());
            let client = metadata_client(&url)?;
            Provider::fetched(
                Refreshing::Imds { client },
                "the EC2 instance metadata".into(),
            )?
        }
        RoleSource::EcsContainer => {
            let src = container_source()?.ok_or_else(|| {
                Error::other(format!(
                    "{}: credential_source EcsContainer, but AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI is not set",
                    profile_shown(&profile.name)
                ))
            })?;
            Provider::fetched(src, "the container credentials endpoint".into())?
        }
    };
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| profile.region.clone())
        .unwrap_or_else(|| "us-east-1".into());
    let (client, base) = sts_client(&region)?;
    let mut params = vec![
        ("Action", "AssumeRole".to_string()),
        ("Version", "2011-06-15".to_string()),
        ("RoleArn", role.arn.clone()),
        (
            "RoleSessionName",
            role.session_name
                .clone()
                .unwrap_or_else(|| "walsync".into()),
        ),
        (
            "DurationSeconds",
            role.duration_seconds.unwrap_or(3600).to_string(),
        ),
    ];
    if let Some(id) = &role.external_id {
        params.push(("ExternalId", id.clone()));
    }
    let what = format!(
        "role {} of {} (STS AssumeRole, signed with keys from {})",
        role.arn,
        profile_shown(&profile.name),
        source.source()
    );
    let src = Refreshing::AssumeRole {
        client,
        base,
        region,
        params,
        source: Box::new(source),
    };
    Provider::fetched(src, what)
}

/// `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (what EKS sets for IRSA): STS in the
/// region (or `AWS_ENDPOINT_URL_STS`), session name `AWS_ROLE_SESSION_NAME` or `walsync`.
pub(super) fn web_identity_source() -> Result<Option<Refreshing>> {
    let (Some(token_file), Some(role)) = (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
    else {
        return Ok(None);
    };
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let (client, path) = sts_client(&region)?;
    let session = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "walsync".into());
    let enc = |v: &str| super::super::sigv4::encode(v, false);
    Ok(Some(Refreshing::WebIdentity {
        client,
        query: format!(
            "{path}/?Action=AssumeRoleWithWebIdentity&Version=2011-06-15&DurationSeconds=3600&RoleArn={}&RoleSessionName={}&WebIdentityToken=",
            enc(&role),
            enc(&session)
        ),
        token_file,
    }))
}

pub(super) fn container_source() -> Result<Option<Refreshing>> {
    let url = match (
        env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
    ) {
        (Some(full), _) => full,
        (None, Some(rel)) => format!("http://169.254.170.2{rel}"),
        (None, None) => return Ok(None),
    };
    let (target, path) = Target::parse(&url).ok_or_else(|| {
        Error::usage(format!(
            "invalid AWS_CONTAINER_CREDENTIALS_FULL_URI '{url}': it must be http(s)://host[:port]/path"
        ))
    })?;
    let client = metadata_client(&format!(
        "{}://{}",
        if target.https { "https" } else { "http" },
        target.host_header()
    ))?;
    let auth = match (
        env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    ) {
        (Some(f), _) => Auth::File(f),
        (None, Some(t)) => Auth::Token(t),
        (None, None) => Auth::None,
    };
    Ok(Some(Refreshing::Container {
        client,
        path: if path.is_empty() { "/".into() } else { path },
        auth,
    }))
}

/// One GET (or PUT) to a metadata endpoint: the body of a 200 answer.
pub(super) fn call(
    client: &Client,
    method: &str,
    path: &str,
    head: &[(String, String)],
) -> Result<String> {
    let where_ = format!("{}{path}", client.target().host_header());
    let resp = client
        .send(method, path, head, ReqBody::Empty)
        .map_err(|e| Error::other(format!("cannot reach {where_}: {e}")))?;
    let status = resp.status;
    let text = resp
        .text(64 << 10)
        .map_err(|e| Error::other(format!("reading {where_}: {e}")))?;
    if status != 200 {
        // STS's own code and message when it sent them, else the start of the answer.
        let tag = |t: &str| super::super::xml::xml_tag(&text, t).filter(|v| !v.is_empty());
        let why = match (tag("Code"), tag("Message")) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            _ => text
                .chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string(),
        };
        let where_ = where_.split('?').next().unwrap_or_default();
        return Err(Error::other(format!(
            "{where_} answered HTTP {status}: {why}"
        )));
    }
    Ok(text)
}

/// Run a `credential_process` (through `sh -c`, as the AWS CLI runs it on Unix): its stdout.
pub(super) fn run_process(command: &str, profile: &str) -> Result<String> {
    let fail = |why: String| {
        Error::other(format!(
            "credential_process of {} ({command}) {why}",
            profile_shown(profile)
        ))
    };
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("").to_string();
        return Err(fail(format!("failed ({}): {last}", out.status)));
    }
    String::from_utf8(out.stdout).map_err(|_| fail("printed something that is not UTF-8".into()))
}

/// The keys of an STS answer (AssumeRole, AssumeRoleWithWebIdentity), as the JSON the other
/// sources answer with.
pub(super) fn sts_keys(xml: &str) -> String {
    let tag = |t: &str| super::super::xml::xml_tag(xml, t).unwrap_or_default();
    format!(
        "{{\"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{}\",\"Token\":\"{}\",\"Expiration\":\"{}\"}}",
        tag("AccessKeyId"),
        tag("SecretAccessKey"),
        tag("SessionToken"),
        tag("Expiration")
    )
}
