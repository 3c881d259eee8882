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
    let final_pages = match &live {
        Some(_) => None, // the live WAL's last commit says
        None => Some(file_pages),
    };
    map.begin()?;
    let f = File::create(out).map_err(|e| Error::io("create spool file", out, e))?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(64 * 1024, f));
    let wio = |e| Error::io("write spool file", out, e);
    let mut seg = SegmentWriter::new(&hdr, &mut w).map_err(wio)?;
    let frame = |pgno: u32, commit: u32| FrameHeader {
        pgno,
        commit,
        salt1: hdr.salt1,
        salt2: hdr.salt2,
        cksum: Checksum(0, 0),
    };
    let mut changed = 0u32;
    let mut read = 0u64;
    // The last changed page is held back: without live frames it becomes the commit frame.
    let mut held: Option<(u32, Vec<u8>)> = None;
    if diff {
        let mut old = map.entries()?;
        // 64 KiB reads (at least one page): bounded memory per proof, whatever the size.
        let per_read = (65536 / ps).max(1);
        let mut buf = vec![0u8; (per_read * ps) as usize];
        let mut pgno = 0u32;
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
                    drop(w);
                    let _ = std::fs::remove_file(out);
                    return Ok(Outcome::TooLarge {
                        changed,
                        pages: file_pages,
                    });
                }
                if let Some((p, data)) = held.take() {
                    seg.frame(&mut w, &frame(p, 0), &data).map_err(wio)?;
                }
                map.set(pgno, &h)?;
                held = Some((pgno, page.to_vec()));
            }
        }
    }
    let old_pages = map.pages;
    map.resize(file_pages);
    let mut end = None;
    let mut wal_frames = 0;
    match (&live, final_pages) {
        (Some(l), _) => {
            if let Some((p, data)) = held.take() {
                seg.frame(&mut w, &frame(p, 0), &data).map_err(wio)?;
            }
            let walk = reader::walk(
                l.file,
                l.path,
                &l.hdr,
                reader::start(&l.hdr),
                Some(l.max_frame),
                |_, fh, page| {
                    seg.frame(&mut w, fh, page).map_err(wio)?;
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
            wal_frames = l.max_frame;
            end = Some(walk.end);
        }
        (None, Some(pages)) => {
            let (p, data) = match held.take() {
                Some(x) => x,
                // Only the size changed: page 1 carries the commit (it holds the size too).
                None if pages != old_pages && pages > 0 => {
                    let mut p1 = vec![0u8; ps as usize];
                    db.read_exact_at(&mut p1, 0)
                        .map_err(|e| Error::io("read database", db_path, e))?;
                    map.set(1, &page_hash(&p1))?;
                    (1, p1)
                }
                None => {
                    drop(w);
                    let _ = std::fs::remove_file(out);
                    return Ok(Outcome::Unchanged { read });
                }
            };
            seg.frame(&mut w, &frame(p, pages), &data).map_err(wio)?;
        }
        (None, None) => unreachable!("no live WAL means the file's size is final"),
    }
    let committed = seg.committed_len;
    debug_assert_eq!(committed, seg.len);
    let (frames, seg_cksum) = (seg.committed_frames, seg.cksum());
    let mut inner = w
        .inner
        .into_inner()
        .map_err(|e| Error::io("write spool file", out, e.into_error()))?;
    inner.flush().map_err(wio)?;
    let sha = digest::hex(w.hasher);
    Ok(Outcome::Built(Built {
        changed,
        pages: map.pages,
        wal_frames,
        end,
        hdr,
        frames,
        seg_cksum,
        len: committed,
        sha,
        read,
    }))
}
