//! The only code that knows object-key naming and the metadata carried by each object
//! (SPEC section 3):
//!
//! ```text
//! <prefix>/<name>/snapshots/<YYYYMMDDHHMMSSmmm>.db
//! <prefix>/<name>/wal/<GGGGGGGG>-<YYYYMMDDHHMMSSmmm>.wal
//! ```
//! Keys of one database sort in replay order: timestamps are strictly increasing per database
//! and the generation (8 hex digits) never decreases with time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::time::Stamp;
use crate::wal::{Checksum, WalEnd, WalHeader};

/// Object metadata: small string pairs (S3 `x-amz-meta-*`, or the local sidecar).
pub type Meta = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Snapshot,
    Segment { gen: u32 },
}

/// One object of a database's namespace, parsed from its key alone (restore plans from a LIST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub ts: Stamp,
    pub kind: Kind,
    pub size: u64,
}

pub fn join(prefix: &str, name: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        name.to_string()
    } else {
        format!("{p}/{name}")
    }
}

pub fn snapshot_key(ns: &str, ts: Stamp) -> String {
    format!("{ns}/snapshots/{}.db", ts.key())
}

pub fn segment_key(ns: &str, gen: u32, ts: Stamp) -> String {
    format!("{ns}/wal/{gen:08x}-{}.wal", ts.key())
}

pub fn state_key(ns: &str) -> String {
    format!("{ns}/state.json")
}

/// Split a key into (namespace, object) when it is a snapshot or segment key, structurally and
/// from the right: `<ns>/snapshots/<17 digits>.db` or `<ns>/wal/<8 hex>-<17 digits>.wal` (with
/// `.lz4` after it when compressed), so a
/// namespace may itself contain `snapshots`, `wal`, dots, spaces or any other character.
pub fn parse_key(key: &str, size: u64) -> Option<(String, Object)> {
    let (dir, file) = key.rsplit_once('/')?;
    let (ns, kind_dir) = dir.rsplit_once('/')?;
    if ns.is_empty() {
        return None;
    }
    let (ts, kind) = match kind_dir {
        "snapshots" => (Stamp::parse_key(file.strip_suffix(".db")?)?, Kind::Snapshot),
        "wal" => {
            let file = file
                .strip_suffix(crate::compress::LZ4_SUFFIX)
                .unwrap_or(file);
            let (g, t) = file.strip_suffix(".wal")?.split_once('-')?;
            if g.len() != 8 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let gen = u32::from_str_radix(g, 16).ok()?;
            (Stamp::parse_key(t)?, Kind::Segment { gen })
        }
        _ => return None,
    };
    Some((
        ns.into(),
        Object {
            key: key.into(),
            ts,
            kind,
            size,
        },
    ))
}

/// Is `rel` (a database's name taken from storage) a plain relative path, safe to join onto
/// an output directory? No root, no `.` or `..`, no empty component, no NUL.
pub fn is_plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Sort objects in replay order (timestamp; generation breaks no ties because timestamps are
/// unique per database, but keep the order total).
pub fn sort(objs: &mut [Object]) {
    objs.sort_by(|a, b| (a.ts, &a.kind, &a.key).cmp(&(b.ts, &b.kind, &b.key)));
}

/// Where a chain stands: the generation, the WAL cycle and the last committed frame in it.
/// `wal == None` means the WAL was empty at that point (the database file holds everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub gen: u32,
    pub wal: Option<(WalHeader, WalEnd)>,
}

/// Metadata keys. `sha256`: of the object's stored bytes.
pub const SHA256: &str = "sha256";
/// On a compressed segment (`compress`): the SHA-256 of the WAL inside it.
pub const WAL_SHA256: &str = "wal-sha256";
/// The chain hash of the object before (see `chain_sha`).
pub const PREV: &str = "prev";
/// First frame of a segment in its WAL cycle.
pub const FIRST: &str = "first";
/// `base=db` on a segment: its first frame follows the *database state* of the object before
/// it, not a WAL cycle of it (the WAL before it is gone; see `replicate::bridge`).
pub const BASE: &str = "base";
pub const BASE_DB: &str = "db";
/// On a bridge segment: how many pages of the database file it carries.
pub const BRIDGE: &str = "bridge";
/// `host:/path` of the database an object came from (non-ASCII bytes percent-encoded).
pub const SOURCE: &str = "source";

/// The hash a segment's successor names as its `prev`: that of the WAL it holds, which is
/// the stored bytes' for a plain segment.
pub fn chain_sha(m: &Meta) -> Option<&String> {
    m.get(WAL_SHA256).or_else(|| m.get(SHA256))
}

/// Write a position into metadata.
pub fn put_position(m: &mut Meta, p: &Position) {
    m.insert("gen".into(), p.gen.to_string());
    if let Some((h, e)) = &p.wal {
        m.insert("magic".into(), format!("{:08x}", h.magic));
        m.insert("page-size".into(), h.page_size.to_string());
        m.insert("seq".into(), h.seq.to_string());
        m.insert("salt".into(), format!("{:08x}{:08x}", h.salt1, h.salt2));
        m.insert(
            "hdr-cksum".into(),
            format!("{:08x}{:08x}", h.cksum.0, h.cksum.1),
        );
        m.insert("frame".into(), e.frame.to_string());
        m.insert(
            "cksum".into(),
            format!("{:08x}{:08x}", e.cksum.0, e.cksum.1),
        );
        m.insert("db-pages".into(), e.db_pages.to_string());
    }
}

