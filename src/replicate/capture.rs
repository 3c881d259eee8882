//! Capture: committed WAL frames after a position, written into a spooled segment; either a
//! new one, or appended to the newest segment still waiting for upload when the new frames
//! continue it (same generation and WAL cycle, the next frame). A backlog of captures thus
//! merges into one object instead of queueing many: a slow or unreachable store costs fewer
//! requests, not more, and a database's outbox stays a few objects long. The appended
//! segment is still one valid standalone WAL: its frames' checksums continue the chain of the
//! frames before them, and its SHA-256 is carried forward from the saved hash state.
//!
//! Fewer bytes per segment: after a capture, the segment's frames are compacted in place to the
//! newest version of each page, as one transaction ending on the last commit (see `compact`).
//! A segment's boundaries are the points a restore can reach, so the commits inside it need
//! not be replayable one by one. Compaction needs the database size before its first frame:
//! known when the segment continues a WAL cycle (the chain's last commit says it); a segment
//! that begins a cycle keeps its first transaction whole and compacts the rest.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use log::debug;
use sha2::Sha256;

use crate::digest::{self, HashingWriter};
use crate::error::{Error, Result};
use crate::wal::header::{FrameHeader, FRAME_HEADER_LEN};
use crate::wal::reader::{self, WalEnd};
use crate::wal::segment::SegmentWriter;
use crate::wal::{Checksum, WalHeader};

/// A segment's state where compaction starts: after its header (when the database size
/// before its first frame is known) or after its first commit frame.
#[derive(Debug, Clone)]
pub struct Head {
    pub len: u64,
    pub frames: u32,
    pub cksum: Checksum,
    pub hasher: Sha256,
    /// Database size in pages at that point.
    pub db_pages: u32,
}

/// Compaction keeps a page-to-frame map of this many frames at most (~0.3 MB); a longer run
/// of frames after the first commit (a bulk load, which rewrites few pages anyway) is shipped
/// as captured.
const COMPACT_MAX_FRAMES: usize = 16_384;

/// What it takes to append to a pending segment: its place in the chain and its writer state.
#[derive(Debug, Clone)]
pub struct Appendable {
    pub gen: u32,
    pub hdr: WalHeader,
    /// The live WAL's last frame in the segment.
    pub end_frame: u32,
    /// Segment length, frame count and running checksum so far.
    pub len: u64,
    pub frames: u32,
    pub cksum: Checksum,
    /// SHA-256 state over the segment's bytes so far.
    pub hasher: Sha256,
    /// The state after the segment's first commit.
    pub head: Head,
    /// Bytes after the head when compaction last looked at them (0: never). It looks again
    /// once they doubled, so a pending segment that keeps growing (a slow or unreachable
    /// store) is rewritten a bounded number of times per byte, not at every capture.
    pub compacted: u64,
}

impl Appendable {
    /// Do frames from `from_frame` on, in `gen` and WAL cycle `hdr`, continue this segment?
    pub fn continues(&self, gen: u32, hdr: &WalHeader, from_frame: u32) -> bool {
        self.gen == gen && self.hdr.same_wal(hdr) && self.end_frame == from_frame
    }
}

