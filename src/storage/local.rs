//! The local-directory replica (the embedded default). An object `k` is the file `<root>/k`;
//! its metadata is the sidecar `<root>/k.meta` (`name=value` lines), written first.
//!
//! Atomicity: both files are written to a temporary name, fsynced, renamed, and the directory
//! fsynced, so a reader sees an object only once it and its sidecar are complete and durable.
//! Listing skips temporary files and sidecars; an object without a sidecar is listed (restore
//! then fails on its missing checksum, naming it).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Body, Entry, Storage};
use crate::error::{Error, Result, StorageKind};
use crate::layout::Meta;

const META_SUFFIX: &str = ".meta";
const TMP_MARK: &str = ".tmp-";

pub struct LocalStorage {
    root: PathBuf,
    seq: AtomicU64,
}

impl LocalStorage {
    /// Open (creating if needed) a replica directory.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| Error::io("create replica directory", root, e))?;
        let md = fs::metadata(root).map_err(|e| Error::io("open replica directory", root, e))?;
        if !md.is_dir() {
            return Err(
                Error::other(format!("replica {} is not a directory", root.display()))
                    .with_hint("point -b at a directory"),
            );
        }
        // Absolute, so that messages and `walsync snapshot`'s request name the same place
        // whatever the working directory.
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(LocalStorage {
            root,
            seq: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(self.err(key, StorageKind::Permanent, "invalid key".into()));
        }
        Ok(self.root.join(key))
    }

    fn err(&self, key: &str, kind: StorageKind, msg: String) -> Error {
        Error::Storage {
            backend: self.describe(),
            key: key.into(),
            kind,
            msg,
        }
    }

    fn io_err(&self, key: &str, e: io::Error) -> Error {
        let kind = if e.kind() == ErrorKind::NotFound {
            StorageKind::NotFound
        } else {
            StorageKind::Permanent
        };
        self.err(key, kind, e.to_string())
    }

    /// Write `src` to `dst` atomically and durably.
    fn write_atomic(
        &self,
        key: &str,
        dst: &Path,
        src: &mut dyn Read,
        len: Option<u64>,
    ) -> Result<()> {
        let dir = dst.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).map_err(|e| self.io_err(key, e))?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = dst
            .file_name()
            .expect("object paths have a name")
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}{TMP_MARK}{}-{n}", std::process::id()));
        let res = (|| -> Result<()> {
            let mut f = File::create(&tmp).map_err(|e| self.io_err(key, e))?;
            let copied = io::copy(src, &mut f).map_err(|e| self.io_err(key, e))?;
            if let Some(len) = len {
                if copied != len {
                    return Err(self.err(
                        key,
                        StorageKind::Permanent,
                        format!("short write: {copied} of {len} bytes"),
                    ));
                }
            }
            f.sync_all().map_err(|e| self.io_err(key, e))?;
            fs::rename(&tmp, dst).map_err(|e| self.io_err(key, e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io_err(key, e))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn read_meta(&self, key: &str, path: &Path) -> Result<Meta> {
        let mp = meta_path(path);
        let f = File::open(&mp).map_err(|e| match e.kind() {
            ErrorKind::NotFound if path.exists() => self.err(
                key,
                StorageKind::Permanent,
                "metadata sidecar is missing".into(),
            ),
            _ => self.io_err(key, e),
        })?;
        let mut m = Meta::new();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(|e| self.io_err(key, e))?;
            if let Some((k, v)) = line.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            }
        }
        Ok(m)
    }

    fn walk(&self, dir: &Path, rel: &str, prefix: &str, f: &mut dyn FnMut(Entry)) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_err(rel, e)),
        };
        let mut names: Vec<(String, bool, u64)> = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| self.io_err(rel, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.contains(TMP_MARK) || name.ends_with(META_SUFFIX) {
                continue;
            }
            let md = ent.metadata().map_err(|e| self.io_err(rel, e))?;
            names.push((name, md.is_dir(), md.len()));
        }
        names.sort();
        for (name, is_dir, size) in names {
            let key = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let in_prefix = key.starts_with(prefix) || prefix.starts_with(&format!("{key}/"));
            if !in_prefix {
                continue;
            }
            if is_dir {
                self.walk(&dir.join(&name), &key, prefix, f)?;
            } else if key.starts_with(prefix) {
                f(Entry { key, size });
            }
        }
        Ok(())
    }
}

