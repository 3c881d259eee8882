//! The AWS shared files, read as the AWS CLI reads them: the credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, sections `[name]`) and the
//! config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, sections `[default]` and
//! `[profile name]`), for the profile `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`, or `default`).
//! A profile gives static keys (credentials file first, then config file), a
//! `credential_process`, and a `region`.

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
    /// Either file has a section for the profile.
    pub found: bool,
}

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

/// Resolve the profile from the two files' texts (None: file absent).
pub fn resolve(name: &str, credentials: Option<&str>, config: Option<&str>) -> Profile {
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
    p.region = from_conf
        .as_deref()
        .and_then(|s| get(s, "region"))
        .map(str::to_string);
    p.addressing = from_conf
        .as_deref()
        .and_then(|s| get(s, "s3.addressing_style"))
        .and_then(super::Addressing::parse)
        .unwrap_or_default();
    p
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
    let p = resolve(&name, ct.as_deref(), ft.as_deref());
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
        let d = resolve("default", Some(CREDS), Some(CONF));
        assert_eq!(d.keys, Some(("AKIDEFAULT".into(), "s1".into(), None)));
        assert_eq!(
            d.region.as_deref(),
            Some("eu-west-1"),
            "sub-settings kept apart"
        );
        assert_eq!(d.addressing, crate::storage::s3::Addressing::Path);
        assert_eq!(d.keys_from, "~/.aws/credentials [default]");

        let w = resolve("work", Some(CREDS), Some(CONF));
        assert_eq!(
            w.keys,
            Some(("AKIWORK".into(), "s2".into(), Some("tok".into())))
        );
        assert_eq!(w.region.as_deref(), Some("ap-south-2"));
        assert_eq!(w.addressing, crate::storage::s3::Addressing::Auto);

        let t = resolve("tool", Some(CREDS), Some(CONF));
        assert_eq!(t.keys, None);
        assert_eq!(
            t.process.as_deref(),
            Some("/usr/bin/get-keys --json \"x y\"")
        );
        assert_eq!(t.keys_from, "~/.aws/config [profile tool]");

        let i = resolve("inline", None, Some(CONF));
        assert_eq!(i.keys, Some(("AKIINLINE".into(), "s3".into(), None)));
        assert_eq!(i.region, None);

        let none = resolve("absent", Some(CREDS), Some(CONF));
        assert_eq!(none.keys, None);
        assert_eq!(none.process, None);
        assert!(!none.found && d.found && i.found);
    }
}
