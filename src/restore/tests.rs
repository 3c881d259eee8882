//! Unit tests of the module beside it.

use super::*;
use crate::wal::{Checksum, WalEnd, WalHeader};

fn hdr(seq: u32, salt1: u32) -> WalHeader {
    WalHeader {
        magic: 0x377f_0682,
        page_size: 4096,
        seq,
        salt1,
        salt2: 7,
        cksum: Checksum(1, 2),
    }
}

fn end(frame: u32) -> WalEnd {
    WalEnd {
        frame,
        cksum: Checksum(frame, frame),
        db_pages: 10,
    }
}

/// Metadata of an object at `gen`, WAL cycle `h` ending at frame `last`, first frame
/// `first`, linked to `prev`.
fn seg(gen: u32, h: WalHeader, first: u32, last: u32, prev: &str, base_db: bool) -> Meta {
    let mut m = Meta::new();
    layout::put_position(
        &mut m,
        &Position {
            gen,
            wal: Some((h, end(last))),
        },
    );
    m.insert(layout::FIRST.into(), first.to_string());
    m.insert(layout::PREV.into(), prev.into());
    if base_db {
        m.insert(layout::BASE.into(), layout::BASE_DB.into());
    }
    m
}

/// The chain check's rules, one row each: which segment may follow a chain at
/// (generation 2, cycle seq 1 / salt 100, frame 10), anchored at "s0". (Long because it is
/// the table: one rule per row.)
#[test]
fn chain_links() {
    let at = hdr(1, 100);
    let restart = hdr(2, 101);
    let mut snap = Meta::new();
    layout::put_position(
        &mut snap,
        &Position {
            gen: 2,
            wal: Some((at, end(10))),
        },
    );
    let rows: Vec<(&str, Meta, Option<&str>)> = vec![
        ("the next frames of the same cycle", seg(2, at, 11, 20, "s0", false), None),
        (
            "a gap inside the cycle",
            seg(2, at, 12, 20, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
        (
            "frames we already have",
            seg(2, at, 10, 20, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
        (
            "another object's successor",
            seg(2, at, 11, 20, "other", false),
            Some("does not follow the object before it (a gap in the chain, or an object of another chain)"),
        ),
        (
            "same cycle but a new generation",
            seg(3, at, 11, 20, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
        ("a restart of our cycle, from its first frame, as a new generation", seg(3, restart, 1, 5, "s0", false), None),
        (
            "a restart not from frame 1",
            seg(3, restart, 2, 5, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
        (
            "a restart in the same generation",
            seg(2, restart, 1, 5, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
        (
            "an unrelated cycle",
            seg(3, hdr(9, 555), 1, 5, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
        ("an unrelated cycle following the database state (a bridge)", seg(3, hdr(9, 555), 1, 5, "s0", true), None),
        (
            "an end before its first frame",
            seg(2, at, 11, 10, "s0", false),
            Some("its WAL position does not continue the object before it"),
        ),
    ];
    for (why, meta, want) in rows {
        let c = ChainCheck::start("ns/snapshots/1.db", &snap, "s0", 4096).unwrap();
        let got = c.check_links("ns/wal/x.wal", &meta);
        match (want, got) {
            (None, Ok(pos)) => assert_eq!(pos, layout::get_position(&meta).unwrap(), "{why}"),
            (Some(msg), Err(e)) => assert_eq!(
                e.to_string(),
                format!("object ns/wal/x.wal: {msg}"),
                "{why}"
            ),
            (want, got) => panic!("{why}: wanted {want:?}, got {got:?}"),
        }
    }
    // A page size that differs from the snapshot's.
    let c = ChainCheck::start("ns/snapshots/1.db", &snap, "s0", 8192).unwrap();
    let e = c
        .check_links("ns/wal/x.wal", &seg(2, at, 11, 20, "s0", false))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "object ns/wal/x.wal: page size 4096 differs from the snapshot's 8192"
    );
    // An empty WAL at the snapshot: the next object must start a cycle at frame 1.
    let mut empty = Meta::new();
    layout::put_position(&mut empty, &Position { gen: 2, wal: None });
    let c = ChainCheck::start("ns/snapshots/1.db", &empty, "s0", 4096).unwrap();
    assert!(c
        .check_links("k", &seg(2, hdr(5, 9), 1, 3, "s0", false))
        .is_ok());
    assert!(c
        .check_links("k", &seg(2, hdr(5, 9), 4, 6, "s0", false))
        .is_err());
}