/// Where the frames go.
pub enum Target<'a> {
    New(&'a Path),
    Append(&'a Path, Box<Appendable>),
}

pub struct Captured {
    /// Committed frames captured now, the first one's index in the WAL, and where they end.
    pub frames: u32,
    pub first: u32,
    pub end: WalEnd,
    /// Where this capture's frames begin in the segment file (the header's end for a new one).
    pub start: u64,
    pub sha: String,
    pub appendable: Appendable,
}

/// What a capture saw beyond the last commit it took: frames of a transaction still being
/// written (or rolled back), as (frames after the commit, the last one's index).
pub type Tail = Option<(u32, u32)>;

/// Write the committed frames of `wal` after `from` (up to `limit`) into `target`. `None`
/// when no new commit was found (a new file is removed, an appended one cut back).
pub fn capture(
    wal: &File,
    wal_path: &Path,
    hdr: &WalHeader,
    gen: u32,
    from: WalEnd,
    limit: Option<u32>,
    target: Target<'_>,
) -> Result<(Option<(PathBuf, Captured)>, Tail)> {
    let (path, file, base) = open_target(&target)?;
    let wio = |e| Error::io("write spool file", &path, e);
    let mut out = HashingWriter::new(BufWriter::with_capacity(64 * 1024, file));
    let mut seg = match &base {
        None => SegmentWriter::new(hdr, &mut out).map_err(wio)?,
        Some(a) => {
            out.hasher = a.hasher.clone();
            SegmentWriter::resume(hdr, a.cksum, a.len, a.frames)
        }
    };
    let start = seg.len;
    let frames_before = seg.committed_frames;
    let mut at_commit: Sha256 = out.hasher.clone();
    let mut at_commit_cksum = seg.cksum();
    let mut first = 0;
    // Compaction may start right after the header when the database size before the first
    // frame is known (the capture continues a WAL cycle); else after the first commit.
    let mut head = match &base {
        Some(a) => Some(a.head.clone()),
        None if from.frame > 0 && from.db_pages > 0 => Some(Head {
            len: seg.len,
            frames: 0,
            cksum: seg.cksum(),
            hasher: out.hasher.clone(),
            db_pages: from.db_pages,
        }),
        None => None,
    };
    let walk = reader::walk(wal, wal_path, hdr, from, limit, |i, fh, page| {
        if first == 0 {
            first = i;
        }
        seg.frame(&mut out, fh, page).map_err(wio)?;
        if fh.is_commit() {
            at_commit = out.hasher.clone();
            at_commit_cksum = seg.cksum();
            if head.is_none() {
                head = Some(Head {
                    len: seg.len,
                    frames: seg.frames,
                    cksum: at_commit_cksum,
                    hasher: at_commit.clone(),
                    db_pages: fh.commit,
                });
            }
        }
        Ok(())
    })?;
    let n = seg.committed_frames - frames_before;
    let after_commit = seg.frames - seg.committed_frames;
    let last_commit = if n > 0 { walk.end.frame } else { from.frame };
    let tail = (after_commit > 0).then_some((after_commit, last_commit + after_commit));
    let w = out
        .inner
        .into_inner()
        .map_err(|e| Error::io("write spool file", &path, e.into_error()))?;
    let taken = Taken {
        frames: n,
        first,
        end: walk.end,
        start,
        len: seg.committed_len,
        total_frames: seg.committed_frames,
        cksum: at_commit_cksum,
        hasher: at_commit,
        head,
    };
    let captured = seal(w, &path, base.as_ref(), gen, hdr, taken)?;
    Ok((captured.map(|c| (path, c)), tail))
}

/// What a walk took into the spool file, up to its last commit.
struct Taken {
    /// Committed frames captured by this walk.
    frames: u32,
    first: u32,
    end: WalEnd,
    /// Where this walk's frames begin in the spool file.
    start: u64,
    /// The file's length, frames and running checksum and hash at the last commit.
    len: u64,
    total_frames: u32,
    cksum: Checksum,
    hasher: Sha256,
    head: Option<Head>,
}

/// The spool file after a walk: cut back to its last commit, flushed and compacted, and the
/// capture's record; with no commit, removed (a new file) or cut back to what it held before
/// (an appended one), and None.
fn seal(
    mut w: File,
    path: &Path,
    base: Option<&Appendable>,
    gen: u32,
    hdr: &WalHeader,
    t: Taken,
) -> Result<Option<Captured>> {
    let wio = |e| Error::io("write spool file", path, e);
    if t.frames == 0 {
        match base {
            None => {
                drop(w);
                let _ = std::fs::remove_file(path);
            }
            Some(a) => w.set_len(a.len).map_err(wio)?,
        }
        return Ok(None);
    }
    w.set_len(t.len).map_err(wio)?;
    w.flush().map_err(wio)?;
    let head = t.head.expect("a capture with a commit has a first commit");
    let mut appendable = Appendable {
        gen,
        hdr: *hdr,
        end_frame: t.end.frame,
        len: t.len,
        frames: t.total_frames,
        cksum: t.cksum,
        hasher: t.hasher,
        head,
        compacted: base.map_or(0, |a| a.compacted),
    };
    let mut start = t.start;
    if compact(&w, path, &mut appendable)? {
        // The frames after the head were rewritten: the page map reads them again.
        start = start.min(appendable.head.len);
    }
    Ok(Some(Captured {
        frames: t.frames,
        first: t.first,
        end: t.end,
        start,
        sha: digest::hex(appendable.hasher.clone()),
        appendable,
    }))
}

/// Open the file a capture writes: a new one, or a pending segment cut back to its last commit
/// and positioned there (with its writer state).
fn open_target(target: &Target<'_>) -> Result<(PathBuf, File, Option<Appendable>)> {
    Ok(match target {
        Target::New(p) => (
            p.to_path_buf(),
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(|e| Error::io("create spool file", p, e))?,
            None,
        ),
        Target::Append(p, a) => {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| Error::io("open spool file", p, e))?;
            f.set_len(a.len)
                .and_then(|_| f.seek(SeekFrom::Start(a.len)))
                .map_err(|e| Error::io("write spool file", p, e))?;
            (p.to_path_buf(), f, Some(a.as_ref().clone()))
        }
    })
}

