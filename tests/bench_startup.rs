//! Issue #16: daemon start-up cost independent of the namespace's age. Not part of the normal
//! suite:
//!
//! ```sh
//! cargo test --release --test tests bench_startup -- --ignored --nocapture
//! ```
//!
//! One database with a real chain in a namespace of `BENCH_OBJECTS` objects (default 100,000:
//! older segment keys PUT directly, as months of history would leave them), on the real S3
//! server (Garage) behind the proxy holding each request `BENCH_RTTS` ms (default `0,30`).
//! The daemon is started and the requests it makes until it has found the chain, and the time
//! that took, are printed: with `state.json` (what a restart normally finds) and without it
//! (the whole namespace listed: what every start did before).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::proxy::{Fault, Proxy};

fn started(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("found chain ending at ")
}

#[test]
#[ignore]
fn bench_startup() {
    ensure_s3();
    let up = s3_upstream();
    let n = env_u64("BENCH_OBJECTS", 100_000);
    let t = TestDir::new("bench-startup");
    let replica = Replica::new(&t, Backend::S3);
    let (st, prefix) = replica.storage();
    let ns = walsync::layout::join(&prefix, "app");

    // Months of history: n segment keys of generation 1, a year ago, 30 s apart.
    let t0 = Instant::now();
    let base = Stamp::now().before(Duration::from_secs(365 * 86_400));
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let key =
                    walsync::layout::segment_key(&ns, 1, base.after(Duration::from_secs(i * 30)));
                st.put(&key, &mut &b""[..], 0, &Default::default()).unwrap();
            });
        }
    });
    println!(
        "{n} history objects PUT in {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    // The live chain after it.
    let db = t.join("app.db");
    open_app(&db)
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('x');",
        )
        .unwrap();
    let d = Daemon::start(&[&db], &replica, &["--sync-interval", "0"], &t.join("log0"));
    wait_shipped(&replica, "app", &db, &t.join("scratch.db"));
    d.stop();

    println!("| RTT | state.json | requests until the chain is found | time to found |");
    println!("| --- | --- | --- | --- |");
    let state = walsync::layout::state_key(&ns);
    let mut saved = String::new();
    std::io::Read::read_to_string(&mut st.get(&state).unwrap().reader, &mut saved).unwrap();
    for rtt in std::env::var("BENCH_RTTS")
        .unwrap_or_else(|_| "0,30".into())
        .split(',')
        .filter_map(|v| v.trim().parse::<u64>().ok())
    {
        for with_state in [true, false] {
            if with_state {
                st.put(
                    &state,
                    &mut saved.as_bytes(),
                    saved.len() as u64,
                    &Default::default(),
                )
                .unwrap();
            } else {
                st.delete(&state).unwrap();
            }
            let proxy = Proxy::start(up);
            proxy.set_fault(Fault::Slow(Duration::from_millis(rtt)));
            let log = t.join(&format!("log-{rtt}-{with_state}"));
            let t0 = Instant::now();
            let mut child = Command::new(BIN)
                .args(["watch", db.to_str().unwrap(), "-b", &replica.url()])
                .args(["--endpoint", &proxy.endpoint(), "--sync-interval", "0"])
                .env("RUST_LOG", "walsync=info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            // Started on the database's next change; it has none, so a write wakes it.
            write_one(&db);
            wait_until("the chain found", Duration::from_secs(600), || {
                started(&log)
            });
            let took = t0.elapsed();
            let counts = proxy.counts();
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            let total: u64 = counts.values().sum();
            println!(
                "| {rtt} ms | {} | {total} ({}) | {:.2} s |",
                if with_state { "yes" } else { "no (before)" },
                counts
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                took.as_secs_f64()
            );
        }
    }
}

fn write_one(db: &Path) {
    open_app(db)
        .execute("INSERT INTO t(v) VALUES ('y')", [])
        .unwrap();
}
