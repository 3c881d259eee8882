//! Issue #5: the torture harness. Several databases take a randomized workload (inserts,
//! updates, deletes, transactions over 1,000 pages, schema changes, VACUUM, page-size changes,
//! application checkpoints of all four modes, the application closing its last connection,
//! one-shot writers that open, write and close, `journal_size_limit`)
//! while the harness `kill -9`s and restarts walsync at random moments and injects storage
//! faults through the fault-injecting proxy in front of the real S3 server (refused
//! connections, resets mid-upload, 500/503 answers, slow answers, dead connections that
//! neither answer nor reset, an outage). Every commit's
//! time and content hash are recorded; at the end every database is restored to the latest
//! state and to random points in time and compared with the record.
//!
//! Short mode (the CI run): `cargo test --test tests torture` (90 s of workload).
//! Long mode: `WALSYNC_TORTURE_SECS=3600 cargo test --release --test tests torture -- --nocapture`
//! (`WALSYNC_TORTURE_DBS`, default 3; `WALSYNC_TORTURE_SEED`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::harness::*;
use crate::proxy::{Fault, Proxy};
use crate::workload;

/// A state the application committed: when (ms since the epoch, taken after COMMIT returned)
/// and the content hash.
type States = Arc<Mutex<Vec<(u64, String)>>>;

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    checkpoints: AtomicU64,
    vacuums: AtomicU64,
    page_size_changes: AtomicU64,
    closes: AtomicU64,
    oneshots: AtomicU64,
}

fn record(db: &Path, states: &States, counters: &Counters) {
    let h = content_hash(db);
    let t = Stamp::now().ms();
    states.lock().unwrap().push((t, h));
    counters.commits.fetch_add(1, Ordering::Relaxed);
}

/// Retry `sql` for a while: switching the journal mode needs every other connection gone
/// (walsync lets go of an idle database after a few seconds).
fn try_exclusive(c: &Connection, sql: &str, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if c.execute_batch(sql).is_ok() {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    false
}

fn writer(db: PathBuf, seed: u64, stop: Arc<AtomicBool>, states: States, counters: Arc<Counters>) {
    let mut rng = Rng(seed);
    // Some applications cap their WAL (SQLite then cuts it at the first commit of a cycle).
    let jsl = [None, Some(0), Some(16 * 1024), Some(100_000)][rng.below(4) as usize];
    let open = |db: &Path| {
        let c = open_app(db);
        if let Some(l) = jsl {
            c.execute_batch(&format!("PRAGMA journal_size_limit={l}"))
                .unwrap();
        }
        c
    };
    let mut c = open(&db);
    workload::schema(&c);
    record(&db, &states, &counters);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.below(1000);
        match roll {
            0..=29 => {
                let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.below(4) as usize];
                // Busy answers (walsync holding a read pin) are part of the game.
                let _ = c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
                counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            30..=39 => {
                c.execute_batch("VACUUM").unwrap();
                counters.vacuums.fetch_add(1, Ordering::Relaxed);
                record(&db, &states, &counters);
            }
            40..=41 => {
                let ps = [1024, 4096, 8192, 16384][rng.below(4) as usize];
                if try_exclusive(&c, "PRAGMA journal_mode=DELETE", Duration::from_secs(10)) {
                    c.execute_batch(&format!("PRAGMA page_size={ps}; VACUUM;"))
                        .unwrap();
                    let m: String = c
                        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                        .unwrap();
                    assert_eq!(m, "wal");
                    counters.page_size_changes.fetch_add(1, Ordering::Relaxed);
                    record(&db, &states, &counters);
                }
            }
            42..=51 => {
                // The application closes its last connection (SQLite checkpoints and may
                // delete the WAL), then comes back.
                drop(c);
                counters.closes.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_millis(rng.below(300)));
                c = open(&db);
            }
            52..=91 => {
                // A one-shot writer (cron, CLI, CGI) while the application is closed: its
                // close checkpoints the WAL into the database and deletes it at once.
                drop(c);
                let mut one = open(&db);
                workload::step(&mut one, &mut rng, false);
                drop(one);
                counters.oneshots.fetch_add(1, Ordering::Relaxed);
                record(&db, &states, &counters);
                sleep(Duration::from_millis(rng.below(200)));
                c = open(&db);
            }
            _ => {
                workload::step(&mut c, &mut rng, n % 150 == 75);
                record(&db, &states, &counters);
            }
        }
        sleep(Duration::from_millis(5 + rng.below(40)));
    }
}

