//! Bridge segments: what walsync ships when the WAL no longer proves where the chain stands
//! (its frames were checkpointed into the database file and the WAL deleted or restarted before
//! walsync read them, as every connection that opens, writes and closes does).
//!
//! Under a pin at an exact position (read mark `m`), the database's state is the database file
//! overlaid with WAL frames `1..=m`. A checkpoint running meanwhile writes into the file only
//! pages whose newest version is among those frames (it never goes past a reader's mark), so:
//! the pages of the file that differ from the page map (the chain's state), followed by the WAL
//! frames `1..=m`, are exactly what turns the chain's state into the pinned one, whatever a
//! concurrent checkpoint did to the pages it rewrites. That is one bridge segment: a valid
//! standalone WAL (the live WAL's header when `m > 0`, a fresh one otherwise) ending in a commit
//! frame with the database size, so restore and the sqlite3-only manual recovery replay it like
//! any other segment. It starts a new generation and names the object before it, as always.
//!
//! Cost: one sequential read of the database file (none when its recorded facts prove it
//! unchanged) and the changed pages uploaded, never a full copy unless most pages changed.

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::pagemap::{page_hash, PageMap};
use crate::digest::{self, HashingWriter};
use crate::error::{Error, Result};
use crate::wal::header::{MAGIC_LE, WAL_HEADER_LEN};
use crate::wal::reader::{self, WalEnd};
use crate::wal::segment::SegmentWriter;
use crate::wal::{Checksum, FrameHeader, WalHeader};

/// The live WAL to append after the changed pages: file, path, header, last frame to take and
/// the running checksum it must end on.
pub struct Live<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub hdr: WalHeader,
    pub max_frame: u32,
    pub cksum: Checksum,
}

#[derive(Debug)]
pub struct Built {
    /// Pages of the database file that differed from the map.
    pub changed: u32,
    /// Database size in pages after the bridge.
    pub pages: u32,
    /// WAL frames appended after the changed pages, and where the live WAL ends.
    pub wal_frames: u32,
    pub end: Option<WalEnd>,
    /// The segment's header (the live WAL's, or a fresh one), its frame count and running
    /// checksum.
    pub hdr: WalHeader,
    pub frames: u32,
    pub seg_cksum: Checksum,
    pub len: u64,
    pub sha: String,
    /// Bytes of the database file read to prove it.
    pub read: u64,
}

pub enum Outcome {
    /// Nothing differs and the WAL is empty: the chain already is the database's state.
    Unchanged {
        read: u64,
    },
    Built(Built),
    /// So many pages changed that a snapshot is the better object.
    TooLarge {
        changed: u32,
        pages: u32,
    },
}

/// Size in pages of the database file by its header (offset 28, valid when the
/// version-valid-for number at 92 equals the change counter at 24), else by its length.
fn db_pages(db: &File, path: &Path, page_size: u32) -> Result<u32> {
    let len = db
        .metadata()
        .map_err(|e| Error::io("stat database", path, e))?
        .len();
    let by_len = (len / page_size as u64) as u32;
    let mut h = [0u8; 100];
    if len < 100 {
        return Ok(by_len);
    }
    db.read_exact_at(&mut h, 0)
        .map_err(|e| Error::io("read database", path, e))?;
    let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let n = be(28);
    Ok(if n > 0 && be(92) == be(24) && n <= by_len {
        n
    } else {
        by_len
    })
}

/// A fresh WAL header for a bridge that carries no live frames.
fn fresh_header(page_size: u32) -> WalHeader {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let d = Sha256::new()
        .chain_update(nanos.to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    let bytes = {
        let mut b = [0u8; WAL_HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC_LE.to_be_bytes());
        b[4..8].copy_from_slice(&3_007_000u32.to_be_bytes());
        b[8..12].copy_from_slice(&page_size.to_be_bytes());
        b[16..24].copy_from_slice(&d[..8]);
        b
    };
    let h = WalHeader {
        magic: MAGIC_LE,
        page_size,
        seq: 0,
        salt1: u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
        salt2: u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        cksum: Checksum(0, 0),
    };
    WalHeader::parse(&h.encode()).expect("a valid header")
}

/// The bridge segment being written: the spool file, its hash and the segment's framing.
struct Out<'a> {
    path: &'a Path,
    w: HashingWriter<BufWriter<File>>,
    seg: SegmentWriter,
    salts: (u32, u32),
}

