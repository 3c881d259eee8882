//! The database file itself: its header (SQLite file format section 1.3) and the names of the
//! files SQLite keeps beside it. The only code that reads the header or builds a `-wal` name.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The first 16 bytes of every SQLite database.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Bytes of the database header.
pub const HEADER_LEN: usize = 100;

/// `<db>` + `suffix`: `-wal`, `-shm`, `-journal`.
pub fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The database's `-wal`.
pub fn wal_path(db: &Path) -> PathBuf {
    beside(db, "-wal")
}

/// The database's `-shm` (the wal-index).
pub fn shm_path(db: &Path) -> PathBuf {
    beside(db, "-shm")
}

/// What the header says, for the checks walsync makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    /// File format read/write versions are both 2: WAL mode.
    pub wal_mode: bool,
}

impl Header {
    /// Parse a database header; `None` when it is not one (too short, wrong magic).
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN || &b[..16] != MAGIC {
            return None;
        }
        Some(Header {
            page_size: page_size_of(u16::from_be_bytes([b[16], b[17]])),
            wal_mode: b[18] == 2 && b[19] == 2,
        })
    }
}

/// The header's page-size field: bytes, with 1 meaning 65536.
fn page_size_of(v: u16) -> u32 {
    if v == 1 {
        65536
    } else {
        v as u32
    }
}

/// Page size of the database open as `f` (at `path`, for the error).
pub fn page_size(f: &File, path: &Path) -> Result<u32> {
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, 16)
        .map_err(|e| Error::io("read database", path, e))?;
    Ok(page_size_of(u16::from_be_bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let mut h = [0u8; 100];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        h[18] = 2;
        h[19] = 2;
        assert_eq!(
            Header::parse(&h),
            Some(Header {
                page_size: 65536,
                wal_mode: true
            })
        );
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        h[19] = 1;
        assert_eq!(Header::parse(&h).unwrap().page_size, 4096);
        assert!(!Header::parse(&h).unwrap().wal_mode);
        assert_eq!(Header::parse(&h[..99]), None);
        h[0] = b's';
        assert_eq!(Header::parse(&h), None);
        assert_eq!(wal_path(Path::new("/a/b.db")), Path::new("/a/b.db-wal"));
    }
}
