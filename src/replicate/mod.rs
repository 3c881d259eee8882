//! Replication: the per-database state machine (`db`) and the daemon that drives many of them
//! (`daemon`).

pub mod daemon;
pub mod db;
