//! `list`, `prune` and `verify`: what the replica holds.

use std::time::Duration;

use crate::cli::Args;
use crate::error::Result;
use crate::layout;
use crate::prune;
use crate::replicate::status::{json_str, json_time};
use crate::restore;
use crate::time::Stamp;

use super::watch::replica_to_read;

/// The databases in the replica and their restorable window.
pub fn list(a: &Args) -> Result<()> {
    let (storage, prefix, _) = replica_to_read(a)?;
    let all = restore::list(storage.as_ref(), &prefix)?;
    if all.is_empty() && !a.json {
        println!("no databases in {}", storage.describe());
    }
    for s in all {
        let name = s.ns.strip_prefix(&format!("{prefix}/")).unwrap_or(&s.ns);
        // The window: from the oldest snapshot to the newest object after the first snapshot.
        let oldest = s.snapshots.iter().map(|x| x.0).min();
        if a.json {
            println!(
                "{{\"name\":{},\"oldest_restorable\":{},\"latest_restorable\":{},\"snapshots\":{},\"segments\":{},\"generations\":[{},{}],\"bytes\":{}}}",
                json_str(name),
                json_time(oldest),
                json_time(s.latest),
                s.snapshots.len(),
                s.segments,
                if s.segments == 0 { 0 } else { s.generations.0 },
                s.generations.1,
                s.bytes
            );
            continue;
        }
        let gens = if s.segments == 0 {
            "-".to_string()
        } else {
            format!("{}..{}", s.generations.0, s.generations.1)
        };
        let at = |t: Option<Stamp>| t.map_or_else(|| "none".into(), Stamp::iso);
        println!(
            "{name}\tsnapshots={} segments={} generations={gens} bytes={} oldest_restorable={} latest_restorable={}",
            s.snapshots.len(),
            s.segments,
            s.bytes,
            at(oldest),
            at(s.latest)
        );
        for (ts, size) in s.snapshots {
            println!("  snapshot {ts} {size} bytes");
        }
    }
    Ok(())
}

/// Delete what the retention window no longer needs.
pub fn prune(a: &Args) -> Result<()> {
    let (storage, prefix, cfg) = replica_to_read(a)?;
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
                .map_or_else(|| "the first snapshot".into(), Stamp::iso)
        );
    }
    Ok(())
}

/// Check one database's chain end to end.
pub fn verify(a: &Args) -> Result<()> {
    let (storage, prefix, _) = replica_to_read(a)?;
    let name = &a.positional[0];
    let v = match restore::verify(storage.as_ref(), &layout::join(&prefix, name)) {
        Ok(v) => v,
        Err(e) if a.json => {
            println!(
                "{{\"name\":{},\"ok\":false,\"error\":{}}}",
                json_str(name),
                json_str(&e.to_string())
            );
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if a.json {
        println!(
            "{{\"name\":{},\"ok\":true,\"objects\":{},\"snapshots\":{},\"segments\":{},\"latest\":{}}}",
            json_str(name),
            v.objects,
            v.snapshots,
            v.segments,
            json_time(v.latest)
        );
        return Ok(());
    }
    println!(
        "{name}: {} object(s) verified ({} snapshot(s), {} segment(s)); chain continuous; latest {}",
        v.objects,
        v.snapshots,
        v.segments,
        v.latest.map_or_else(|| "none".into(), Stamp::iso)
    );
    Ok(())
}
