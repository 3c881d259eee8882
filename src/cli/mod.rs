//! Command-line parsing (lexopt) into validated `Args`. Flag lookup and help text come from
//! `defs`; validators return messages without the flag name, and the parser adds it.

pub mod defs;
pub mod man;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::time::{self, parse_duration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Help(Option<&'static str>),
    Version,
    GenerateMan,
    Watch,
    Snapshot,
    Restore,
    RestoreAll,
    List,
    Verify,
    Prune,
    Status,
}

#[derive(Debug, Clone)]
pub struct Args {
    pub cmd: Cmd,
    pub positional: Vec<String>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    /// `--addressing` (Auto: not given).
    pub addressing: crate::storage::s3::Addressing,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    pub output: Option<PathBuf>,
    pub point_in_time: Option<time::Stamp>,
    pub force: bool,
    pub config: Option<PathBuf>,
    pub prefix: Option<String>,
    pub output_dir: Option<PathBuf>,
    /// Uploads in flight at most (`watch`).
    pub uploads: usize,
    /// How long every point in time stays restorable (None: forever).
    pub retention: Option<Duration>,
    pub compression: crate::compress::Compression,
    pub dry_run: bool,
    /// `status --json`.
    pub json: bool,
    /// `watch --metrics-addr`.
    pub metrics_addr: Option<String>,
}

/// Default retention, as Litestream's: every point of the last 24 hours restores.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Parse a retention: a duration greater than 0, or `forever` (None: nothing is deleted).
pub fn parse_retention(s: &str) -> std::result::Result<Option<Duration>, String> {
    if s.trim().eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than 0 (or 'forever' to never delete)".into());
    }
    Ok(Some(d))
}

/// Default of `--uploads`: requests in flight are what keeps up with storage 10-80 ms away.
pub const DEFAULT_UPLOADS: usize = 32;

fn cmd_of(name: &str) -> Option<Cmd> {
    Some(match name {
        "watch" => Cmd::Watch,
        "snapshot" => Cmd::Snapshot,
        "restore" => Cmd::Restore,
        "restore-all" => Cmd::RestoreAll,
        "list" => Cmd::List,
        "verify" => Cmd::Verify,
        "prune" => Cmd::Prune,
        "status" => Cmd::Status,
        _ => return None,
    })
}

impl Default for Args {
    /// The defaults of every option, before the command line sets any.
    fn default() -> Args {
        Args {
            cmd: Cmd::Help(None),
            positional: vec![],
            bucket: None,
            endpoint: None,
            addressing: Default::default(),
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            output: None,
            point_in_time: None,
            force: false,
            config: None,
            prefix: None,
            output_dir: None,
            uploads: DEFAULT_UPLOADS,
            retention: Some(DEFAULT_RETENTION),
            compression: Default::default(),
            dry_run: false,
            json: false,
            metrics_addr: None,
        }
    }
}

/// Set the option `long` (one that takes a value) from `v`; an invalid value is a usage
/// error naming the option.
fn set_value(args: &mut Args, long: &str, v: String) -> Result<()> {
    let bad = |m: String| Error::usage(format!("option --{long}: {m}"));
    match long {
        "bucket" => args.bucket = Some(v),
        "endpoint" => args.endpoint = Some(v),
        "addressing" => {
            args.addressing = crate::storage::s3::Addressing::parse(&v)
                .ok_or_else(|| bad(format!("'{v}' is not path, virtual or auto")))?
        }
        "sync-interval" => args.sync_interval = parse_duration(&v).map_err(bad)?,
        "snapshot-interval" => {
            let d = parse_duration(&v).map_err(bad)?;
            if d.is_zero() {
                return Err(bad("must be greater than 0".into()));
            }
            args.snapshot_interval = d;
        }
        "retention" => args.retention = parse_retention(&v).map_err(bad)?,
        "compression" => {
            args.compression = crate::compress::Compression::parse(&v)
                .ok_or_else(|| bad(format!("'{v}' is not lz4 or none")))?
        }
        "output" => args.output = Some(PathBuf::from(v)),
        "config" => args.config = Some(PathBuf::from(v)),
        "prefix" => args.prefix = Some(v),
        "metrics-addr" => args.metrics_addr = Some(v),
        "output-dir" => args.output_dir = Some(PathBuf::from(v)),
        "uploads" => {
            args.uploads = match v.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => return Err(bad(format!("'{v}' is not a number from 1 to 256"))),
            }
        }
        "point-in-time" => {
            args.point_in_time = Some(time::Stamp::parse_iso(&v).ok_or_else(|| {
                bad(format!(
                    "invalid time '{v}' (use ISO 8601, e.g. 2026-11-22T10:00:00Z)"
                ))
            })?)
        }
        other => unreachable!("flag --{other} has no handler"),
    }
    Ok(())
}

