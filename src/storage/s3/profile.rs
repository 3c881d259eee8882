//! The AWS shared files, read as the AWS CLI reads them: the credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, sections `[name]`) and the
//! config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, sections `[default]` and
//! `[profile name]`), for the profile `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`, or `default`).
//! A profile gives static keys (credentials file first, then config file), a
//! `credential_process`, a role to assume (`role_arn` with `source_profile` or
//! `credential_source`), a `region` and `s3 = addressing_style`.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// What the profile says, with where each part came from (for messages).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub keys: Option<(String, String, Option<String>)>,
    /// Where the keys were found: `~/.aws/credentials [name]` and the like.
    pub keys_from: String,
    pub process: Option<String>,
    pub region: Option<String>,
    /// `s3 = addressing_style` of the config file's profile (Auto when absent or unknown).
    pub addressing: super::Addressing,
    /// `role_arn`: keys from STS AssumeRole, signed with the source's keys.
    pub role: Option<Role>,
    /// Either file has a section for the profile.
    pub found: bool,
}

/// A role to assume, as the AWS CLI reads it from a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub arn: String,
    pub session_name: Option<String>,
    pub external_id: Option<String>,
    pub duration_seconds: Option<u32>,
    pub source: RoleSource,
}

/// Whose keys sign the AssumeRole call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSource {
    /// `source_profile`: that profile's keys, process or own role.
    Profile(Box<Profile>),
    /// `credential_source = Environment`.
    Environment,
    /// `credential_source = Ec2InstanceMetadata`.
    Ec2InstanceMetadata,
    /// `credential_source = EcsContainer`.
    EcsContainer,
}

/// How deep `source_profile` may chain (a loop is an error, not a hang).
const MAX_CHAIN: usize = 5;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(var: &str, default: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(default)))
}

/// The `key = value` pairs of section `want` of an INI text (comments `#` and `;`, keys
/// case-insensitive, later duplicates win). Indented lines under a key without a value are
/// its sub-settings, named `key.sub` (`s3 =` then `  addressing_style = path`).
fn section(text: &str, want: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut inside = false;
    let mut parent: Option<String> = None;
    for line in text.lines() {
        let raw = line;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.split_whitespace().collect::<Vec<_>>().join(" ") == want;
            if inside {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if !inside {
            continue;
        }
        let nested = raw.starts_with([' ', '\t']);
        if let Some((k, v)) = line.split_once('=') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            let k = match (nested, &parent) {
                (true, Some(p)) => format!("{p}.{k}"),
                (true, None) => continue,
                (false, _) => {
                    parent = v.is_empty().then(|| k.clone());
                    k
                }
            };
            found.get_or_insert_with(Vec::new).push((k, v));
        }
    }
    found
}

fn get<'a>(s: &'a [(String, String)], key: &str) -> Option<&'a str> {
    s.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Resolve the profile from the two files' texts (None: file absent). Err: why the profile
/// cannot give keys (a broken `source_profile`, an MFA or SSO profile), one line.
pub fn resolve(
    name: &str,
    credentials: Option<&str>,
    config: Option<&str>,
) -> std::result::Result<Profile, String> {
    resolve_chain(name, credentials, config, 0)
}

fn resolve_chain(
    name: &str,
    credentials: Option<&str>,
    config: Option<&str>,
    depth: usize,
) -> std::result::Result<Profile, String> {
    let mut p = Profile {
        name: name.to_string(),
        ..Profile::default()
    };
    let from_creds = credentials.and_then(|t| section(t, name));
    let conf_name = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let from_conf = config.and_then(|t| section(t, &conf_name));
    p.found = from_creds.is_some() || from_conf.is_some();
    for (sec, file) in [
        (&from_creds, format!("~/.aws/credentials [{name}]")),
        (&from_conf, format!("~/.aws/config [{conf_name}]")),
    ] {
        let Some(s) = sec else { continue };
        if p.keys.is_none() {
            if let (Some(k), Some(sk)) =
                (get(s, "aws_access_key_id"), get(s, "aws_secret_access_key"))
            {
                let token = get(s, "aws_session_token")
                    .or_else(|| get(s, "aws_security_token"))
                    .map(str::to_string);
                p.keys = Some((k.to_string(), sk.to_string(), token));
                p.keys_from = file.clone();
            }
        }
        if p.process.is_none() {
            p.process = get(s, "credential_process").map(str::to_string);
            if p.process.is_some() && p.keys.is_none() {
                p.keys_from = file.clone();
            }
        }
    }
    let conf = from_conf.as_deref().unwrap_or_default();
    p.region = get(conf, "region").map(str::to_string);
    p.addressing = get(conf, "s3.addressing_style")
        .and_then(super::Addressing::parse)
        .unwrap_or_default();
    let shown = if name == "default" {
        "the default profile".to_string()
    } else {
        format!("profile '{name}'")
    };
    let Some(arn) = get(conf, "role_arn") else {
        let sso = get(conf, "sso_session").or_else(|| get(conf, "sso_start_url"));
        if sso.is_some() && p.keys.is_none() && p.process.is_none() {
            return Err(format!(
                "{shown} is an SSO profile, which walsync does not read; give it \
                 credential_process = aws configure export-credentials --profile {name} --format process \
                 (AWS CLI v2), or use another profile"
            ));
        }
        return Ok(p);
    };
    let files = (credentials, config);
    p.role = Some(role(&p, conf, arn, &shown, files, depth)?);
    p.keys_from = format!("~/.aws/config [{conf_name}] (role {arn})");
    Ok(p)
}

