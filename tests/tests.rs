//! walsync's integration tests: one binary (autotests = false) running the real `walsync`.

mod bench;
mod bench_disturb;
mod bench_https;
mod bench_lag;
mod bench_oneshot;
mod bench_restore;
mod bench_startup;
mod compact;
mod creds;
mod cron;
mod disturb;
mod errors;
mod fuzz;
mod harness;
mod hazards;
mod many;
mod oneshot;
mod proxy;
mod prune;
mod replication;
mod resume;
mod s3;
mod status;
mod torture;
mod wal_reader;
mod workload;
