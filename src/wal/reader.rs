//! Reading a live WAL file: its header, and its valid frames from a known position onward.
//!
//! Invariants: a frame is accepted only if its salts match the header and its cumulative
//! checksum continues from the previous frame's; reading stops at the first frame that fails
//! (a torn write, an uncommitted tail from a rolled-back transaction, or stale frames of an
//! earlier WAL cycle). Only frames up to the last *commit* frame are ever reported as shippable.
//! Memory: one frame buffer (<= 64 KiB + 24 bytes), whatever the WAL size.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::checksum::Checksum;
use super::header::{FrameHeader, WalHeader, FRAME_HEADER_LEN, WAL_HEADER_LEN};
use crate::error::{Error, Result};

/// A position in a WAL: the last committed frame read and the running checksum after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalEnd {
    /// Index (1-based) of the last commit frame; 0 when there is none.
    pub frame: u32,
    pub cksum: Checksum,
    /// Database size in pages after that commit (0 when `frame` is 0).
    pub db_pages: u32,
}

/// Read the header of the WAL at `path`. `Ok(None)` when the file is missing, shorter than a
/// header, or holds an invalid header: SQLite treats all three as an empty WAL.
pub fn read_header(path: &Path) -> Result<Option<(File, WalHeader)>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open WAL", path, e)),
    };
    let mut b = [0u8; WAL_HEADER_LEN];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("read WAL", path, e)),
    }
    Ok(WalHeader::parse(&b).ok().map(|h| (f, h)))
}

/// What one walk over frames saw.
#[derive(Debug, Clone, Copy)]
pub struct Walk {
    /// The last commit frame reached (or the starting position if none was).
    pub end: WalEnd,
    /// Why the walk stopped early, when it was not end of file or the limit.
    pub stop: Option<&'static str>,
    /// Valid frames read after `from` (committed or not).
    pub frames: u32,
}

/// Walk valid frames after `from` (frame `from.frame` already read, running checksum
/// `from.cksum`), calling `sink` for each, up to and including frame `limit` when given.
/// `sink` also sees frames of a transaction that never commits: callers that persist frames
/// must cut back to the last commit (see `segment::SegmentWriter`).
pub fn walk(
    f: &File,
    path: &Path,
    hdr: &WalHeader,
    from: WalEnd,
    limit: Option<u32>,
    mut sink: impl FnMut(u32, &FrameHeader, &[u8]) -> Result<()>,
) -> Result<Walk> {
    let flen = hdr.frame_len() as usize;
    let mut buf = vec![0u8; flen];
    let mut end = from;
    let mut n = from.frame;
    let mut cksum = from.cksum;
    loop {
        if limit.is_some_and(|l| n >= l) {
            return Ok(Walk {
                end,
                stop: None,
                frames: n - from.frame,
            });
        }
        let idx = n + 1;
        match f.read_exact_at(&mut buf, hdr.frame_offset(idx)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Ok(Walk {
                    end,
                    stop: None,
                    frames: n - from.frame,
                })
            }
            Err(e) => return Err(Error::io("read WAL", path, e)),
        }
        let fh = FrameHeader::parse(&buf[..FRAME_HEADER_LEN]);
        match fh.verify(
            hdr,
            cksum,
            &buf[..FRAME_HEADER_LEN],
            &buf[FRAME_HEADER_LEN..],
        ) {
            Ok(c) => cksum = c,
            Err(why) => {
                return Ok(Walk {
                    end,
                    stop: Some(why),
                    frames: n - from.frame,
                })
            }
        }
        sink(idx, &fh, &buf[FRAME_HEADER_LEN..])?;
        n = idx;
        if fh.is_commit() {
            end = WalEnd {
                frame: idx,
                cksum,
                db_pages: fh.commit,
            };
        }
    }
}

/// The start of a WAL: before frame 1, the running checksum is the header's.
pub fn start(hdr: &WalHeader) -> WalEnd {
    WalEnd {
        frame: 0,
        cksum: hdr.cksum,
        db_pages: 0,
    }
}

/// Does the WAL still hold, unchanged, the frames up to `pos`? True when commit frame
/// `pos.frame` is reachable from the header through valid frames with running checksum
/// `pos.cksum`: the proof that nothing we shipped was rewritten.
pub fn holds(f: &File, path: &Path, hdr: &WalHeader, pos: &WalEnd) -> Result<bool> {
    if pos.frame == 0 {
        return Ok(true);
    }
    let w = walk(f, path, hdr, start(hdr), Some(pos.frame), |_, _, _| Ok(()))?;
    Ok(w.end.frame == pos.frame && w.end.cksum == pos.cksum)
}

/// What the file still holds of an old WAL cycle after a restart (see `old_end`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OldEnd {
    /// Frame `pos.frame` is still there as shipped (same salts, same running checksum, a
    /// commit), both before and after the frames after it were read.
    pub intact: bool,
    /// The last commit frame of the old cycle after ours, if any is still in the file.
    pub last: Option<WalEnd>,
    /// The old cycle provably ended where the frames stop: at a whole frame that does not
    /// continue it, or at the end of the file on a frame boundary. Not after a partial frame
    /// (`journal_size_limit` cuts a WAL in the middle of a frame).
    pub proven: bool,
}

/// After a restart, what the file still holds of the old cycle `hdr` from our last frame
/// `pos` on. SQLite writes every cycle from frame 1 forward and a restart only rewrites the
/// header, so the old cycle's last frames stay in the file until the new cycle reaches
/// them; and the new cycle can reach a frame after ours only by first rewriting ours. Hence
/// frame `pos` read unchanged *after* the frames following it proves those frames are the
/// old cycle's own, and that the first frame that does not continue them is where the old
/// cycle ended (as SQLite's own recovery decides). The one case this cannot tell: a
/// `journal_size_limit` cut landing exactly on a frame boundary inside those frames.
pub fn old_end(f: &File, path: &Path, hdr: &WalHeader, pos: &WalEnd) -> Result<OldEnd> {
    let mut out = OldEnd::default();
    if pos.frame == 0 || !frame_is(f, path, hdr, pos)? {
        return Ok(out);
    }
    let w = walk(f, path, hdr, *pos, None, |_, _, _| Ok(()))?;
    let frames = w.frames;
    let next = hdr.frame_offset(pos.frame + frames + 1);
    let len = f
        .metadata()
        .map_err(|e| Error::io("stat WAL", path, e))?
        .len();
    out.proven = w.stop.is_some() || len == next;
    out.last = (w.end.frame > pos.frame).then_some(w.end);
    out.intact = frame_is(f, path, hdr, pos)?;
    Ok(out)
}

/// Is commit frame `pos.frame` in the file as shipped?
fn frame_is(f: &File, path: &Path, hdr: &WalHeader, pos: &WalEnd) -> Result<bool> {
    let mut b = [0u8; FRAME_HEADER_LEN];
    match f.read_exact_at(&mut b, hdr.frame_offset(pos.frame)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(Error::io("read WAL", path, e)),
    }
    let fh = FrameHeader::parse(&b);
    Ok(fh.salt1 == hdr.salt1 && fh.salt2 == hdr.salt2 && fh.cksum == pos.cksum && fh.is_commit())
}
