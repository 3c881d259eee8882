//! Replication: the per-database state machine (`db`), its outbox of objects waiting for
//! upload (`upload`), and the daemon that drives many of them (`daemon`) from a `catalog`.

pub mod alerts;
pub mod bridge;
pub mod capture;
pub mod catalog;
pub mod continuity;
pub mod daemon;
pub mod db;
pub mod lease;
pub mod pagemap;
pub mod request;
pub mod status;
pub mod upload;
