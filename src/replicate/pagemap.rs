//! The page map: a file in the spool holding a 16-byte hash (a truncated SHA-256) of every page
//! of the database *as the chain has it* (the snapshot plus every segment captured since), and
//! the chain tip it describes. It is the evidence a write-and-close cannot erase (SPEC 4a): when
//! the frames after the chain's position were checkpointed into the database file and the WAL
//! deleted before walsync read them, comparing the database's pages with this map finds
//! exactly the pages that changed, and those alone are shipped (see `bridge`).
//!
//! The file is updated in place while segments are captured. Its tag (the SHA-256 of the chain's
//! last object) is zeroed before any update and written after it, so a map left by a crash in
//! mid-update, or one that is ahead of what reached the replica, never matches a chain tip and
//! is never trusted. It may also carry the database file's identity and times at a moment the
//! file held exactly the chain's state, so that an unchanged file is proven without reading it.
//!
//! Memory: none beyond one buffered reader; the map is ~0.4 % of the database on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"WSPGMAP1";
const HEADER: u64 = 128;
const ENTRY: u64 = 16;
/// A file time this close to the moment it was recorded may hide a later write in the same
/// tick of the filesystem's clock (the "racy timestamp" problem), so it proves nothing.
const RACY_NS: i64 = 2_000_000_000;

pub type PageHash = [u8; 16];

pub fn page_hash(page: &[u8]) -> PageHash {
    let d = Sha256::digest(page);
    let mut h = [0u8; 16];
    h.copy_from_slice(&d[..16]);
    h
}

/// Identity and times of the database file, for the "unchanged since" proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileFacts {
    pub fn of(f: &File) -> Option<FileFacts> {
        let m = f.metadata().ok()?;
        Some(FileFacts {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        })
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Decode a hex SHA-256 into the 32 bytes of a tag.
fn tag_bytes(sha_hex: &str) -> [u8; 32] {
    let mut t = [0u8; 32];
    for (i, b) in t.iter_mut().enumerate() {
        *b = sha_hex
            .get(2 * i..2 * i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(0);
    }
    t
}

pub struct PageMap {
    path: PathBuf,
    file: File,
    pub page_size: u32,
    pub pages: u32,
    /// Recorded facts of the database file and when they were recorded.
    facts: Option<(FileFacts, i64)>,
}

fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, p, e)
}

impl PageMap {
    pub fn path_in(spool: &Path) -> PathBuf {
        spool.join("pages")
    }