impl<'a> Out<'a> {
    fn create(path: &'a Path, hdr: &WalHeader) -> Result<Out<'a>> {
        let f = File::create(path).map_err(|e| Error::io("create spool file", path, e))?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(64 * 1024, f));
        let seg =
            SegmentWriter::new(hdr, &mut w).map_err(|e| Error::io("write spool file", path, e))?;
        Ok(Out {
            path,
            w,
            seg,
            salts: (hdr.salt1, hdr.salt2),
        })
    }

    /// A page of the database file as a frame (`commit`: the database size, on the last).
    fn page(&mut self, pgno: u32, commit: u32, data: &[u8]) -> Result<()> {
        let fh = FrameHeader {
            pgno,
            commit,
            salt1: self.salts.0,
            salt2: self.salts.1,
            cksum: Checksum(0, 0),
        };
        self.frame(&fh, data)
    }

    fn frame(&mut self, fh: &FrameHeader, data: &[u8]) -> Result<()> {
        self.seg
            .frame(&mut self.w, fh, data)
            .map_err(|e| Error::io("write spool file", self.path, e))
    }

    /// Nothing to ship after all: the file goes.
    fn discard(self) {
        let path = self.path;
        drop(self);
        let _ = std::fs::remove_file(path);
    }

    /// Flush it: its length, frames, running checksum and SHA-256.
    fn finish(self) -> Result<(u64, u32, Checksum, String)> {
        let len = self.seg.committed_len;
        debug_assert_eq!(len, self.seg.len);
        let (frames, cksum) = (self.seg.committed_frames, self.seg.cksum());
        let wio = |e| Error::io("write spool file", self.path, e);
        let mut inner = self.w.inner.into_inner().map_err(|e| wio(e.into_error()))?;
        inner.flush().map_err(wio)?;
        Ok((len, frames, cksum, digest::hex(self.w.hasher)))
    }
}

/// What `diff_file` found.
enum Diff {
    /// `changed` pages differ; all but the last are written, the last is held back (without
    /// live frames it becomes the commit frame).
    Done {
        changed: u32,
        read: u64,
        held: Option<(u32, Vec<u8>)>,
    },
    /// More than half the pages differ: a snapshot is the better object.
    TooLarge { changed: u32 },
}

/// Read the database file once, in 64 KiB reads (at least one page: bounded memory whatever
/// the size), and write each page that differs from the map into `out`, setting it in the map.
fn diff_file(
    db: &File,
    db_path: &Path,
    map: &mut PageMap,
    file_pages: u32,
    out: &mut Out<'_>,
) -> Result<Diff> {
    let ps = map.page_size;
    let mut old = map.entries()?;
    let per_read = (65536 / ps).max(1);
    let mut buf = vec![0u8; (per_read * ps) as usize];
    let (mut pgno, mut changed, mut read) = (0u32, 0u32, 0u64);
    let mut held: Option<(u32, Vec<u8>)> = None;
    while pgno < file_pages {
        let n = (file_pages - pgno).min(per_read);
        let bytes = &mut buf[..(n * ps) as usize];
        db.read_exact_at(bytes, pgno as u64 * ps as u64)
            .map_err(|e| Error::io("read database", db_path, e))?;
        read += bytes.len() as u64;
        for page in bytes.chunks(ps as usize) {
            pgno += 1;
            let h = page_hash(page);
            let mut was = [0u8; 16];
            let known = match old.read_exact(&mut was) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => false,
                Err(e) => return Err(Error::io("read page map", db_path, e)),
            };
            if known && was == h {
                continue;
            }
            changed += 1;
            if changed > 16 && changed as u64 * 2 > file_pages as u64 {
                return Ok(Diff::TooLarge { changed });
            }
            if let Some((p, data)) = held.take() {
                out.page(p, 0, &data)?;
            }
            map.set(pgno, &h)?;
            held = Some((pgno, page.to_vec()));
        }
    }
    Ok(Diff::Done {
        changed,
        read,
        held,
    })
}

