//! The continuity proof: does the chain continue into the WAL found when walsync pins a
//! database again (after it let it go, or at start)? A pure function of what was found, so
//! every case is a row of a table test.
//!
//! * `Same`: the WAL still has the header we last shipped and holds our last frame with the
//!   same running checksum; what follows it is new.
//! * `Restarted`: the WAL restarted exactly once (salt-1 + 1) and the old cycle provably ended
//!   at our position: our last frame still in the file, nothing of the old cycle after it.
//! * `RestartedAfter(end)`: the same, but the old cycle went on after our position, up to the
//!   commit `end`, and those frames are still in the file with a provable end (see
//!   `reader::old_end`): capture them, then the restart.
//! * `Unproven`: anything else. The WAL alone cannot say what happened to the database
//!   meanwhile (a connection that opens, writes and closes checkpoints its frames into the
//!   database file and deletes the WAL within a millisecond), so the caller must prove it from
//!   the database file (the page map, see `bridge`) or start a new generation with a snapshot.

use crate::layout::Position;
use crate::wal::reader::OldEnd;
use crate::wal::{WalEnd, WalHeader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuity {
    Same,
    Restarted,
    RestartedAfter(WalEnd),
    Unproven(String),
}

/// What walsync found right after pinning.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The wal-index's last committed frame (0: the WAL is logically empty).
    pub max_frame: u32,
    /// The wal-index's salts.
    pub index_salts: (u32, u32),
    /// The WAL file's header (None: absent, shorter than a header, or invalid).
    pub header: Option<WalHeader>,
    /// Same cycle as ours: the file still holds our last frame unchanged.
    pub holds_ours: bool,
    /// A restart of ours: what the file still holds of our cycle after our last frame.
    pub old_end: OldEnd,
    /// The database file is another file than the one walsync last read.
    pub db_replaced: bool,
}

