//! Retention: deleting the objects no restore inside the window needs.
//!
//! The rule (SPEC section 3, issue #16): with a window of `keep`, every point in time from
//! `now - keep` on must restore, and a restore at T starts from the newest snapshot at or
//! before T. So the chain from the newest snapshot at or before `now - keep` (call it the
//! anchor) is kept whole, and everything before the anchor, in replay order, may go. With no
//! snapshot that old, nothing goes. The kept part is never touched, so a prune stopped at
//! any point (`kill -9`, an S3 outage) leaves the window restoring exactly, and the next prune
//! finishes the job. What goes, goes in two phases, each a multi-object DELETE in which any
//! subset may be gone when it stops: first the snapshots before the anchor (with every segment
//! still there, a restore before the window starts from an older snapshot and replays through
//! the missing one, or fails on the chain link where a generation began: never a wrong
//! state), then the segments (now no snapshot is older than the anchor, so a point before it
//! fails with one line naming the anchor's time). Only the namespace's own keys are listed
//! (`<ns>/` exactly, parsed back to the same namespace), so `app` never touches `app2`.

use std::time::Duration;

use log::{debug, info};

use crate::error::Result;
use crate::layout::{self, Kind, Object};
use crate::restore;
use crate::storage::Storage;
use crate::time::{self, Stamp};

/// What a prune found and did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// The objects deleted (or, with `dry_run`, that would be), oldest first.
    pub deleted: Vec<Object>,
    /// Objects kept.
    pub kept: usize,
    /// The oldest point in time still restorable afterwards (the anchor's time).
    pub oldest: Option<Stamp>,
}

/// How many of `objs` (in replay order) retention `keep` lets go at `now`: those before the
/// anchor. Pure, for the table test.
pub fn deletable(objs: &[Object], now: Stamp, keep: Duration) -> usize {
    let start = now.before(keep);
    objs.iter()
        .rposition(|o| o.kind == Kind::Snapshot && o.ts <= start)
        .unwrap_or(0)
}

/// Apply retention `keep` to namespace `ns` now; with `dry_run`, only say what would go.
pub fn prune(storage: &dyn Storage, ns: &str, keep: Duration, dry_run: bool) -> Result<Pruned> {
    let objs = restore::objects(storage, ns)?;
    let n = deletable(&objs, Stamp::now(), keep);
    let mut out = Pruned {
        kept: objs.len() - n,
        oldest: objs
            .get(n..)
            .and_then(|rest| rest.iter().find(|o| o.kind == Kind::Snapshot))
            .map(|o| o.ts),
        ..Pruned::default()
    };
    let (snapshots, segments): (Vec<Object>, Vec<Object>) = objs
        .into_iter()
        .take(n)
        .partition(|o| o.kind == Kind::Snapshot);
    for phase in [snapshots, segments] {
        if !dry_run {
            let keys: Vec<String> = phase.iter().map(|o| o.key.clone()).collect();
            storage.delete_many(&keys, &mut |k| {
                debug!("ns={ns} deleted {k} (retention {keep:?})")
            })?;
        }
        out.deleted.extend(phase);
    }
    layout::sort(&mut out.deleted);
    if !out.deleted.is_empty() && !dry_run {
        let bytes: u64 = out.deleted.iter().map(|o| o.size).sum();
        info!(
            "ns={ns} retention {}: deleted {} object(s) ({:.1} MB), {} .. {}; restorable from {}",
            time::fmt_duration(keep),
            out.deleted.len(),
            bytes as f64 / 1e6,
            out.deleted.first().map_or("", |o| o.key.as_str()),
            out.deleted.last().map_or("", |o| o.key.as_str()),
            out.oldest.map_or_else(|| "-".into(), Stamp::iso)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(ts: u64, snap: bool) -> Object {
        Object {
            key: format!("ns/{ts}"),
            ts: Stamp::from_ms(ts),
            kind: if snap {
                Kind::Snapshot
            } else {
                Kind::Segment { gen: 1 }
            },
            size: 1,
        }
    }

    #[test]
    fn keeps_the_chain_of_the_newest_snapshot_before_the_window() {
        let h = 3_600_000;
        // snapshots at 0 h, 2 h, 4 h; segments every hour between.
        let objs: Vec<Object> = (0..6).map(|i| obj(i * h, i % 2 == 0)).collect();
        let keep = Duration::from_secs(3600);
        // At 6 h with 1 h kept: the window starts at 5 h; the newest snapshot at or before it
        // is at 4 h: the 4 objects before it go.
        assert_eq!(deletable(&objs, Stamp::from_ms(6 * h), keep), 4);
        // At 4.5 h: window at 3.5 h; anchor at 2 h: 2 go.
        assert_eq!(deletable(&objs, Stamp::from_ms(4 * h + h / 2), keep), 2);
        // Exactly at a snapshot's time: that snapshot anchors.
        assert_eq!(deletable(&objs, Stamp::from_ms(3 * h), keep), 2);
        // No snapshot old enough: nothing goes.
        assert_eq!(deletable(&objs, Stamp::from_ms(h / 2), keep), 0);
        // Keeping forever in effect.
        assert_eq!(
            deletable(
                &objs,
                Stamp::from_ms(6 * h),
                Duration::from_secs(u64::MAX / 4000)
            ),
            0
        );
        assert_eq!(deletable(&[], Stamp::from_ms(6 * h), keep), 0);
    }
}