fn meta_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(META_SUFFIX);
    PathBuf::from(s)
}

impl Storage for LocalStorage {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, key: &str, src: &mut dyn Read, len: u64, meta: &Meta) -> Result<()> {
        super::count_request("put");
        let path = self.path(key)?;
        let mut text = String::new();
        for (k, v) in meta {
            if k.contains(['=', '\n']) || v.contains('\n') {
                return Err(self.err(key, StorageKind::Permanent, format!("invalid metadata {k}")));
            }
            text.push_str(&format!("{k}={v}\n"));
        }
        // Sidecar first: an object is never visible without its checksum.
        self.write_atomic(key, &meta_path(&path), &mut text.as_bytes(), None)?;
        self.write_atomic(key, &path, src, Some(len))
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Body> {
        use std::io::Seek;
        super::count_request("get");
        let path = self.path(key)?;
        let mut f = File::open(&path).map_err(|e| self.io_err(key, e))?;
        let size = f.metadata().map_err(|e| self.io_err(key, e))?.len();
        let meta = self.read_meta(key, &path)?;
        f.seek(io::SeekFrom::Start(start.min(size)))
            .map_err(|e| self.io_err(key, e))?;
        Ok(Body {
            meta,
            size: size.saturating_sub(start).min(len),
            reader: Box::new(f.take(len)),
        })
    }

    fn get(&self, key: &str) -> Result<Body> {
        super::count_request("get");
        let path = self.path(key)?;
        let f = File::open(&path).map_err(|e| self.io_err(key, e))?;
        let size = f.metadata().map_err(|e| self.io_err(key, e))?.len();
        let meta = self.read_meta(key, &path)?;
        Ok(Body {
            meta,
            size,
            reader: Box::new(f),
        })
    }

    fn head(&self, key: &str) -> Result<Meta> {
        super::count_request("head");
        let path = self.path(key)?;
        if !path.exists() {
            return Err(self.err(key, StorageKind::NotFound, "not found".into()));
        }
        self.read_meta(key, &path)
    }

    fn list_from(&self, prefix: &str, after: &str, f: &mut dyn FnMut(Entry)) -> Result<()> {
        super::count_request("list");
        self.walk(&self.root, "", prefix, &mut |e| {
            if e.key.as_str() > after {
                f(e)
            }
        })
    }

    /// Under an exclusive `flock` of a lock file beside the object (released by the kernel if
    /// the process dies): read the current ETag (the object's SHA-256), check the condition,
    /// write. Every process sharing the directory (NFS included, where flock works) agrees.
    fn put_if(
        &self,
        key: &str,
        body: &[u8],
        meta: &Meta,
        if_match: Option<&str>,
    ) -> Result<Option<String>> {
        use std::os::fd::AsRawFd;
        let path = self.path(key)?;
        let dir = path.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).map_err(|e| self.io_err(key, e))?;
        let name = path.file_name().expect("a name").to_string_lossy();
        let lock_path = dir.join(format!(".{name}{TMP_MARK}lock"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.io_err(key, e))?;
        // SAFETY: flock on a descriptor we own; it is released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io_err(key, io::Error::last_os_error()));
        }
        let current = match self.read_meta(key, &path) {
            Ok(m) if path.exists() => Some(m.get("sha256").cloned().unwrap_or_default()),
            Ok(_) => None,
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let ok = match (if_match, &current) {
            (None, None) => true,
            (Some(want), Some(have)) => want == have,
            _ => false,
        };
        if !ok {
            return Ok(None);
        }
        let tag = meta.get("sha256").cloned().unwrap_or_else(|| {
            crate::digest::hex(<sha2::Sha256 as sha2::Digest>::new_with_prefix(body))
        });
        let mut m = meta.clone();
        m.insert("sha256".into(), tag.clone());
        self.put(key, &mut &body[..], body.len() as u64, &m)?;
        drop(lock);
        Ok(Some(tag))
    }