/// Decide from `found` whether the chain at `pos` continues (`at_db`: the database file held
/// the chain's whole state and the WAL was empty when walsync last looked).
pub fn decide(pos: Option<&Position>, at_db: bool, found: &Found) -> Continuity {
    let unproven = |s: &str| Continuity::Unproven(s.to_string());
    let Some(pos) = pos else {
        return unproven("no chain in the replica yet");
    };
    if found.db_replaced {
        return unproven("the database file was replaced");
    }
    let m = found.max_frame;
    let (h, end) = match (&pos.wal, at_db) {
        (_, true) | (None, _) if m == 0 => {
            return unproven("the WAL is empty, so only the database file can show what changed")
        }
        (_, true) | (None, _) => return unproven("a WAL appeared that walsync did not see start"),
        (Some((h, end)), false) => (h, end),
    };
    let Some(cur) = &found.header else {
        return Continuity::Unproven(format!(
            "the WAL (checkpoint sequence {}) was truncated or deleted while not pinned",
            h.seq
        ));
    };
    if m > 0 && (cur.salt1, cur.salt2) != found.index_salts {
        return unproven("the WAL header does not match SQLite's wal-index");
    }
    if cur.same_wal(h) {
        // Frames up to ours unchanged; anything after them (even if already checkpointed and
        // the wal-index reset since) is still in the file: SQLite only overwrites a WAL after
        // writing a new header.
        if (m == 0 || m >= end.frame) && found.holds_ours {
            return Continuity::Same;
        }
        return Continuity::Unproven(format!(
            "the WAL no longer holds shipped frame {} unchanged",
            end.frame
        ));
    }
    if cur.is_restart_of(h) {
        let o = found.old_end;
        if m < end.frame && o.intact && o.proven {
            return match o.last {
                None => Continuity::Restarted,
                Some(last) => Continuity::RestartedAfter(last),
            };
        }
        return Continuity::Unproven(format!(
            "the WAL was restarted while not pinned (salt-1 {:08x} -> {:08x}) and its old end cannot be proven",
            h.salt1, cur.salt1
        ));
    }
    Continuity::Unproven(format!(
        "the WAL was restarted or replaced while not pinned (salt-1 {:08x} -> {:08x})",
        h.salt1, cur.salt1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::header::MAGIC_LE;
    use crate::wal::{Checksum, WalEnd};

    fn hdr(seq: u32, salt1: u32, salt2: u32) -> WalHeader {
        WalHeader {
            magic: MAGIC_LE,
            page_size: 4096,
            seq,
            salt1,
            salt2,
            cksum: Checksum(0, 0),
        }
    }

    fn at(h: WalHeader, frame: u32) -> Position {
        Position {
            gen: 3,
            wal: Some((
                h,
                WalEnd {
                    frame,
                    cksum: Checksum(1, 2),
                    db_pages: 10,
                },
            )),
        }
    }

    /// Every case of the README's guarantee section, one row each (long because it is the
    /// table).
    #[test]
    fn table() {
        let ours = hdr(4, 100, 7);
        let restart = hdr(5, 101, 99);
        let pool_restart = hdr(1, 101, 55); // another connection's own counter
        let second_restart = hdr(6, 102, 5);
        let fresh = hdr(0, 0xdead, 0xbeef);
        let none = Position { gen: 1, wal: None };
        let same = |m, holds| Found {
            max_frame: m,
            index_salts: (100, 7),
            header: Some(ours),
            holds_ours: holds,
            ..Found::default()
        };
        let tail = WalEnd {
            frame: 14,
            cksum: Checksum(5, 6),
            db_pages: 11,
        };
        let restarted = |h: WalHeader, m, intact, more: bool, proven| Found {
            max_frame: m,
            index_salts: (h.salt1, h.salt2),
            header: Some(h),
            old_end: OldEnd {
                intact,
                last: more.then_some(tail),
                proven,
            },
            ..Found::default()
        };
        let gone = Found::default();
        use Continuity::*;
        let u = |s: &str| Unproven(s.to_string());
        let cases: Vec<(&str, Option<Position>, bool, Found, Continuity)> = vec![
            ("no chain", None, false, gone.clone(), u("no chain in the replica yet")),
            ("same WAL, more frames", Some(at(ours, 10)), false, same(12, true), Same),
            ("same WAL, nothing new", Some(at(ours, 10)), false, same(10, true), Same),
            ("same WAL, index reset by RESTART", Some(at(ours, 10)), false, same(0, true), Same),
            (
                "same WAL, frame rewritten",
                Some(at(ours, 10)),
                false,
                same(12, false),
                u("the WAL no longer holds shipped frame 10 unchanged"),
            ),
            (
                "same WAL, fewer frames than ours",
                Some(at(ours, 10)),
                false,
                same(4, true),
                u("the WAL no longer holds shipped frame 10 unchanged"),
            ),
            ("one restart at our end", Some(at(ours, 10)), false, restarted(restart, 3, true, false, true), Restarted),
            ("restart by another pool connection", Some(at(ours, 10)), false, restarted(pool_restart, 3, true, false, true), Restarted),
            (
                "restart after more commits, still in the file",
                Some(at(ours, 10)),
                false,
                restarted(restart, 3, true, true, true),
                RestartedAfter(tail),
            ),
            (
                "restart, frames after ours cut by journal_size_limit",
                Some(at(ours, 10)),
                false,
                restarted(restart, 3, true, true, false),
                u("the WAL was restarted while not pinned (salt-1 00000064 -> 00000065) and its old end cannot be proven"),
            ),
            (
                "restart, a partial frame after ours",
                Some(at(ours, 10)),
                false,
                restarted(restart, 3, true, false, false),
                u("the WAL was restarted while not pinned (salt-1 00000064 -> 00000065) and its old end cannot be proven"),
            ),
            (
                "restart overwrote our frame",
                Some(at(ours, 10)),
                false,
                restarted(restart, 12, true, false, true),
                u("the WAL was restarted while not pinned (salt-1 00000064 -> 00000065) and its old end cannot be proven"),
            ),
            (
                "restart rewrote our frame while walsync read after it",
                Some(at(ours, 10)),
                false,
                restarted(restart, 3, false, true, true),
                u("the WAL was restarted while not pinned (salt-1 00000064 -> 00000065) and its old end cannot be proven"),
            ),
            (
                "two restarts",
                Some(at(ours, 10)),
                false,
                restarted(second_restart, 1, true, false, true),
                u("the WAL was restarted or replaced while not pinned (salt-1 00000064 -> 00000066)"),
            ),
            (
                "WAL deleted by the last connection's close (one-shot writer)",
                Some(at(ours, 10)),
                false,
                gone.clone(),
                u("the WAL (checkpoint sequence 4) was truncated or deleted while not pinned"),
            ),
            (
                "fresh WAL after close and reopen",
                Some(at(ours, 10)),
                false,
                restarted(fresh, 2, false, false, false),
                u("the WAL was restarted or replaced while not pinned (salt-1 00000064 -> 0000dead)"),
            ),
            (
                "chain at an empty WAL, still empty: the database file must say",
                Some(none),
                false,
                gone.clone(),
                u("the WAL is empty, so only the database file can show what changed"),
            ),
            (
                "chain at an empty WAL, a WAL appeared",
                Some(none),
                false,
                restarted(fresh, 2, false, false, false),
                u("a WAL appeared that walsync did not see start"),
            ),
            (
                "database held everything, WAL empty again",
                Some(at(ours, 10)),
                true,
                same(0, true),
                u("the WAL is empty, so only the database file can show what changed"),
            ),
            (
                "database replaced",
                Some(at(ours, 10)),
                false,
                Found { db_replaced: true, ..same(12, true) },
                u("the database file was replaced"),
            ),
            (
                "header and wal-index disagree",
                Some(at(ours, 10)),
                false,
                Found { index_salts: (1, 2), ..same(12, true) },
                u("the WAL header does not match SQLite's wal-index"),
            ),
        ];
        for (name, pos, at_db, found, want) in cases {
            assert_eq!(decide(pos.as_ref(), at_db, &found), want, "{name}");
        }
    }
}
