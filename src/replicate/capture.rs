//! Capture: committed WAL frames after a position, written into a spooled segment; either a
//! new one, or appended to the newest segment still waiting for upload when the new frames
//! continue it (same generation and WAL cycle, the next frame). A backlog of captures thus
//! merges into one object instead of queueing many: a slow or unreachable store costs fewer
//! requests, not more, and a database's outbox stays a few objects long. The appended
//! segment is still one valid standalone WAL: its frames' checksums continue the chain of the
//! frames before them, and its SHA-256 is carried forward from the saved hash state.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::Sha256;

use crate::digest::{self, HashingWriter};
use crate::error::{Error, Result};
use crate::wal::reader::{self, WalEnd};
use crate::wal::segment::SegmentWriter;
use crate::wal::{Checksum, WalHeader};

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
    Append(&'a Path, Appendable),
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
    let (path, file, base) = match &target {
        Target::New(p) => (
            p.to_path_buf(),
            File::create(p).map_err(|e| Error::io("create spool file", p, e))?,
            None,
        ),
        Target::Append(p, a) => {
            let mut f = OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| Error::io("open spool file", p, e))?;
            f.set_len(a.len)
                .and_then(|_| f.seek(SeekFrom::Start(a.len)))
                .map_err(|e| Error::io("write spool file", p, e))?;
            (p.to_path_buf(), f, Some(a.clone()))
        }
    };
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
    let walk = reader::walk(wal, wal_path, hdr, from, limit, |i, fh, page| {
        if first == 0 {
            first = i;
        }
        seg.frame(&mut out, fh, page).map_err(wio)?;
        if fh.is_commit() {
            at_commit = out.hasher.clone();
            at_commit_cksum = seg.cksum();
        }
        Ok(())
    })?;
    let n = seg.committed_frames - frames_before;
    let after_commit = seg.frames - seg.committed_frames;
    let last_commit = if n > 0 { walk.end.frame } else { from.frame };
    let tail = (after_commit > 0).then_some((after_commit, last_commit + after_commit));
    let mut w = out
        .inner
        .into_inner()
        .map_err(|e| Error::io("write spool file", &path, e.into_error()))?;
    if n == 0 {
        match &base {
            None => {
                drop(w);
                let _ = std::fs::remove_file(&path);
            }
            Some(a) => w.set_len(a.len).map_err(wio)?,
        }
        return Ok((None, tail));
    }
    w.set_len(seg.committed_len).map_err(wio)?;
    w.flush().map_err(wio)?;
    let appendable = Appendable {
        gen,
        hdr: *hdr,
        end_frame: walk.end.frame,
        len: seg.committed_len,
        frames: seg.committed_frames,
        cksum: at_commit_cksum,
        hasher: at_commit.clone(),
    };
    Ok((
        Some((
            path,
            Captured {
                frames: n,
                first,
                end: walk.end,
                start,
                sha: digest::hex(at_commit),
                appendable,
            },
        )),
        tail,
    ))
}
