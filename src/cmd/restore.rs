//! `restore` and `restore-all`.

use std::path::{Path, PathBuf};

use crate::cli::Args;
use crate::error::{Error, Result};
use crate::layout;

use super::watch::replica_to_read;

/// One database, to the latest state or a point in time.
pub fn restore(a: &Args) -> Result<()> {
    let (storage, prefix, _) = replica_to_read(a)?;
    let name = a.prefix.clone().unwrap_or_else(|| a.positional[0].clone());
    let out = a.output.as_deref().expect("validated: -o is required");
    // On a terminal, one progress line redrawn at most 5 times a second; nothing otherwise.
    let tty = unsafe { libc::isatty(2) } == 1;
    let began = std::time::Instant::now();
    let mut shown: Option<std::time::Instant> = None;
    let mut show = |p: &crate::restore::Progress| {
        if !tty || shown.is_some_and(|t| t.elapsed().as_millis() < 200) {
            return;
        }
        shown = Some(std::time::Instant::now());
        let secs = began.elapsed().as_secs_f64().max(1e-3);
        let rate = p.bytes as f64 / secs;
        let eta = if rate > 0.0 {
            format!(
                "{:.0} s",
                p.bytes_total.saturating_sub(p.bytes) as f64 / rate
            )
        } else {
            "-".into()
        };
        eprint!(
            "\r\x1b[Krestoring {name}: {}/{} objects, {:.1}/{:.1} MB, {:.1} MB/s, ETA {eta}",
            p.objects,
            p.objects_total,
            p.bytes as f64 / 1e6,
            p.bytes_total as f64 / 1e6,
            rate / 1e6
        );
    };
    let r = crate::restore::restore_with(
        storage.as_ref(),
        &layout::join(&prefix, &name),
        out,
        a.point_in_time,
        a.force,
        &mut show,
    );
    if tty {
        eprint!("\r\x1b[K");
    }
    let r = r?;
    print_restored(&name, out, &r);
    Ok(())
}

/// Every database of the config, four at a time.
pub fn restore_all(a: &Args) -> Result<()> {
    let (storage, prefix, cfg) = replica_to_read(a)?;
    let cfg = cfg.expect("validated: --config is required");
    let dir = a
        .output_dir
        .as_deref()
        .expect("validated: --output-dir is required");
    // Every namespace of the config: path entries, and whatever the replica holds under
    // each dir entry's prefix (databases deleted since are restored too).
    let mut names: Vec<String> = cfg.databases.iter().map(|d| d.ns.clone()).collect();
    for d in &cfg.dirs {
        for s in crate::restore::list(storage.as_ref(), &d.prefix)? {
            names.push(s.ns);
        }
    }
    names.sort();
    names.dedup();
    let base = prefix.trim_matches('/').to_string();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .thread_name(|i| format!("walsync-restore/{i}"))
        .build()
        .map_err(|e| Error::other(format!("start restore threads: {e}")))?;
    let results: Vec<(String, PathBuf, Result<crate::restore::Restored>)> = pool.install(|| {
            use rayon::prelude::*;
            names
                .par_iter()
                .map(|ns| {
                    let rel = ns
                        .strip_prefix(&format!("{base}/"))
                        .unwrap_or(ns)
                        .to_string();
                    let out = dir.join(format!("{rel}.db"));
                    if !layout::is_plain_relative(&rel) {
                        // Names come from storage: never write outside --output-dir.
                        let e = Error::other(format!(
                            "refusing to restore namespace '{ns}': its name is not a plain relative path"
                        ))
                        .with_hint("rename or remove those objects in the replica");
                        return (rel, out, Err(e));
                    }
                    let r = out
                        .parent()
                        .map_or(Ok(()), |p| {
                            std::fs::create_dir_all(p)
                                .map_err(|e| Error::io("create directory", p, e))
                        })
                        .and_then(|_| {
                            crate::restore::restore(
                                storage.as_ref(),
                                ns,
                                &out,
                                a.point_in_time,
                                a.force,
                            )
                        });
                    (rel, out, r)
                })
                .collect()
        });
    let mut failed = 0;
    for (rel, out, r) in &results {
        match r {
            Ok(r) => print_restored(rel, out, r),
            Err(e) => {
                failed += 1;
                eprintln!("walsync: error: {rel}: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(Error::other(format!(
            "{failed} of {} database(s) failed to restore",
            results.len()
        )));
    }
    Ok(())
}

fn print_restored(what: &str, out: &Path, r: &crate::restore::Restored) {
    println!(
        "restored {what} to {}: {} + {} segment(s), {} frame(s); state as of {}",
        out.display(),
        r.snapshot,
        r.segments,
        r.frames,
        r.restored_to
    );
}