/// The profile named by `source_profile = src`, whose keys sign the AssumeRole call.
fn source_profile(
    p: &Profile,
    src: &str,
    shown: &str,
    files: (Option<&str>, Option<&str>),
    depth: usize,
) -> std::result::Result<RoleSource, String> {
    if src == p.name {
        // The profile's own static keys sign the call (as the AWS CLI allows).
        let mut own = p.clone();
        own.role = None;
        if own.keys.is_none() {
            return Err(format!("{shown} is its own source_profile but has no keys"));
        }
        return Ok(RoleSource::Profile(Box::new(own)));
    }
    if depth + 1 >= MAX_CHAIN {
        return Err(format!(
            "{shown}: source_profile chains more than {MAX_CHAIN} profiles deep (a loop?)"
        ));
    }
    let s = resolve_chain(src, files.0, files.1, depth + 1)?;
    if !s.found {
        return Err(format!(
            "{shown}: its source_profile '{src}' is in neither file"
        ));
    }
    if s.keys.is_none() && s.process.is_none() && s.role.is_none() {
        return Err(format!(
            "{shown}: its source_profile '{src}' has no keys, credential_process or role_arn"
        ));
    }
    Ok(RoleSource::Profile(Box::new(s)))
}

/// The role a profile assumes (`role_arn` = `arn`): whose keys sign the call, and its
/// options. `files`: the credentials and config texts, for a `source_profile`.
fn role(
    p: &Profile,
    conf: &[(String, String)],
    arn: &str,
    shown: &str,
    files: (Option<&str>, Option<&str>),
    depth: usize,
) -> std::result::Result<Role, String> {
    if get(conf, "mfa_serial").is_some() {
        return Err(format!(
            "{shown} assumes {arn} with an MFA code (mfa_serial), which walsync, running \
             unattended, cannot ask for; use a role without MFA or a credential_process"
        ));
    }
    let source = match (get(conf, "source_profile"), get(conf, "credential_source")) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{shown} sets both source_profile and credential_source; keep one"
            ))
        }
        (Some(src), None) => source_profile(p, src, shown, files, depth)?,
        (None, Some(c)) => match c {
            "Environment" => RoleSource::Environment,
            "Ec2InstanceMetadata" => RoleSource::Ec2InstanceMetadata,
            "EcsContainer" => RoleSource::EcsContainer,
            other => {
                return Err(format!(
                    "{shown}: credential_source '{other}' is not Environment, Ec2InstanceMetadata or EcsContainer"
                ))
            }
        },
        (None, None) => {
            return Err(format!(
                "{shown} sets role_arn but neither source_profile nor credential_source"
            ))
        }
    };
    let duration_seconds = match get(conf, "duration_seconds") {
        None => None,
        Some(d) => Some(
            d.parse::<u32>()
                .ok()
                .filter(|d| (900..=43_200).contains(d))
                .ok_or_else(|| format!("{shown}: duration_seconds '{d}' is not 900 to 43200"))?,
        ),
    };
    Ok(Role {
        arn: arn.to_string(),
        session_name: get(conf, "role_session_name").map(str::to_string),
        external_id: get(conf, "external_id").map(str::to_string),
        duration_seconds,
        source,
    })
}

