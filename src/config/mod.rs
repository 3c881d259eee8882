//! The TOML config file (SPEC section 2) -> a validated `Config`.
//!
//! Unknown keys, missing files, duplicate prefixes and bad durations are errors naming the file,
//! line and column. `${VAR}` in any string value is replaced from the environment (an unset
//! variable is an error). A database's namespace is `<bucket prefix>/<prefix or NAME>`, and for
//! a `dir` entry `<bucket prefix>/<prefix>/<stem>`: the same layout the command line produces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::layout;
use crate::time::parse_duration;

mod entry;
use entry::{entry, Defaults, Entries};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    storage: RawStorage,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    databases: Vec<RawDb>,
    metrics: Option<RawMetrics>,
    alerts: Option<RawAlerts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    on_failure: Option<Spanned<String>>,
    after: Option<Spanned<String>>,
    heartbeat_url: Option<Spanned<String>>,
    heartbeat_interval: Option<Spanned<String>>,
}

/// Alerts (`[alerts]`, see `replicate::alerts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alerts {
    /// Run by `sh -c` when a database has failed for `after`.
    pub on_failure: Option<String>,
    pub after: Duration,
    /// Fetched every `heartbeat_interval` while every database is healthy.
    pub heartbeat_url: Option<String>,
    pub heartbeat_interval: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    addr: Spanned<String>,
    max_lag: Option<Spanned<String>>,
    max_failing: Option<Spanned<String>>,
}

/// The optional metrics endpoint (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// `host:port` to listen on.
    pub addr: String,
    /// `/healthz` fails when a database lags more than this, or has failed for longer than
    /// `max_failing`.
    pub max_lag: Duration,
    pub max_failing: Duration,
}

/// Defaults of `[metrics]`'s health thresholds.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_FAILING: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    bucket: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    addressing: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    snapshot_interval: Option<Spanned<String>>,
    sync_interval: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDb {
    path: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    snapshot_interval: Option<Spanned<String>>,
    sync_interval: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
}

/// One database to replicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbEntry {
    pub path: PathBuf,
    /// Namespace within the replica (`<bucket prefix>/<prefix or name>`).
    pub ns: String,
    /// The entry's `prefix` (or NAME), as `restore --prefix` names it.
    pub prefix: String,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    /// How long every point in time stays restorable (None: forever).
    pub retention: Option<Duration>,
    /// How its segments are stored.
    pub compression: Compression,
}