/// Append the live WAL's frames up to `max_frame` (each set in the map); the WAL must end
/// where the pin said, else it changed under the read (busy: try again).
fn append_live(l: &Live<'_>, map: &mut PageMap, out: &mut Out<'_>) -> Result<WalEnd> {
    let walk = reader::walk(
        l.file,
        l.path,
        &l.hdr,
        reader::start(&l.hdr),
        Some(l.max_frame),
        |_, fh, page| {
            out.frame(fh, page)?;
            map.set(fh.pgno, &page_hash(page))?;
            Ok(())
        },
    )?;
    if walk.end.frame != l.max_frame || walk.end.cksum != l.cksum {
        return Err(Error::Busy {
            what: format!(
                "WAL {} changed while walsync read it (frame {} of {})",
                l.path.display(),
                walk.end.frame,
                l.max_frame
            ),
        });
    }
    map.resize(walk.end.db_pages);
    Ok(walk.end)
}

/// Build the bridge from the map's state to the pinned state into `out` (a spool file).
/// `diff` false: the database file is proven unchanged since the map was last true of it.
/// The map is updated to the pinned state; it matches no tag until the caller `finish`es it.
pub fn build(
    db: &File,
    db_path: &Path,
    map: &mut PageMap,
    live: Option<Live<'_>>,
    diff: bool,
    out: &Path,
) -> Result<Outcome> {
    let ps = map.page_size;
    let file_pages = db_pages(db, db_path, ps)?;
    let hdr = live.as_ref().map_or_else(|| fresh_header(ps), |l| l.hdr);
    map.begin()?;
    let mut o = Out::create(out, &hdr)?;
    let (changed, read, held) = match diff {
        false => (0, 0, None),
        true => match diff_file(db, db_path, map, file_pages, &mut o)? {
            Diff::TooLarge { changed } => {
                o.discard();
                let pages = file_pages;
                return Ok(Outcome::TooLarge { changed, pages });
            }
            Diff::Done {
                changed,
                read,
                held,
            } => (changed, read, held),
        },
    };
    let old_pages = map.pages;
    map.resize(file_pages);
    let (wal_frames, end) = match &live {
        Some(l) => {
            if let Some((p, data)) = held {
                o.page(p, 0, &data)?;
            }
            (l.max_frame, Some(append_live(l, map, &mut o)?))
        }
        // No live WAL: the file's size is final, and the last changed page carries it.
        None => {
            let (p, data) = match held {
                Some(x) => x,
                // Only the size changed: page 1 carries the commit (it holds the size too).
                None if file_pages != old_pages && file_pages > 0 => {
                    let mut p1 = vec![0u8; ps as usize];
                    db.read_exact_at(&mut p1, 0)
                        .map_err(|e| Error::io("read database", db_path, e))?;
                    map.set(1, &page_hash(&p1))?;
                    (1, p1)
                }
                None => {
                    o.discard();
                    return Ok(Outcome::Unchanged { read });
                }
            };
            o.page(p, file_pages, &data)?;
            (0, None)
        }
    };
    let (len, frames, seg_cksum, sha) = o.finish()?;
    Ok(Outcome::Built(Built {
        changed,
        pages: map.pages,
        wal_frames,
        end,
        hdr,
        frames,
        seg_cksum,
        len,
        sha,
        read,
    }))
}
