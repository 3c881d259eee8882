//! Optional compression of WAL segments (`compression = "lz4"`, `--compression lz4`).
//!
//! A compressed segment is the same standalone WAL file in the standard LZ4 frame format, under
//! the segment's key with `.lz4` appended (`<gen>-<time>.wal.lz4`), so that the manual recovery
//! stays two commands: `lz4 -d <key> <db>-wal`, then `sqlite3 <db> 'PRAGMA
//! wal_checkpoint(TRUNCATE)'`. Snapshots stay plain database files. The object's `sha256` is
//! that of the stored (compressed) bytes, as for every object; `wal-sha256` is that of the
//! WAL inside, which is what the chain links (`prev`) name, so that a chain may mix
//! compressed and plain segments and a segment's link does not depend on how the one before
//! it was stored. Segments are compressed at upload time from the spool file, in bounded
//! chunks (64 KiB blocks), into a temporary file beside it.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::digest::{self, HashingWriter};
use crate::error::{Error, Result};

/// How segments are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain WAL files (the default: `sqlite3` alone recovers them).
    #[default]
    None,
    /// LZ4 frames.
    Lz4,
}

/// The key suffix of an LZ4-compressed segment.
pub const LZ4_SUFFIX: &str = ".lz4";

impl Compression {
    /// `none` or `lz4`, as the command line and the config file write it.
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "none" => Some(Compression::None),
            "lz4" => Some(Compression::Lz4),
            _ => None,
        }
    }
}

/// Whether the segment stored under `key` is compressed.
pub fn is_compressed(key: &str) -> bool {
    key.ends_with(LZ4_SUFFIX)
}

/// Compress the file `src` into `dst` (created or truncated). Returns the compressed length
/// and its SHA-256 (hex).
pub fn compress_file(src: &Path, dst: &Path) -> Result<(u64, String)> {
    let mut input = File::open(src).map_err(|e| Error::io("open spool file", src, e))?;
    let len = input
        .metadata()
        .map_err(|e| Error::io("read spool file", src, e))?
        .len();
    let out = File::create(dst).map_err(|e| Error::io("create spool file", dst, e))?;
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Linked)
        .content_size(Some(len));
    let mut enc = FrameEncoder::with_frame_info(info, HashingWriter::new(BufWriter::new(out)));
    io::copy(&mut input, &mut enc).map_err(|e| Error::io("compress spool file", dst, e))?;
    let mut w = enc
        .finish()
        .map_err(|e| Error::io("compress spool file", dst, io::Error::other(e)))?;
    w.flush()
        .map_err(|e| Error::io("write spool file", dst, e))?;
    let file = w
        .inner
        .into_inner()
        .map_err(|e| Error::io("write spool file", dst, e.into_error()))?;
    let n = file
        .metadata()
        .map_err(|e| Error::io("write spool file", dst, e))?
        .len();
    Ok((n, digest::hex(w.hasher)))
}

/// The decompressed stream of an LZ4 frame read from `r`.
pub fn decoder<R: Read>(r: R) -> FrameDecoder<R> {
    FrameDecoder::new(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("walsync-lz4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("a.wal"), dir.join("a.wal.lz4"));
        // Pages of rows: repetitive, as SQLite pages are, and longer than one block.
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("row {} value {}\n", i, i % 97).into_bytes())
            .collect();
        std::fs::write(&src, &data).unwrap();
        let (n, sha) = compress_file(&src, &dst).unwrap();
        let stored = std::fs::read(&dst).unwrap();
        assert_eq!(n, stored.len() as u64);
        assert!(n * 2 < data.len() as u64, "{n} of {}", data.len());
        assert_eq!(sha, digest::file_sha256(&dst).unwrap());
        let mut back = Vec::new();
        decoder(&stored[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        // A damaged frame is an error, never other bytes.
        let mut bad = stored.clone();
        bad[40] ^= 0xff;
        let mut out = Vec::new();
        let r = decoder(&bad[..]).read_to_end(&mut out);
        assert!(r.is_err() || out != data);
        assert_eq!(Compression::parse("lz4"), Some(Compression::Lz4));
        assert_eq!(Compression::parse("zstd"), None);
        assert!(is_compressed("ns/wal/00000001-20261122000405123.wal.lz4"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