/// A `dir` entry: databases matching `pattern` in `dir`, each under `<prefix>/<stem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub dir: PathBuf,
    pub pattern: String,
    pub prefix: String,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    pub retention: Option<Duration>,
    pub compression: Compression,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub bucket: String,
    /// `[storage]`'s endpoint, region and addressing.
    pub s3: crate::storage::s3::S3Options,
    pub databases: Vec<DbEntry>,
    pub dirs: Vec<DirEntry>,
    pub metrics: Option<Metrics>,
    pub alerts: Option<Alerts>,
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err_at(&self, offset: usize, key: &str, msg: impl Into<String>) -> Error {
        let (l, c) = line_col(self.text, offset);
        Error::Config {
            file: format!("{}:{l}:{c}", self.file.display()),
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// `${VAR}` expansion.
    fn expand(&self, v: &Spanned<String>, key: &str) -> Result<String> {
        let s = v.get_ref();
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(j) = after.find('}') else {
                return Err(self.err_at(v.span().start, key, "unterminated ${ in value"));
            };
            let name = &after[..j];
            let val = std::env::var(name).map_err(|_| {
                self.err_at(
                    v.span().start,
                    key,
                    format!("environment variable {name} is not set"),
                )
            })?;
            out.push_str(&val);
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A retention: a duration, or `forever` (None).
    fn retention(
        &self,
        v: &Option<Spanned<String>>,
        default: Option<Duration>,
    ) -> Result<Option<Duration>> {
        match v {
            None => Ok(default),
            Some(s) => {
                let text = self.expand(s, "retention")?;
                crate::cli::parse_retention(&text)
                    .map_err(|m| self.err_at(s.span().start, "retention", m))
            }
        }
    }

    /// A compression: `none` or `lz4`.
    fn compression(
        &self,
        v: &Option<Spanned<String>>,
        default: Compression,
    ) -> Result<Compression> {
        match v {
            None => Ok(default),
            Some(s) => {
                let text = self.expand(s, "compression")?;
                Compression::parse(&text).ok_or_else(|| {
                    self.err_at(
                        s.span().start,
                        "compression",
                        format!("'{text}' is not none or lz4"),
                    )
                })
            }
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) => {
                let text = self.expand(s, key)?;
                let d = parse_duration(&text).map_err(|m| self.err_at(s.span().start, key, m))?;
                if key == "snapshot_interval" && d.is_zero() {
                    return Err(self.err_at(s.span().start, key, "must be greater than 0"));
                }
                Ok(d)
            }
        }
    }
}

/// Does `name` match a shell-style pattern with `*` and `?`?
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl DirEntry {
    /// The databases currently matching, sorted, with their entries.
    pub fn scan(&self) -> Result<Vec<DbEntry>> {
        let rd =
            std::fs::read_dir(&self.dir).map_err(|e| Error::io("read directory", &self.dir, e))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !glob_match(&self.pattern, &name) || !e.path().is_file() {
                continue;
            }
            let stem = layout::stem(Path::new(&name));
            out.push(DbEntry {
                path: e.path(),
                ns: layout::join(&self.prefix, &stem),
                prefix: layout::join(&self.prefix, &stem),
                sync_interval: self.sync_interval,
                snapshot_interval: self.snapshot_interval,
                retention: self.retention,
                compression: self.compression,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

pub fn load(file: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::Config {
        file: file.display().to_string(),
        key: String::new(),
        msg: format!(
            "cannot read: {}",
            e.to_string()
                .split(" (os error")
                .next()
                .unwrap_or("")
                .to_lowercase()
        ),
    })?;
    parse(file, &text)
}

pub fn parse(file: &Path, text: &str) -> Result<Config> {
    let cx = Ctx { file, text };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let off = e.span().map_or(0, |s| s.start);
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .trim_end_matches('.')
            .to_string();
        cx.err_at(off, "", msg)
    })?;
    let (bucket, bucket_prefix, s3) = storage(&cx, &raw.storage)?;
    let def_sync = cx.duration(
        &raw.defaults.sync_interval,
        "sync_interval",
        Duration::from_secs(1),
    )?;
    let def_snap = cx.duration(
        &raw.defaults.snapshot_interval,
        "snapshot_interval",
        Duration::from_secs(3600),
    )?;
    let def_keep = cx.retention(&raw.defaults.retention, Some(crate::cli::DEFAULT_RETENTION))?;
    let def = Defaults {
        sync: def_sync,
        snap: def_snap,
        keep: def_keep,
        compression: cx.compression(&raw.defaults.compression, Compression::None)?,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Entries::default();
    for (i, d) in raw.databases.iter().enumerate() {
        entry(&cx, (i, d), &def, (base, &bucket_prefix), &mut out)?;
    }
    let Entries {
        databases, dirs, ..
    } = out;
    if databases.is_empty() && dirs.is_empty() {
        return Err(Error::Config {
            file: file.display().to_string(),
            key: String::new(),
            msg: "no [[databases]] entries".into(),
        });
    }
    let metrics = metrics(&cx, &raw.metrics)?;
    let alerts = alerts(&cx, &raw.alerts)?;
    Ok(Config {
        file: file.to_path_buf(),
        bucket,
        s3,
        databases,
        dirs,
        metrics,
        alerts,
    })
}

/// `[storage]`: the replica URL as given (a bare bucket name means S3), the key prefix inside
/// it, and how to reach S3 (endpoint, region, addressing).
fn storage(cx: &Ctx, raw: &RawStorage) -> Result<(String, String, crate::storage::s3::S3Options)> {
    let bucket = cx.expand(&raw.bucket, "bucket")?;
    // A bare bucket name means S3; anything with a scheme is parsed as given.
    let url = crate::storage::parse_url(&bucket)
        .or_else(|e| {
            if bucket.contains("://") {
                Err(e)
            } else {
                crate::storage::parse_url(&format!("s3://{bucket}"))
            }
        })
        .map_err(|e| cx.err_at(raw.bucket.span().start, "bucket", e.to_string()))?;
    let bucket_prefix = match &url {
        crate::storage::Url::S3 { prefix, .. } => prefix.clone(),
        crate::storage::Url::Local { .. } => String::new(),
    };
    let bucket = match &url {
        crate::storage::Url::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
        crate::storage::Url::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        crate::storage::Url::Local { dir } => dir.display().to_string(),
    };
    let endpoint = raw
        .endpoint
        .as_ref()
        .map(|e| cx.expand(e, "endpoint"))
        .transpose()?;
    let region = raw
        .region
        .as_ref()
        .map(|e| cx.expand(e, "region"))
        .transpose()?;
    let addressing = match &raw.addressing {
        None => Default::default(),
        Some(a) => {
            let v = cx.expand(a, "addressing")?;
            crate::storage::s3::Addressing::parse(&v).ok_or_else(|| {
                cx.err_at(
                    a.span().start,
                    "addressing",
                    format!("'{v}' is not path, virtual or auto"),
                )
            })?
        }
    };
    let s3 = crate::storage::s3::S3Options {
        endpoint,
        region,
        addressing,
    };
    Ok((bucket, bucket_prefix, s3))
}

/// `[metrics]`: the listen address and the health thresholds.
fn metrics(cx: &Ctx, raw: &Option<RawMetrics>) -> Result<Option<Metrics>> {
    Ok(match raw {
        None => None,
        Some(m) => {
            let addr = cx.expand(&m.addr, "addr")?;
            if addr
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(cx.err_at(
                    m.addr.span().start,
                    "addr",
                    format!("'{addr}' is not host:port (e.g. 127.0.0.1:9090)"),
                ));
            }
            Some(Metrics {
                addr,
                max_lag: cx.duration(&m.max_lag, "max_lag", DEFAULT_MAX_LAG)?,
                max_failing: cx.duration(&m.max_failing, "max_failing", DEFAULT_MAX_FAILING)?,
            })
        }
    })
}

/// `[alerts]`: the failure command and the heartbeat.
fn alerts(cx: &Ctx, raw: &Option<RawAlerts>) -> Result<Option<Alerts>> {
    Ok(match raw {
        None => None,
        Some(a) => {
            let opt =
                |v: &Option<Spanned<String>>, k| v.as_ref().map(|v| cx.expand(v, k)).transpose();
            let heartbeat_url = opt(&a.heartbeat_url, "heartbeat_url")?;
            if let (Some(u), Some(at)) = (&heartbeat_url, &a.heartbeat_url) {
                if !u.starts_with("http://") && !u.starts_with("https://") {
                    return Err(cx.err_at(
                        at.span().start,
                        "heartbeat_url",
                        format!("'{u}' is not an http:// or https:// URL"),
                    ));
                }
            }
            Some(Alerts {
                on_failure: opt(&a.on_failure, "on_failure")?,
                after: cx.duration(&a.after, "after", DEFAULT_MAX_FAILING)?,
                heartbeat_url,
                heartbeat_interval: cx.duration(
                    &a.heartbeat_interval,
                    "heartbeat_interval",
                    Duration::from_secs(60),
                )?,
            })
        }
    })
}

impl Config {
    /// Every database to replicate now: the `path` entries and what the `dir` entries match.
    pub fn all_databases(&self) -> Result<Vec<DbEntry>> {
        let mut out = self.databases.clone();
        for d in &self.dirs {
            out.extend(d.scan()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
