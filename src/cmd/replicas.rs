//! `list`, `prune` and `verify`: what the replica holds.

use std::time::Duration;

use walsync::cli::Args;
use walsync::error::Result;
use walsync::layout;
use walsync::prune;
use walsync::restore;
use walsync::time;

use super::watch::replica;

/// The databases in the replica and their restorable state.
pub fn list(a: &Args) -> Result<()> {
    let (storage, prefix, _) = replica(a)?;
    let all = restore::list(storage.as_ref(), &prefix)?;
    if all.is_empty() {
        println!("no databases in {}", storage.describe());
    }
    for s in all {
        let gens = if s.segments == 0 {
            "-".to_string()
        } else {
            format!("{}..{}", s.generations.0, s.generations.1)
        };
        let latest = if s.latest == 0 {
            "none".into()
        } else {
            time::iso(s.latest)
        };
        let name = s.ns.strip_prefix(&format!("{prefix}/")).unwrap_or(&s.ns);
        println!(
                "{name}\tsnapshots={} segments={} generations={gens} bytes={} latest_restorable={latest}",
                s.snapshots.len(),
                s.segments,
                s.bytes
            );
        for (ts, size) in s.snapshots {
            println!("  snapshot {} {size} bytes", time::iso(ts));
        }
    }
    Ok(())
}

/// Delete what the retention window no longer needs.
pub fn prune(a: &Args) -> Result<()> {
    let (storage, prefix, cfg) = replica(a)?;
    let targets: Vec<(String, String, Option<Duration>)> = match &cfg {
        Some(c) => c
            .all_databases()?
            .into_iter()
            .map(|d| (d.prefix.clone(), d.ns, d.retention))
            .collect(),
        None => vec![(
            a.positional[0].clone(),
            layout::join(&prefix, &a.positional[0]),
            a.retention,
        )],
    };
    for (name, ns, keep) in targets {
        let Some(keep) = keep else {
            println!("{name}: retention forever; nothing deleted");
            continue;
        };
        let r = prune::prune(storage.as_ref(), &ns, keep, a.dry_run)?;
        let bytes: u64 = r.deleted.iter().map(|o| o.size).sum();
        if a.dry_run {
            for o in &r.deleted {
                println!("would delete {} ({} bytes)", o.key, o.size);
            }
        }
        println!(
            "{name}: {} {} object(s) ({bytes} bytes), kept {}; restorable from {}",
            if a.dry_run { "would delete" } else { "deleted" },
            r.deleted.len(),
            r.kept,
            r.oldest
                .map_or_else(|| "the first snapshot".into(), time::iso)
        );
    }
    Ok(())
}

/// Check one database's chain end to end.
pub fn verify(a: &Args) -> Result<()> {
    let (storage, prefix, _) = replica(a)?;
    let name = &a.positional[0];
    let v = restore::verify(storage.as_ref(), &layout::join(&prefix, name))?;
    println!(
            "{name}: {} object(s) verified ({} snapshot(s), {} segment(s)); chain continuous; latest {}",
            v.objects,
            v.snapshots,
            v.segments,
            time::iso(v.latest)
        );
    Ok(())
}