#[test]
fn torture() {
    ensure_s3();
    let secs = env_u64("WALSYNC_TORTURE_SECS", 90);
    let ndb = env_u64("WALSYNC_TORTURE_DBS", 3) as usize;
    let seed = env_u64("WALSYNC_TORTURE_SEED", Stamp::now().ms());
    let outage = Duration::from_secs(
        env_u64("WALSYNC_TORTURE_OUTAGE_SECS", secs.min(3600) / 3).clamp(5, 30),
    );
    eprintln!("torture: {secs} s, {ndb} databases, seed {seed}, outage {outage:?}");
    let upstream = s3_upstream();
    let proxy = Proxy::start(upstream);
    let ep = proxy.endpoint();
    let t = TestDir::new("torture");
    let replica = Replica::new(&t, Backend::S3);
    let dbs: Vec<PathBuf> = (0..ndb).map(|i| t.join(&format!("db{i}.db"))).collect();
    for db in &dbs {
        let c = open_app(db);
        workload::schema(&c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let all_states: Vec<States> = dbs.iter().map(|_| States::default()).collect();
    let writers: Vec<_> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            let (db, stop, states, counters) = (
                db.clone(),
                stop.clone(),
                all_states[i].clone(),
                counters.clone(),
            );
            thread::spawn(move || writer(db, seed ^ (i as u64 * 7919), stop, states, counters))
        })
        .collect();
    let db_refs: Vec<&Path> = dbs.iter().map(|p| p.as_path()).collect();
    let args = ["--sync-interval", "100ms", "--endpoint", ep.as_str()];
    let mut rng = Rng(seed);
    let (mut kills, mut faults, mut rounds, mut peak_kb) = (0u64, 0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let mut outage_done = false;
    // The largest WAL seen while walsync ran (it must stay bounded, even while uploads hang),
    // next to the largest database (a VACUUM writes the whole database into the WAL).
    let (mut max_wal, mut max_db) = (0u64, 0u64);
    let wal_bytes = || {
        dbs.iter()
            .map(|d| {
                let mut w = d.as_os_str().to_owned();
                w.push("-wal");
                let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
                (len(Path::new(&w)), len(d))
            })
            .fold((0, 0), |(w, d), (w1, d1)| (w.max(w1), d.max(d1)))
    };
    let sample = |max_wal: &mut u64, max_db: &mut u64| {
        let (w, d) = wal_bytes();
        *max_wal = (*max_wal).max(w);
        *max_db = (*max_db).max(d);
    };
    while Instant::now() < deadline {
        rounds += 1;
        let d = Daemon::start(&db_refs, &replica, &args, &t.join(&format!("log-{rounds}")));
        let pid = d.child.id();
        let run_for = Duration::from_millis(1000 + rng.below(4000));
        let run_end = Instant::now() + run_for;
        // One long outage in the middle of the run; otherwise short random faults.
        let fault = if !outage_done && t0.elapsed() > Duration::from_secs(secs / 3) {
            outage_done = true;
            Some((Fault::Down, outage))
        } else {
            match rng.below(8) {
                0 => Some((Fault::Down, Duration::from_millis(500 + rng.below(2000)))),
                1 => Some((
                    Fault::ResetMidUpload,
                    Duration::from_millis(300 + rng.below(1500)),
                )),
                2 => Some((
                    Fault::Status(500),
                    Duration::from_millis(300 + rng.below(1500)),
                )),
                3 => Some((
                    Fault::Status(503),
                    Duration::from_millis(300 + rng.below(1500)),
                )),
                4 => Some((
                    Fault::Slow(Duration::from_millis(200 + rng.below(1500))),
                    Duration::from_millis(500 + rng.below(2000)),
                )),
                5 => Some((Fault::Stall, Duration::from_millis(1000 + rng.below(4000)))),
                _ => None,
            }
        };
        if let Some((f, dur)) = fault {
            sleep(Duration::from_millis(rng.below(500)));
            proxy.set_fault(f);
            faults += 1;
            eprintln!("{} torture: fault {f:?} for {dur:?}", Stamp::now().iso());
            let until = Instant::now() + dur;
            while Instant::now() < until {
                peak_kb = peak_kb.max(vm_hwm_kb(pid));
                sample(&mut max_wal, &mut max_db);
                sleep(Duration::from_millis(100));
            }
            proxy.set_fault(Fault::None);
        }
        while Instant::now() < run_end {
            peak_kb = peak_kb.max(vm_hwm_kb(pid));
            sample(&mut max_wal, &mut max_db);
            sleep(Duration::from_millis(100));
        }
        peak_kb = peak_kb.max(vm_hwm_kb(pid));
        // A clean restart now and then (SIGTERM: everything pending is shipped first).
        if rng.below(4) == 0 {
            d.stop();
        } else {
            d.kill9();
            kills += 1;
        }
        sleep(Duration::from_millis(rng.below(300)));
    }
    // Final round: no faults; the writers stop, walsync ships everything and exits.
    let d = Daemon::start(&db_refs, &replica, &args, &t.join("log-final"));
    sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    sleep(Duration::from_millis(300));
    peak_kb = peak_kb.max(vm_hwm_kb(d.child.id()));
    d.stop();

    let (mut restores, mut mismatches) = (0u64, Vec::new());
    for (i, db) in dbs.iter().enumerate() {
        let name = format!("db{i}");
        let states = all_states[i].lock().unwrap().clone();
        let out = t.join(&format!("restored-{name}.db"));
        restore_ok(&replica, &name, &out, None);
        integrity_ok(&out);
        restores += 1;
        let got = content_hash(&out);
        if got != content_hash(db) || got != states.last().unwrap().1 {
            mismatches.push(format!("{name}: latest restore differs from the source"));
        }
        // Random points in time from the first snapshot on (the earliest restorable time, as
        // the replica reports it). The restored state must be one the application committed,
        // no later than the point asked for (1 s slack: a commit's recorded time is taken
        // after its COMMIT returned, the segment's may be a little earlier).
        let first_snapshot = replica
            .objects(&name, "snapshots")
            .iter()
            .filter_map(|k| walsync::layout::parse_key(k, 0).map(|(_, o)| o.ts.ms()))
            .min()
            .expect("a snapshot");
        let (first, last) = (states[0].0.max(first_snapshot), states.last().unwrap().0);
        for k in 0..5 {
            if last <= first {
                break;
            }
            let at = first + rng.below(last - first);
            let out = t.join(&format!("pit-{name}-{k}.db"));
            let o = restore(&replica, &name, &out, Some(&Stamp::from_ms(at).iso()));
            if !o.status.success() {
                mismatches.push(format!(
                    "{name}: restore to {} failed: {}",
                    Stamp::from_ms(at).iso(),
                    stderr(&o)
                ));
                continue;
            }
            integrity_ok(&out);
            restores += 1;
            let got = content_hash(&out);
            if !states.iter().any(|(ts, h)| *h == got && *ts <= at + 1000) {
                mismatches.push(format!(
                    "{name}: restore to {} gave a state never committed before then",
                    Stamp::from_ms(at).iso()
                ));
            }
        }
    }
    let c = &counters;
    println!(
        "torture summary: {:.0} s, {ndb} databases, seed {seed}: rounds {rounds}, commits {}, checkpoints {}, \
         vacuums {}, page-size changes {}, app closes {}, one-shot writers {}, kills {kills}, faults injected {faults} \
         ({} requests/connections hit), restores checked {restores}, mismatches {}, peak RSS {} KB, largest WAL {} KB (largest database {} KB)",
        t0.elapsed().as_secs_f64(),
        c.commits.load(Ordering::Relaxed),
        c.checkpoints.load(Ordering::Relaxed),
        c.vacuums.load(Ordering::Relaxed),
        c.page_size_changes.load(Ordering::Relaxed),
        c.closes.load(Ordering::Relaxed),
        c.oneshots.load(Ordering::Relaxed),
        proxy.injected(),
        mismatches.len(),
        peak_kb,
        max_wal / 1024,
        max_db / 1024
    );
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert!(peak_kb < 64 * 1024, "walsync's peak RSS {peak_kb} KB");
}
