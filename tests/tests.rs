//! walsync's integration tests: one binary (autotests = false) running the real `walsync`.

mod harness;
mod replication;
mod workload;