    fn delete(&self, key: &str) -> Result<()> {
        super::count_request("delete");
        let path = self.path(key)?;
        // The lock file of a conditional write (`put_if`) goes with its object.
        let lock = path.with_file_name(format!(
            ".{}{TMP_MARK}lock",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        for p in [path.clone(), meta_path(&path), lock] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err(key, e)),
            }
        }
        Ok(())
    }
}

/// Conformance checks every backend must pass; run against each backend by the tests. (One
/// sequence of checks on one set of objects, each depending on the ones before: long on
/// purpose.)
pub fn check_storage(s: &dyn Storage) -> Result<()> {
    let body = b"hello object".to_vec();
    let mut meta = Meta::new();
    // The real hash: S3 backends sign it as the payload hash and the server checks it.
    meta.insert(
        "sha256".into(),
        crate::digest::hex(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&body)),
    );
    s.put("conf/a/one.bin", &mut &body[..], body.len() as u64, &meta)?;
    s.put("conf/a/two.bin", &mut &b"x"[..], 1, &Meta::new())?;
    s.put("conf/b.bin", &mut &b""[..], 0, &Meta::new())?;
    let mut got = s.get("conf/a/one.bin")?;
    let mut buf = Vec::new();
    got.reader
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", "conf/a/one.bin", e))?;
    assert_eq!(buf, body, "get returns what put stored");
    assert_eq!(got.meta, meta, "metadata round-trips");
    for (start, len, want) in [(6u64, 3u64, &b"obj"[..]), (6, 100, &b"object"[..])] {
        let mut part = s.get_range("conf/a/one.bin", start, len)?;
        let mut v = Vec::new();
        part.reader
            .read_to_end(&mut v)
            .map_err(|e| Error::io("read", "conf/a/one.bin", e))?;
        assert_eq!(
            (v.as_slice(), part.size),
            (want, want.len() as u64),
            "range {start}+{len}"
        );
        assert_eq!(part.meta, meta, "a range carries the metadata");
    }
    assert_eq!(s.head("conf/a/one.bin")?, meta);
    let mut keys = Vec::new();
    s.list("conf/a/", &mut |e| keys.push((e.key, e.size)))?;
    assert_eq!(
        keys,
        vec![
            ("conf/a/one.bin".to_string(), 12),
            ("conf/a/two.bin".to_string(), 1)
        ]
    );
    let mut all = Vec::new();
    s.list("conf/", &mut |e| all.push(e.key))?;
    assert_eq!(all.len(), 3);
    let mut after = Vec::new();
    s.list_from("conf/", "conf/a/one.bin", &mut |e| after.push(e.key))?;
    assert_eq!(
        after,
        ["conf/a/two.bin", "conf/b.bin"],
        "list_from starts after"
    );
    // A multi-object delete, with keys that need escaping and one that does not exist.
    let odd = [
        "conf/c/a&b<c>'\"d.bin",
        "conf/c/é ü.bin",
        "conf/c/plain.bin",
    ];
    for k in odd {
        s.put(k, &mut &b"x"[..], 1, &Meta::new())?;
    }
    let mut gone = Vec::new();
    let mut batch: Vec<String> = odd.iter().map(|k| k.to_string()).collect();
    batch.push("conf/c/missing".into());
    s.delete_many(&batch, &mut |k| gone.push(k.to_string()))?;
    gone.sort();
    batch.sort();
    assert_eq!(gone, batch, "delete_many reports every key");
    let mut left = 0;
    s.list("conf/c/", &mut |_| left += 1)?;
    assert_eq!(left, 0, "delete_many removes objects");
    assert!(s
        .get("conf/missing")
        .err()
        .is_some_and(|e| e.is_not_found()));
    assert!(s
        .head("conf/missing")
        .err()
        .is_some_and(|e| e.is_not_found()));
    for k in [
        "conf/a/one.bin",
        "conf/a/two.bin",
        "conf/b.bin",
        "conf/missing",
    ] {
        s.delete(k)?;
    }
    let mut left = 0;
    s.list("conf/", &mut |_| left += 1)?;
    assert_eq!(left, 0, "delete removes objects");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_conformance() {
        let dir = std::env::temp_dir().join(format!("walsync-local-{}", std::process::id()));
        let s = super::LocalStorage::open(&dir).unwrap();
        super::check_storage(&s).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