/// A word on the command line: the command (`name` is then set), or a positional argument
/// after it. True when parsing ends here (`help`, `generate-man`).
fn word(args: &mut Args, name: &mut Option<&'static str>, v: String) -> Result<bool> {
    if name.is_some() {
        args.positional.push(v);
        return Ok(false);
    }
    match v.as_str() {
        "help" => args.cmd = Cmd::Help(None),
        "generate-man" => args.cmd = Cmd::GenerateMan,
        _ => {
            args.cmd = cmd_of(&v).ok_or_else(|| Error::usage(format!("unknown command '{v}'")))?;
            *name = Some(defs::command(&v).expect("every Cmd has a definition").name);
            return Ok(false);
        }
    }
    Ok(true)
}

/// A flag without a value (other than `--help`).
fn set_switch(args: &mut Args, long: &str) {
    match long {
        "force" => args.force = true,
        "dry-run" => args.dry_run = true,
        "json" => args.json = true,
        _ => unreachable!("switch --{long} has no handler"),
    }
}

pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Args> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(argv);
    let mut args = Args::default();
    let mut name: Option<&'static str> = None;
    let uerr = |e: lexopt::Error| Error::usage(e.to_string());
    while let Some(arg) = p.next().map_err(uerr)? {
        let (long, short) = match &arg {
            Long(l) => (Some(*l), None),
            Short(c) => (None, Some(*c)),
            Value(v) => {
                let v = v.to_string_lossy().into_owned();
                if word(&mut args, &mut name, v)? {
                    return Ok(args);
                }
                continue;
            }
        };
        if name.is_none() {
            match (long, short) {
                (Some("help"), _) | (_, Some('h')) => return Ok(args),
                (Some("version"), _) | (_, Some('V')) => {
                    args.cmd = Cmd::Version;
                    return Ok(args);
                }
                _ => {}
            }
        }
        let cmd = name.unwrap_or("");
        let shown = long
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| format!("-{}", short.unwrap_or('?')));
        let Some(f) = defs::flag(cmd, long, short) else {
            return Err(if name.is_none() {
                Error::usage(format!("option {shown} needs a command before it"))
            } else {
                Error::usage(format!("unknown option {shown} for '{cmd}'"))
                    .with_hint(format!("run 'walsync {cmd} --help' for its options"))
            });
        };
        if f.value.is_none() {
            if f.long == "help" {
                args.cmd = Cmd::Help(name);
                return Ok(args);
            }
            set_switch(&mut args, f.long);
            continue;
        }
        let v = p.value().map_err(|_| {
            Error::usage(format!(
                "option --{} needs a value ({})",
                f.long,
                f.value.unwrap_or("")
            ))
        })?;
        let v = v.to_string_lossy().into_owned();
        set_value(&mut args, f.long, v)?;
    }
    if name.is_none() {
        return Ok(args);
    }
    validate(&args)?;
    Ok(args)
}

