//! One `[[databases]]` entry: a `path` (one database) or a `dir` (every matching database in
//! it), its intervals over `[defaults]`, its prefix, and the namespace it claims.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{Ctx, DbEntry, DirEntry, RawDb};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::layout;

/// The defaults of `[defaults]`, for each `[[databases]]` entry to override.
pub(super) struct Defaults {
    pub sync: Duration,
    pub snap: Duration,
    pub keep: Option<Duration>,
    pub compression: Compression,
}

/// What the `[[databases]]` entries add up to, and which entry took each namespace.
#[derive(Default)]
pub(super) struct Entries {
    pub databases: Vec<DbEntry>,
    pub dirs: Vec<DirEntry>,
    seen: BTreeMap<String, usize>,
}

impl Entries {
    /// Namespace `ns` for entry `i`: two entries never share one.
    fn claim(&mut self, cx: &Ctx, ns: &str, i: usize, at: usize, prefix: &str) -> Result<()> {
        match self.seen.insert(ns.to_string(), i) {
            Some(j) => Err(cx.err_at(
                at,
                "prefix",
                format!("prefix '{prefix}' is used by database entry {} too", j + 1),
            )),
            None => Ok(()),
        }
    }
}

/// What both kinds of entry share: the intervals, the prefix given (checked), where the
/// entry and its prefix are in the file (for messages).
struct Common {
    sync: Duration,
    snap: Duration,
    keep: Option<Duration>,
    compression: Compression,
    prefix: Option<String>,
    /// The entry's `path` or `dir` (else its table header).
    at: usize,
    /// Its `prefix` (else `at`).
    key_at: usize,
}

/// Entry `i` of `[[databases]]`: a `path` or a `dir`, relative to the config file's folder.
pub(super) fn entry(
    cx: &Ctx,
    (i, d): (usize, &RawDb),
    def: &Defaults,
    (base, bucket_prefix): (&Path, &str),
    out: &mut Entries,
) -> Result<()> {
    let c = common(cx, d, def)?;
    match (&d.path, &d.dir) {
        (Some(_), None) => path_entry(cx, (i, d), c, (base, bucket_prefix), out),
        (None, Some(_)) => dir_entry(cx, (i, d), c, (base, bucket_prefix), out),
        (Some(_), Some(_)) => Err(cx.err_at(
            c.at,
            "",
            "a database entry has either path or dir, not both",
        )),
        (None, None) => Err(cx.err_at(c.at, "", "a database entry needs path or dir")),
    }
}

fn common(cx: &Ctx, d: &RawDb, def: &Defaults) -> Result<Common> {
    let at = d.path.as_ref().or(d.dir.as_ref()).map_or_else(
        || cx.text.find("[[databases]]").unwrap_or(0),
        |s| s.span().start,
    );
    let sync = cx.duration(&d.sync_interval, "sync_interval", def.sync)?;
    let snap = cx.duration(&d.snapshot_interval, "snapshot_interval", def.snap)?;
    let keep = cx.retention(&d.retention, def.keep)?;
    let compression = cx.compression(&d.compression, def.compression)?;
    let prefix = d
        .prefix
        .as_ref()
        .map(|p| cx.expand(p, "prefix"))
        .transpose()?;
    if let (Some(p), Some(raw)) = (&prefix, &d.prefix) {
        if p.trim_matches('/').is_empty() || p.split('/').any(|c| c == "." || c == "..") {
            return Err(cx.err_at(raw.span().start, "prefix", format!("invalid prefix '{p}'")));
        }
    }
    let key_at = d.prefix.as_ref().map_or(at, |p| p.span().start);
    Ok(Common {
        sync,
        snap,
        keep,
        compression,
        prefix,
        at,
        key_at,
    })
}

/// A `path` entry: one database file, which must exist; its prefix defaults to its NAME.
fn path_entry(
    cx: &Ctx,
    (i, d): (usize, &RawDb),
    c: Common,
    (base, bucket_prefix): (&Path, &str),
    out: &mut Entries,
) -> Result<()> {
    let p = d.path.as_ref().expect("a path entry");
    if d.pattern.is_some() {
        return Err(cx.err_at(c.at, "pattern", "pattern goes with dir, not path"));
    }
    let path = base.join(cx.expand(p, "path")?);
    if !path.is_file() {
        return Err(cx.err_at(
            p.span().start,
            "path",
            format!("database {} does not exist", path.display()),
        ));
    }
    let path = std::fs::canonicalize(&path).map_err(|e| Error::io("open database", &path, e))?;
    let prefix = c.prefix.unwrap_or_else(|| layout::stem(&path));
    let ns = layout::join(bucket_prefix, &prefix);
    out.claim(cx, &ns, i, c.key_at, &prefix)?;
    out.databases.push(DbEntry {
        path,
        ns,
        prefix,
        sync_interval: c.sync,
        snapshot_interval: c.snap,
        retention: c.keep,
        compression: c.compression,
    });
    Ok(())
}

/// A `dir` entry: a directory that must exist, a `pattern` (default `*.db`) and a prefix,
/// which it needs (its databases go under `prefix/<NAME>`).
fn dir_entry(
    cx: &Ctx,
    (i, d): (usize, &RawDb),
    c: Common,
    (base, bucket_prefix): (&Path, &str),
    out: &mut Entries,
) -> Result<()> {
    let dir = d.dir.as_ref().expect("a dir entry");
    let dirpath = base.join(cx.expand(dir, "dir")?);
    if !dirpath.is_dir() {
        return Err(cx.err_at(
            dir.span().start,
            "dir",
            format!("directory {} does not exist", dirpath.display()),
        ));
    }
    let pattern = d
        .pattern
        .as_ref()
        .map(|p| cx.expand(p, "pattern"))
        .transpose()?
        .unwrap_or_else(|| "*.db".into());
    let Some(prefix) = c.prefix else {
        return Err(cx.err_at(c.at, "prefix", "a dir entry needs a prefix"));
    };
    let ns = layout::join(bucket_prefix, &prefix);
    out.claim(cx, &ns, i, c.key_at, &prefix)?;
    let dirpath =
        std::fs::canonicalize(&dirpath).map_err(|e| Error::io("open directory", &dirpath, e))?;
    out.dirs.push(DirEntry {
        dir: dirpath,
        pattern,
        prefix: ns,
        sync_interval: c.sync,
        snapshot_interval: c.snap,
        retention: c.keep,
        compression: c.compression,
    });
    Ok(())
}
