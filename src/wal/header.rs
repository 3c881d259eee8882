//! The 32-byte WAL header and the 24-byte frame header (SQLite file format, section 4.1-4.3).
//! All fields are big-endian u32. A header is valid only if its own checksum (over its first 24
//! bytes) matches; frames are valid only if their salts equal the header's and their cumulative
//! checksum matches.

use super::checksum::{checksum, Checksum};

pub const WAL_HEADER_LEN: usize = 32;
pub const FRAME_HEADER_LEN: usize = 24;
pub const MAGIC_LE: u32 = 0x377f_0682;
pub const MAGIC_BE: u32 = 0x377f_0683;
pub const WAL_VERSION: u32 = 3_007_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub magic: u32,
    pub page_size: u32,
    pub seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub cksum: Checksum,
}

fn be(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl WalHeader {
    /// Parse and validate a header; the error says which field is wrong.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < WAL_HEADER_LEN {
            return Err(format!("header is {} bytes, want 32", b.len()));
        }
        let magic = be(b, 0);
        if magic != MAGIC_LE && magic != MAGIC_BE {
            return Err(format!("bad magic {magic:#010x}"));
        }
        let version = be(b, 4);
        if version != WAL_VERSION {
            return Err(format!("unsupported WAL format version {version}"));
        }
        let page_size = be(b, 8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("bad page size {page_size}"));
        }
        let h = WalHeader {
            magic,
            page_size,
            seq: be(b, 12),
            salt1: be(b, 16),
            salt2: be(b, 20),
            cksum: Checksum(be(b, 24), be(b, 28)),
        };
        let want = checksum(h.big_endian(), &b[..24], Checksum(0, 0));
        if want != h.cksum {
            return Err("header checksum mismatch".into());
        }
        Ok(h)
    }

    /// Checksums are computed on big-endian words when the magic's low bit is set.
    pub fn big_endian(&self) -> bool {
        self.magic & 1 == 1
    }

    /// The header's 32 bytes, with its checksum recomputed from the first 24.
    pub fn encode(&self) -> [u8; WAL_HEADER_LEN] {
        let mut b = [0u8; WAL_HEADER_LEN];
        for (i, v) in [
            self.magic,
            WAL_VERSION,
            self.page_size,
            self.seq,
            self.salt1,
            self.salt2,
        ]
        .iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        let c = checksum(self.big_endian(), &b[..24], Checksum(0, 0));
        b[24..28].copy_from_slice(&c.0.to_be_bytes());
        b[28..32].copy_from_slice(&c.1.to_be_bytes());
        b
    }

    /// True when `self` is the header SQLite writes when it restarts (or after TRUNCATE
    /// re-creates) the WAL that had header `prev`: salt-1 + 1, same page size and byte order.
    /// Not the checkpoint sequence: SQLite writes the restarting *connection's* own counter
    /// there, so with several connections it goes 1, 2, 1, 3 ...; salt-1 is read from the
    /// shared wal-index and grows by one at every restart, whoever restarts.
    pub fn is_restart_of(&self, prev: &WalHeader) -> bool {
        self.salt1 == prev.salt1.wrapping_add(1)
            && self.page_size == prev.page_size
            && self.magic == prev.magic
    }

    pub fn same_wal(&self, other: &WalHeader) -> bool {
        self.salt1 == other.salt1 && self.salt2 == other.salt2 && self.seq == other.seq
    }

    /// Byte offset of frame `n` (1-based) in a WAL with this page size.
    pub fn frame_offset(&self, n: u32) -> u64 {
        WAL_HEADER_LEN as u64 + (n as u64 - 1) * self.frame_len()
    }

    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.page_size as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    /// Database size in pages after this commit; 0 for frames that are not a commit.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub cksum: Checksum,
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> Self {
        FrameHeader {
            pgno: be(b, 0),
            commit: be(b, 4),
            salt1: be(b, 8),
            salt2: be(b, 12),
            cksum: Checksum(be(b, 16), be(b, 20)),
        }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        let v = [
            self.pgno,
            self.commit,
            self.salt1,
            self.salt2,
            self.cksum.0,
            self.cksum.1,
        ];
        for (i, x) in v.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
        }
        b
    }

    /// Validate this frame against its WAL header and the running checksum before it; returns
    /// the running checksum after it, or why it is not a valid frame.
    pub fn verify(
        &self,
        hdr: &WalHeader,
        prev: Checksum,
        raw_header: &[u8],
        page: &[u8],
    ) -> Result<Checksum, &'static str> {
        if self.salt1 != hdr.salt1 || self.salt2 != hdr.salt2 {
            return Err("frame salt does not match the WAL header");
        }
        if self.pgno == 0 {
            return Err("frame page number is 0");
        }
        let c = checksum(hdr.big_endian(), &raw_header[..8], prev);
        let c = checksum(hdr.big_endian(), page, c);
        if c != self.cksum {
            return Err("frame checksum mismatch");
        }
        Ok(c)
    }

    pub fn is_commit(&self) -> bool {
        self.commit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_restart_rule() {
        for magic in [MAGIC_LE, MAGIC_BE] {
            let mut h = WalHeader {
                magic,
                page_size: 4096,
                seq: 7,
                salt1: u32::MAX,
                salt2: 9,
                cksum: Checksum(0, 0),
            };
            let bytes = h.encode();
            let got = WalHeader::parse(&bytes).expect("valid");
            h.cksum = got.cksum;
            assert_eq!(got, h);
            let mut next = h;
            next.seq = 8;
            next.salt1 = 0;
            next.salt2 = 1234;
            assert!(next.is_restart_of(&h));
            assert!(!h.is_restart_of(&next));
            // Another connection restarting writes its own checkpoint counter.
            next.seq = 1;
            assert!(next.is_restart_of(&h));
            let mut bad = bytes;
            bad[13] ^= 1;
            assert_eq!(
                WalHeader::parse(&bad),
                Err("header checksum mismatch".into())
            );
        }
    }

    #[test]
    fn header_rejects_bad_fields() {
        let h = WalHeader {
            magic: MAGIC_LE,
            page_size: 1024,
            seq: 0,
            salt1: 1,
            salt2: 2,
            cksum: Checksum(0, 0),
        };
        let cases: [(usize, u32, &str); 3] = [
            (0, 0xdead_beef, "bad magic"),
            (4, 3_007_001, "unsupported WAL format version"),
            (8, 1000, "bad page size"),
        ];
        for (off, val, want) in cases {
            let mut b = h.encode();
            b[off..off + 4].copy_from_slice(&val.to_be_bytes());
            let got = WalHeader::parse(&b).unwrap_err();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }
}