    /// Open the map if it describes exactly the chain tip `tag` (hex SHA-256) at `page_size`.
    pub fn open(spool: &Path, tag: &str, page_size: u32) -> Result<Option<PageMap>> {
        let path = Self::path_in(spool);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open page map", &path, e)),
        };
        let mut h = [0u8; HEADER as usize];
        if file.read_exact_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
            return Ok(None);
        }
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let (ps, pages) = (u32_at(8), u32_at(12));
        let want = tag_bytes(tag);
        if h[16..48] != want || want == [0u8; 32] || ps != page_size {
            return Ok(None);
        }
        let len = file.metadata().map_err(io("stat page map", &path))?.len();
        if len != HEADER + pages as u64 * ENTRY {
            return Ok(None);
        }
        let facts = (h[48] == 1).then(|| {
            (
                FileFacts {
                    dev: u64_at(56),
                    ino: u64_at(64),
                    size: u64_at(72),
                    mtime_ns: u64_at(80) as i64,
                    ctime_ns: u64_at(88) as i64,
                },
                u64_at(96) as i64,
            )
        });
        Ok(Some(PageMap {
            path,
            file,
            page_size: ps,
            pages,
            facts,
        }))
    }

    /// Build the map of a database file (a snapshot just taken), for chain tip `tag`.
    pub fn build(spool: &Path, db_copy: &Path, page_size: u32, tag: &str) -> Result<PageMap> {
        let path = Self::path_in(spool);
        let tmp = spool.join("pages.tmp");
        let src = File::open(db_copy).map_err(io("open", db_copy))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create page map", &tmp))?;
        let mut map = PageMap {
            path: path.clone(),
            file,
            page_size,
            pages: 0,
            facts: None,
        };
        map.write_header(None)?;
        let mut r = BufReader::with_capacity(256 * 1024, src);
        let mut page = vec![0u8; page_size as usize];
        let mut out = Vec::with_capacity(64 * 1024);
        let mut n: u32 = 0;
        loop {
            match r.read_exact(&mut page) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(Error::io("read", db_copy, e)),
            }
            out.extend_from_slice(&page_hash(&page));
            n += 1;
            if out.len() >= 64 * 1024 {
                map.file
                    .write_all_at(
                        &out,
                        HEADER + (n as u64 - (out.len() as u64 / ENTRY)) * ENTRY,
                    )
                    .map_err(io("write page map", &tmp))?;
                out.clear();
            }
        }
        map.file
            .write_all_at(
                &out,
                HEADER + (n as u64 - (out.len() as u64 / ENTRY)) * ENTRY,
            )
            .map_err(io("write page map", &tmp))?;
        map.pages = n;
        map.write_header(Some(tag))?;
        fs::rename(&tmp, &path).map_err(io("rename page map", &path))?;
        Ok(map)
    }

    fn write_header(&mut self, tag: Option<&str>) -> Result<()> {
        let mut h = [0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        h[12..16].copy_from_slice(&self.pages.to_be_bytes());
        if let Some(t) = tag {
            h[16..48].copy_from_slice(&tag_bytes(t));
        }
        if let (Some((f, at)), Some(_)) = (self.facts, tag) {
            h[48] = 1;
            for (i, v) in [
                f.dev,
                f.ino,
                f.size,
                f.mtime_ns as u64,
                f.ctime_ns as u64,
                at as u64,
            ]
            .iter()
            .enumerate()
            {
                h[56 + 8 * i..64 + 8 * i].copy_from_slice(&v.to_be_bytes());
            }
        }
        self.file
            .write_all_at(&h, 0)
            .map_err(io("write page map", &self.path))
    }

    /// Start changing the map: until `finish`, it matches no chain tip.
    pub fn begin(&mut self) -> Result<()> {
        self.facts = None;
        self.write_header(None)
    }

    /// The map now describes chain tip `tag`.
    pub fn finish(&mut self, tag: &str) -> Result<()> {
        self.file
            .set_len(HEADER + self.pages as u64 * ENTRY)
            .map_err(io("truncate page map", &self.path))?;
        self.write_header(Some(tag))
    }

    pub fn set(&mut self, pgno: u32, h: &PageHash) -> Result<()> {
        if pgno == 0 {
            return Ok(());
        }
        self.file
            .write_all_at(h, HEADER + (pgno as u64 - 1) * ENTRY)
            .map_err(io("write page map", &self.path))?;
        self.pages = self.pages.max(pgno);
        Ok(())
    }

    /// The database now has `pages` pages (a commit frame's size).
    pub fn resize(&mut self, pages: u32) {
        self.pages = pages;
    }

    /// Apply the frames of a segment file written by walsync itself, from byte `start` (a
    /// frame boundary) to its end: each page's new hash, and each commit's database size.
    pub fn apply_segment_frames(&mut self, file: &Path, start: u64) -> Result<()> {
        let f = File::open(file).map_err(io("open spool file", file))?;
        let mut r = BufReader::with_capacity(64 * 1024, f);
        use std::io::Seek;
        r.seek(std::io::SeekFrom::Start(start))
            .map_err(io("read spool file", file))?;
        let mut frame = vec![0u8; 24 + self.page_size as usize];
        loop {
            match r.read_exact(&mut frame) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(Error::io("read spool file", file, e)),
            }
            let be =
                |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
            let (pgno, commit) = (be(0), be(4));
            self.set(pgno, &page_hash(&frame[24..]))?;
            if commit != 0 {
                self.resize(commit);
            }
        }
    }

    /// A reader of the hashes from page 1 on.
    pub fn entries(&self) -> Result<std::io::Take<BufReader<File>>> {
        let f = self
            .file
            .try_clone()
            .map_err(io("open page map", &self.path))?;
        let mut r = BufReader::with_capacity(64 * 1024, f);
        use std::io::Seek;
        r.seek(std::io::SeekFrom::Start(HEADER))
            .map_err(io("read page map", &self.path))?;
        Ok(r.take(self.pages as u64 * ENTRY))
    }

    /// Record that the database file, as `facts` say it is now, holds exactly the map's state
    /// (written with the next `finish`, or at once with `tag`).
    pub fn record_facts(&mut self, facts: FileFacts, tag: &str) -> Result<()> {
        self.facts = Some((facts, now_ns()));
        self.write_header(Some(tag))
    }

    /// Do `now` (the database file's facts) prove it unchanged since they were recorded?
    pub fn proves_unchanged(&self, now: &FileFacts) -> bool {
        match &self.facts {
            Some((f, at)) => f == now && f.ctime_ns.max(f.mtime_ns) < at - RACY_NS,
            None => false,
        }
    }

    pub fn remove(spool: &Path) {
        let _ = fs::remove_file(Self::path_in(spool));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_update_and_tag_rules() {
        let dir = std::env::temp_dir().join(format!("walsync-pagemap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let db = dir.join("db");
        let mut bytes = vec![0u8; 4 * 512];
        bytes[600] = 7;
        fs::write(&db, &bytes).unwrap();
        let tag = "ab".repeat(32);
        let mut m = PageMap::build(&dir, &db, 512, &tag).unwrap();
        assert_eq!(m.pages, 4);
        assert!(PageMap::open(&dir, &tag, 512).unwrap().is_some());
        assert!(PageMap::open(&dir, &"cd".repeat(32), 512)
            .unwrap()
            .is_none());
        assert!(PageMap::open(&dir, &tag, 1024).unwrap().is_none());
        m.begin().unwrap();
        assert!(
            PageMap::open(&dir, &tag, 512).unwrap().is_none(),
            "mid-update"
        );
        m.set(6, &page_hash(&[1u8; 512])).unwrap();
        m.resize(6);
        let t2 = "cd".repeat(32);
        m.finish(&t2).unwrap();
        let m2 = PageMap::open(&dir, &t2, 512).unwrap().unwrap();
        assert_eq!(m2.pages, 6);
        let mut all = Vec::new();
        m2.entries().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 6 * 16);
        assert_eq!(&all[16..32], &page_hash(&bytes[512..1024]));
        assert_eq!(&all[80..96], &page_hash(&[1u8; 512]));
        // Facts recorded just now are racy: they prove nothing yet.
        let f = FileFacts::of(&File::open(&db).unwrap()).unwrap();
        let mut m3 = m2;
        m3.record_facts(f, &t2).unwrap();
        assert!(!m3.proves_unchanged(&f));
        let m4 = PageMap::open(&dir, &t2, 512).unwrap().unwrap();
        assert_eq!(m4.facts.map(|x| x.0), Some(f));
        let _ = fs::remove_dir_all(&dir);
    }
}
