//! walsync: continuous replication of many SQLite databases (WAL mode) to S3-compatible object
//! storage or a local directory, with restore to the latest commit or to a point in time.
//!
//! Layout: `wal` knows the SQLite WAL format, `layout` the object keys, `storage` the backends,
//! `replicate` the shipping state machine and daemon, `restore` the way back.

pub mod cli;
pub mod cmd;
pub mod compress;
pub mod config;
pub mod dbfile;
pub mod digest;
pub mod error;
pub mod layout;
pub mod prune;
pub mod replicate;
pub mod restore;
pub mod snapshot;
pub mod storage;
pub mod time;
pub mod wal;
pub mod watch;