fn validate(a: &Args) -> Result<()> {
    let cmd = match a.cmd {
        Cmd::Watch => "watch",
        Cmd::Snapshot => "snapshot",
        Cmd::Restore => "restore",
        Cmd::RestoreAll => "restore-all",
        Cmd::List => "list",
        Cmd::Verify => "verify",
        Cmd::Prune => "prune",
        Cmd::Status => "status",
        _ => return Ok(()),
    };
    let hint = format!("run 'walsync {cmd} --help' for usage");
    let usage = |m: String| Err(Error::usage(m).with_hint(hint.clone()));
    let with_config = a.config.is_some();
    if a.bucket.is_none()
        && a.cmd != Cmd::Status
        && !(with_config
            && matches!(
                a.cmd,
                Cmd::Watch | Cmd::Snapshot | Cmd::Restore | Cmd::RestoreAll | Cmd::Prune
            ))
    {
        return usage(format!("'{cmd}' needs a replica: -b URL"));
    }
    match a.cmd {
        Cmd::Watch if with_config && !a.positional.is_empty() => {
            usage("'watch' takes databases from --config or from the command line, not both".into())
        }
        Cmd::Status if with_config && !a.positional.is_empty() => usage(
            "'status' takes databases from --config or from the command line, not both".into(),
        ),
        Cmd::Watch | Cmd::Snapshot | Cmd::Status if a.positional.is_empty() && !with_config => {
            usage(format!("'{cmd}' needs at least one database path"))
        }
        Cmd::Restore if with_config && (a.prefix.is_none() || !a.positional.is_empty()) => {
            usage("'restore --config' needs --prefix PREFIX instead of a NAME".into())
        }
        Cmd::Restore if !with_config && a.prefix.is_some() => {
            usage("'restore --prefix' needs --config FILE".into())
        }
        Cmd::Prune if with_config && !a.positional.is_empty() => {
            usage("'prune' takes a NAME with -b, or every database of --config, not both".into())
        }
        Cmd::Restore | Cmd::Verify | Cmd::Prune if !with_config && a.positional.len() != 1 => {
            usage(format!("'{cmd}' needs exactly one database NAME"))
        }
        Cmd::Restore if a.output.is_none() => {
            usage("'restore' needs an output file: -o FILE".into())
        }
        Cmd::RestoreAll if !with_config => usage("'restore-all' needs --config FILE".into()),
        Cmd::RestoreAll if a.output_dir.is_none() => {
            usage("'restore-all' needs --output-dir DIR".into())
        }
        Cmd::List | Cmd::RestoreAll if !a.positional.is_empty() => usage(format!(
            "'{cmd}' takes no arguments, got '{}'",
            a.positional[0]
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(s.split_whitespace().map(OsString::from))
    }

    #[test]
    fn man_page_has_not_drifted() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/man/walsync.1");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == man::render(),
            "man/walsync.1 differs from the flag tables: run 'cargo run -- generate-man > man/walsync.1'"
        );
    }

    #[test]
    fn durations() {
        let cases = [
            ("250ms", 250),
            ("1s", 1000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("3600", 3_600_000),
            ("0", 0),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "1x", "-1s", "s", "1.5.2s"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn command_lines() {
        let a = p("watch a.db b.db -b /tmp/r --sync-interval 0").unwrap();
        assert_eq!(a.cmd, Cmd::Watch);
        assert_eq!(a.positional, vec!["a.db", "b.db"]);
        assert_eq!(a.sync_interval, Duration::ZERO);
        let a =
            p("restore app -o out.db -b /tmp/r --point-in-time 2026-11-22T10:00:00Z -f").unwrap();
        assert!(a.force && a.point_in_time.is_some());
        let errs = [
            ("watch a.db", "'watch' needs a replica: -b URL"),
            ("watch -b /r", "'watch' needs at least one database path"),
            ("restore app -b /r", "'restore' needs an output file: -o FILE"),
            ("watch a.db -b /r --sync-interval 1x", "option --sync-interval: invalid duration '1x': unknown unit 'x' (use ms, s, m, h or d)"),
            ("frobnicate", "unknown command 'frobnicate'"),
            ("list -b /r --output x", "unknown option --output for 'list'"),
        ];
        for (line, want) in errs {
            assert_eq!(p(line).unwrap_err().to_string(), want, "{line}");
        }
        assert_eq!(p("--version").unwrap().cmd, Cmd::Version);
        assert_eq!(p("restore --help").unwrap().cmd, Cmd::Help(Some("restore")));
    }
}