/// Compact the frames of segment file `f` after its head to the newest version of each
/// page, in place, as one transaction ending on its last commit; `seg` is updated to the new
/// length, frame count, checksum and hash. Returns whether anything was rewritten.
///
/// Replaying the result reaches the same database as replaying every commit, provided no
/// commit shrinks the database (a shrink then a regrowth zero-fills pages the kept versions
/// would hide), so a run with a shrinking commit is left as it is. Kept frames only move
/// towards the start of the file, so a frame is always read before anything overwrites it.
/// A crash halfway leaves a spool file that the next start removes (see `spool`).
fn compact(f: &File, path: &Path, seg: &mut Appendable) -> Result<bool> {
    let flen = seg.hdr.frame_len();
    let head = &seg.head;
    let region = seg.len - head.len;
    let n = (region / flen) as usize;
    if !(2..=COMPACT_MAX_FRAMES).contains(&n) || region < 2 * seg.compacted {
        return Ok(false);
    }
    seg.compacted = region;
    let rio = |e| Error::io("read spool file", path, e);
    let mut fh_buf = [0u8; FRAME_HEADER_LEN];
    // Pass 1: the last frame of each page, and whether any commit shrinks the database.
    let mut last: HashMap<u32, u32> = HashMap::with_capacity(n);
    let mut size = head.db_pages;
    for k in 0..n {
        f.read_exact_at(&mut fh_buf, head.len + k as u64 * flen)
            .map_err(rio)?;
        let fh = FrameHeader::parse(&fh_buf);
        if fh.is_commit() {
            if fh.commit < size {
                debug!(
                    "{} not compacted: a commit shrinks the database from {size} to {} pages",
                    path.display(),
                    fh.commit
                );
                return Ok(false);
            }
            size = fh.commit;
        }
        last.insert(fh.pgno, k as u32);
    }
    if last.len() == n {
        return Ok(false);
    }
    // Pass 2: rewrite the kept frames with the segment's checksum chain continued.
    let mut w = SegmentWriter::resume(&seg.hdr, head.cksum, head.len, head.frames);
    let mut hasher = head.hasher.clone();
    let mut frame = vec![0u8; flen as usize];
    let mut out = Vec::with_capacity(flen as usize);
    for k in 0..n {
        f.read_exact_at(&mut frame, head.len + k as u64 * flen)
            .map_err(rio)?;
        let mut fh = FrameHeader::parse(&frame[..FRAME_HEADER_LEN]);
        if last.get(&fh.pgno) != Some(&(k as u32)) {
            continue;
        }
        if k + 1 < n {
            fh.commit = 0;
        }
        out.clear();
        let at = w.len;
        w.frame(&mut out, &fh, &frame[FRAME_HEADER_LEN..])
            .map_err(|e| Error::io("write spool file", path, e))?;
        f.write_all_at(&out, at)
            .map_err(|e| Error::io("write spool file", path, e))?;
        sha2::Digest::update(&mut hasher, &out);
    }
    f.set_len(w.len)
        .map_err(|e| Error::io("write spool file", path, e))?;
    debug!(
        "{} compacted: {n} frames after the first commit to {}",
        path.display(),
        w.frames - head.frames
    );
    seg.len = w.len;
    seg.compacted = w.len - head.len;
    seg.frames = w.frames;
    seg.cksum = w.cksum();
    seg.hasher = hasher;
    Ok(true)
}