fn hex_pair(s: &str) -> Option<(u32, u32)> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        u32::from_str_radix(&s[..8], 16).ok()?,
        u32::from_str_radix(&s[8..], 16).ok()?,
    ))
}

/// Read a position back; `None` when the metadata lacks or garbles it.
pub fn get_position(m: &Meta) -> Option<Position> {
    let gen = m.get("gen")?.parse().ok()?;
    let Some(magic) = m.get("magic") else {
        return Some(Position { gen, wal: None });
    };
    let (s1, s2) = hex_pair(m.get("salt")?)?;
    let (h1, h2) = hex_pair(m.get("hdr-cksum")?)?;
    let (c1, c2) = hex_pair(m.get("cksum")?)?;
    let h = WalHeader {
        magic: u32::from_str_radix(magic, 16).ok()?,
        page_size: m.get("page-size")?.parse().ok()?,
        seq: m.get("seq")?.parse().ok()?,
        salt1: s1,
        salt2: s2,
        cksum: Checksum(h1, h2),
    };
    let e = WalEnd {
        frame: m.get("frame")?.parse().ok()?,
        cksum: Checksum(c1, c2),
        db_pages: m.get("db-pages")?.parse().ok()?,
    };
    Some(Position {
        gen,
        wal: Some((h, e)),
    })
}

/// A database's NAME: its file stem (`app.db` -> `app`).
pub fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into())
}

/// Names for many databases: the stem, or where stems collide, the shortest path suffix that
/// tells the colliding ones apart (`/srv/a/app.db`, `/srv/b/app.db` -> `a/app`, `b/app`).
pub fn unique_names(paths: &[PathBuf]) -> Vec<String> {
    let comps: Vec<Vec<String>> = paths
        .iter()
        .map(|p| {
            let mut c: Vec<String> = p
                .parent()
                .map(|d| {
                    d.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            c.retain(|s| s != "/" && !s.is_empty() && s != ".");
            c.push(stem(p));
            c
        })
        .collect();
    let name = |c: &Vec<String>, k: usize| c[c.len().saturating_sub(k)..].join("/");
    comps
        .iter()
        .map(|c| {
            let mut k = 1;
            loop {
                let mine = name(c, k);
                let clash = comps
                    .iter()
                    .filter(|o| !std::ptr::eq(*o, c))
                    .any(|o| name(o, k) == mine);
                if !clash || k >= c.len() {
                    return mine;
                }
                k += 1;
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_sort_in_replay_order() {
        let ns = "backups/app";
        let keys = [
            segment_key(ns, 2, Stamp::from_ms(5000)),
            snapshot_key(ns, Stamp::from_ms(1000)),
            segment_key(ns, 1, Stamp::from_ms(2000)),
        ];
        let mut objs: Vec<Object> = keys.iter().map(|k| parse_key(k, 0).unwrap().1).collect();
        sort(&mut objs);
        let got: Vec<u64> = objs.iter().map(|o| o.ts.ms()).collect();
        assert_eq!(got, vec![1000, 2000, 5000]);
        assert_eq!(parse_key(&keys[0], 0).unwrap().0, ns);
        assert_eq!(objs[2].kind, Kind::Segment { gen: 2 });
        assert!(parse_key("backups/app/state.json", 0).is_none());
        assert!(parse_key("x/wal/zz-20261122000405123.wal", 0).is_none());
        let lz4 = format!("{}.lz4", keys[0]);
        assert_eq!(parse_key(&lz4, 3).unwrap().1.ts, objs[2].ts);
        assert!(parse_key("x/wal/00000001-20261122000405123.lz4", 0).is_none());
        assert!(parse_key("x/snapshots/20261122000405123.db.lz4", 0).is_none());
    }

    #[test]
    fn names_are_unique() {
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (
                vec!["/srv/a/app.db", "/srv/b/app.db", "/srv/c/users.db"],
                vec!["a/app", "b/app", "users"],
            ),
            (
                vec!["/x/a/app.db", "/y/a/app.db"],
                vec!["x/a/app", "y/a/app"],
            ),
            (vec!["app.db"], vec!["app"]),
        ];
        for (paths, want) in cases {
            let p: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
            assert_eq!(unique_names(&p), want);
        }
    }

    #[test]
    fn position_round_trip() {
        let h = WalHeader {
            magic: 0x377f0682,
            page_size: 4096,
            seq: 3,
            salt1: 1,
            salt2: 2,
            cksum: Checksum(7, 8),
        };
        let e = WalEnd {
            frame: 9,
            cksum: Checksum(u32::MAX, 0),
            db_pages: 12,
        };
        for p in [
            Position {
                gen: 4,
                wal: Some((h, e)),
            },
            Position { gen: 0, wal: None },
        ] {
            let mut m = Meta::new();
            put_position(&mut m, &p);
            assert_eq!(get_position(&m), Some(p));
        }
    }
}
