//! walsync's integration tests: one binary (autotests = false) running the real `walsync`.

mod errors;
mod harness;
mod replication;
mod wal_reader;
mod workload;
