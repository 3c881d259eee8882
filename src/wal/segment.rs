//! Segments: standalone WAL files holding whole committed transactions (SPEC section 3).
//!
//! A segment's header is the source WAL's header (same magic, page size, sequence and salts; its
//! checksum depends on those alone), and its frames are the source frames with cumulative
//! checksums recomputed from that header, so `sqlite3` accepts the segment as a WAL on its own.
//! The writer keeps the file cut at the last commit frame; the reader validates every byte.

use std::io::{Read, Write};

use super::checksum::{checksum, Checksum};
use super::header::{FrameHeader, WalHeader, FRAME_HEADER_LEN, WAL_HEADER_LEN};

/// Builds a segment into any writer; tracks where the last commit ends so the caller can cut
/// an uncommitted tail off the file.
pub struct SegmentWriter {
    hdr: WalHeader,
    /// Running checksum after the last frame written (the segment's own chain).
    cksum: Checksum,
    /// Bytes written so far.
    pub len: u64,
    /// Bytes up to and including the last commit frame.
    pub committed_len: u64,
    /// Frames written so far, and up to and including the last commit frame.
    pub frames: u32,
    pub committed_frames: u32,
}

impl SegmentWriter {
    pub fn new(hdr: &WalHeader, out: &mut impl Write) -> std::io::Result<Self> {
        let bytes = hdr.encode();
        out.write_all(&bytes)?;
        let h = WalHeader::parse(&bytes).expect("encode produces a valid header");
        Ok(SegmentWriter {
            hdr: h,
            cksum: h.cksum,
            len: WAL_HEADER_LEN as u64,
            committed_len: WAL_HEADER_LEN as u64,
            frames: 0,
            committed_frames: 0,
        })
    }

    /// Continue a segment that already holds `frames` frames in `len` bytes, ending on a
    /// commit with running checksum `cksum` (appending to a pending segment).
    pub fn resume(hdr: &WalHeader, cksum: Checksum, len: u64, frames: u32) -> Self {
        let h = WalHeader::parse(&hdr.encode()).expect("encode produces a valid header");
        SegmentWriter {
            hdr: h,
            cksum,
            len,
            committed_len: len,
            frames,
            committed_frames: frames,
        }
    }

    /// The running checksum after the last frame written.
    pub fn cksum(&self) -> Checksum {
        self.cksum
    }

    pub fn frame(
        &mut self,
        out: &mut impl Write,
        src: &FrameHeader,
        page: &[u8],
    ) -> std::io::Result<()> {
        let mut fh = FrameHeader {
            cksum: Checksum(0, 0),
            ..*src
        };
        let raw = fh.encode();
        let c = checksum(self.hdr.big_endian(), &raw[..8], self.cksum);
        self.cksum = checksum(self.hdr.big_endian(), page, c);
        fh.cksum = self.cksum;
        out.write_all(&fh.encode())?;
        out.write_all(page)?;
        self.len += (FRAME_HEADER_LEN + page.len()) as u64;
        self.frames += 1;
        if fh.is_commit() {
            self.committed_len = self.len;
            self.committed_frames = self.frames;
        }
        Ok(())
    }
}

/// Reads a segment from a stream, validating header, salts, checksum chain and that it ends on
/// a commit frame, handing each frame to `apply`. Returns the header and the number of frames.
pub fn read_segment(
    r: &mut impl Read,
    mut apply: impl FnMut(&FrameHeader, &[u8]) -> std::io::Result<()>,
) -> Result<(WalHeader, u32), String> {
    let mut hb = [0u8; WAL_HEADER_LEN];
    r.read_exact(&mut hb)
        .map_err(|e| format!("reading header: {e}"))?;
    let hdr = WalHeader::parse(&hb)?;
    let mut buf = vec![0u8; hdr.frame_len() as usize];
    let mut cksum = hdr.cksum;
    let mut n = 0u32;
    let mut last_commit = true;
    loop {
        let got = read_full(r, &mut buf).map_err(|e| format!("reading frame {}: {e}", n + 1))?;
        if got == 0 {
            break;
        }
        if got < buf.len() {
            return Err(format!(
                "frame {} is torn ({got} of {} bytes)",
                n + 1,
                buf.len()
            ));
        }
        let fh = FrameHeader::parse(&buf[..FRAME_HEADER_LEN]);
        cksum = fh
            .verify(
                &hdr,
                cksum,
                &buf[..FRAME_HEADER_LEN],
                &buf[FRAME_HEADER_LEN..],
            )
            .map_err(|e| format!("frame {}: {e}", n + 1))?;
        apply(&fh, &buf[FRAME_HEADER_LEN..])
            .map_err(|e| format!("applying frame {}: {e}", n + 1))?;
        n += 1;
        last_commit = fh.is_commit();
    }
    if n == 0 {
        return Err("segment holds no frames".into());
    }
    if !last_commit {
        return Err(format!(
            "segment ends with frame {n}, which is not a commit frame"
        ));
    }
    Ok((hdr, n))
}

/// Fill `buf` as far as the stream allows; returns bytes read (less than `buf.len()` at EOF).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
