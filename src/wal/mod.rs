//! The SQLite WAL format: checksums, headers, frames, reading a live WAL, and the standalone
//! segment files walsync ships. Nothing here knows about storage or object keys.

pub mod checksum;
pub mod header;
pub mod reader;
pub mod segment;
pub mod shm;

pub use checksum::Checksum;
pub use header::{FrameHeader, WalHeader};
pub use reader::WalEnd;