/// The profile in use, from the files on disk. A profile named by `AWS_PROFILE` that neither
/// file holds is an error naming both files; the `default` profile may be absent.
pub fn load() -> Result<Profile> {
    let explicit = env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE"));
    let name = explicit.clone().unwrap_or_else(|| "default".into());
    let creds_path = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let conf_path = home_file("AWS_CONFIG_FILE", ".aws/config");
    let read = |p: &Option<PathBuf>| -> Result<Option<String>> {
        let Some(p) = p else { return Ok(None) };
        match std::fs::read_to_string(p) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", p, e)),
        }
    };
    let (ct, ft) = (read(&creds_path)?, read(&conf_path)?);
    let p = resolve(&name, ct.as_deref(), ft.as_deref()).map_err(|msg| Error::Config {
        file: "environment".into(),
        key: "AWS_PROFILE".into(),
        msg,
    })?;
    if explicit.is_some() && !p.found {
        let shown =
            |p: &Option<PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
        return Err(Error::Config {
            file: "environment".into(),
            key: "AWS_PROFILE".into(),
            msg: format!(
                "no profile '{name}' in {} or {}",
                shown(&creds_path),
                shown(&conf_path)
            ),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: &str = "
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = s1

[work]
# a comment
aws_access_key_id=AKIWORK
aws_secret_access_key= s2
aws_session_token = tok
";
    const CONF: &str = "
[default]
region = eu-west-1
s3 =
  addressing_style = path
  region = ignored

[profile work]
region=ap-south-2

[profile tool]
credential_process = /usr/bin/get-keys --json \"x y\"
region = us-west-2

[profile inline]
aws_access_key_id = AKIINLINE
aws_secret_access_key = s3
";

    #[test]
    fn profiles_read_as_the_aws_cli_does() {
        let d = resolve("default", Some(CREDS), Some(CONF)).unwrap();
        assert_eq!(d.keys, Some(("AKIDEFAULT".into(), "s1".into(), None)));
        assert_eq!(
            d.region.as_deref(),
            Some("eu-west-1"),
            "sub-settings kept apart"
        );
        assert_eq!(d.addressing, crate::storage::s3::Addressing::Path);
        assert_eq!(d.keys_from, "~/.aws/credentials [default]");

        let w = resolve("work", Some(CREDS), Some(CONF)).unwrap();
        assert_eq!(
            w.keys,
            Some(("AKIWORK".into(), "s2".into(), Some("tok".into())))
        );
        assert_eq!(w.region.as_deref(), Some("ap-south-2"));
        assert_eq!(w.addressing, crate::storage::s3::Addressing::Auto);

        let t = resolve("tool", Some(CREDS), Some(CONF)).unwrap();
        assert_eq!(t.keys, None);
        assert_eq!(
            t.process.as_deref(),
            Some("/usr/bin/get-keys --json \"x y\"")
        );
        assert_eq!(t.keys_from, "~/.aws/config [profile tool]");

        let i = resolve("inline", None, Some(CONF)).unwrap();
        assert_eq!(i.keys, Some(("AKIINLINE".into(), "s3".into(), None)));
        assert_eq!(i.region, None);

        let none = resolve("absent", Some(CREDS), Some(CONF)).unwrap();
        assert_eq!(none.keys, None);
        assert_eq!(none.process, None);
        assert!(!none.found && d.found && i.found);
    }

    #[test]
    fn roles_read_as_the_aws_cli_does() {
        let conf = "
[profile a]
role_arn = arn:aws:iam::1:role/a
source_profile = b
[profile b]
role_arn = arn:aws:iam::1:role/b
credential_source = Ec2InstanceMetadata
[profile self]
aws_access_key_id = AKISELF
aws_secret_access_key = s
role_arn = arn:aws:iam::1:role/self
source_profile = self
duration_seconds = 7200
[profile loop1]
role_arn = arn:aws:iam::1:role/x
source_profile = loop2
[profile loop2]
role_arn = arn:aws:iam::1:role/y
source_profile = loop1
[profile short]
role_arn = arn:aws:iam::1:role/x
credential_source = Environment
duration_seconds = 60
[profile odd]
role_arn = arn:aws:iam::1:role/x
credential_source = Laptop
";
        let a = resolve("a", None, Some(conf)).unwrap();
        let role = a.role.unwrap();
        assert_eq!(role.arn, "arn:aws:iam::1:role/a");
        let RoleSource::Profile(b) = role.source else {
            panic!("a's source is profile b")
        };
        assert_eq!(
            b.role.unwrap().source,
            RoleSource::Ec2InstanceMetadata,
            "chained"
        );
        let me = resolve("self", None, Some(conf)).unwrap();
        let role = me.role.unwrap();
        assert_eq!(role.duration_seconds, Some(7200));
        let RoleSource::Profile(own) = role.source else {
            panic!("its own keys")
        };
        assert_eq!(own.keys, Some(("AKISELF".into(), "s".into(), None)));
        assert!(own.role.is_none());
        assert!(resolve("loop1", None, Some(conf))
            .unwrap_err()
            .contains("chains more than 5 profiles deep"));
        assert_eq!(
            resolve("short", None, Some(conf)).unwrap_err(),
            "profile 'short': duration_seconds '60' is not 900 to 43200"
        );
        assert_eq!(
            resolve("odd", None, Some(conf)).unwrap_err(),
            "profile 'odd': credential_source 'Laptop' is not Environment, Ec2InstanceMetadata or EcsContainer"
        );
    }
}
