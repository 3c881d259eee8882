//! Issue #5: property-based fuzzing (proptest) of what walsync parses: the WAL header, WAL
//! files walked frame by frame, segments read back at restore, the wal-index header, and the
//! config loader. Inputs are random bytes and mutations (byte flips, truncations, spliced
//! bytes, extreme length fields) of real files written by SQLite. Properties: no panic; no
//! allocation driven by an unchecked length (a frame buffer is at most 64 KiB + 24); any
//! single flipped byte in a segment is rejected; config errors are one line naming the file.
//!
//! CI runs the default 256 cases per property; `PROPTEST_CASES=100000 cargo test --release
//! --test tests fuzz` runs longer.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use rusqlite::Connection;
use walsync::wal::header::WalHeader;
use walsync::wal::{reader, segment, shm};

/// A real WAL, cut at its last commit (so it is a valid segment), written once by SQLite.
fn real_segment() -> &'static Vec<u8> {
    static SEG: OnceLock<Vec<u8>> = OnceLock::new();
    SEG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("walsync-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let db = dir.join("f.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(a INTEGER PRIMARY KEY, b BLOB);",
        )
        .unwrap();
        for i in 0..6 {
            c.execute("INSERT INTO t(b) VALUES (randomblob(?1))", [200 + i * 300])
                .unwrap();
        }
        let wal = fs::read(dir.join("f.db-wal")).unwrap();
        drop(c);
        let _ = fs::remove_dir_all(&dir);
        let hdr = WalHeader::parse(&wal[..32]).unwrap();
        let mut out = Vec::new();
        let (h, n) = segment::read_segment(&mut &wal[..], |_, _| Ok(())).unwrap();
        assert_eq!(h.page_size, hdr.page_size);
        out.extend_from_slice(&wal[..(32 + n as u64 * hdr.frame_len()) as usize]);
        out
    })
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("walsync-fuzz-files-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let n = std::thread::current()
        .name()
        .unwrap_or("t")
        .replace("::", "-");
    let p = dir.join(format!("{n}-{name}"));
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(bytes).unwrap();
    p
}

/// Mutations of a byte string: flip, overwrite with an extreme value, truncate, splice.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Extreme(usize, u32),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u32),
                Just(u32::MAX),
                Just(0x8000_0000),
                Just(65537),
                Just(1)
            ]
        )
            .prop_map(|(i, v)| Mutation::Extreme(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(i, v)| Mutation::Splice(i, v)),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, x) => {
                let i = i % b.len();
                b[i] ^= x;
            }
            Mutation::Extreme(i, v) => {
                let i = (i % b.len()) & !3;
                let end = (i + 4).min(b.len());
                b[i..end].copy_from_slice(&v.to_be_bytes()[..end - i]);
            }
            Mutation::Truncate(i) => {
                let n = i % b.len();
                b.truncate(n);
            }
            Mutation::Splice(i, v) => {
                let i = i % b.len();
                b.splice(i..i, v.iter().copied());
            }
        }
    }
    b
}

proptest! {
    #[test]
    fn wal_header_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 32)) {
        if let Ok(h) = WalHeader::parse(&b) {
            prop_assert!(h.page_size.is_power_of_two() && (512..=65536).contains(&h.page_size));
            prop_assert!(h.frame_len() <= 65536 + 24);
        }
    }

    #[test]
    fn segment_reader_survives_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = segment::read_segment(&mut &b[..], |_, data| {
            assert!(data.len() <= 65536);
            Ok(())
        });
    }

    #[test]
    fn any_flipped_byte_in_a_segment_is_rejected(i in any::<usize>(), x in 1u8..=255) {
        let mut b = real_segment().clone();
        let i = i % b.len();
        b[i] ^= x;
        let r = segment::read_segment(&mut &b[..], |_, _| Ok(()));
        prop_assert!(r.is_err(), "flip of byte {} by {:#x} was accepted", i, x);
    }

    #[test]
    fn mutated_segments_never_panic(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(real_segment().clone(), &muts);
        let _ = segment::read_segment(&mut &b[..], |_, _| Ok(()));
    }

    #[test]
    fn wal_walk_stops_cleanly_on_mutated_files(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(real_segment().clone(), &muts);
        let p = scratch("wal", &b);
        if let Ok(Some((f, hdr))) = reader::read_header(&p) {
            let mut frames = 0u32;
            let w = reader::walk(&f, &p, &hdr, reader::start(&hdr), None, |_, _, data| {
                assert_eq!(data.len() as u32, hdr.page_size);
                frames += 1;
                Ok(())
            });
            let w = w.unwrap();
            prop_assert!(w.end.frame <= frames);
        }
    }

    #[test]
    fn wal_index_reader_survives_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let p = scratch("shm", &b);
        let f = fs::File::open(&p).unwrap();
        let _ = shm::read(&f, &p);
    }

    #[test]
    fn config_loader_errors_are_one_line(text in config_text()) {
        let file = std::path::Path::new("/etc/walsync/fuzz.toml");
        if let Err(e) = walsync::config::parse(file, &text) {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'), "multi-line error: {msg}");
            prop_assert!(msg.contains("fuzz.toml"), "error does not name the file: {msg}");
        }
    }
}

/// Random text and mutations of a valid config: keys, values, brackets and quotes cut and
/// shuffled.
fn config_text() -> impl Strategy<Value = String> {
    let valid = "[storage]\nbucket = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9000\"\n\n[defaults]\nsync_interval = \"1s\"\nsnapshot_interval = \"1h\"\n\n[[databases]]\npath = \"/srv/a.db\"\nprefix = \"a\"\n\n[[databases]]\ndir = \"/srv/t\"\npattern = \"*.db\"\nprefix = \"t\"\n";
    prop_oneof![
        ".{0,300}",
        proptest::collection::vec(mutation(), 1..5).prop_map(move |m| {
            String::from_utf8_lossy(&apply(valid.as_bytes().to_vec(), &m)).into_owned()
        }),
        proptest::collection::vec(
            prop_oneof![
                Just("[storage]\n"),
                Just("[defaults]\n"),
                Just("[[databases]]\n"),
                Just("bucket = \"x\"\n"),
                Just("path = \"/a.db\"\n"),
                Just("dir = \"/d\"\n"),
                Just("pattern = \"*\"\n"),
                Just("prefix = \"p\"\n"),
                Just("prefix = \"\"\n"),
                Just("sync_interval = \"-1s\"\n"),
                Just("sync_interval = \"99999999999999h\"\n"),
                Just("snapshot_interval = 5\n"),
                Just("bucket = \"${NOPE}\"\n"),
                Just("unknown = 1\n"),
                Just("\"\n"),
                Just("=\n"),
                Just("[\n"),
            ],
            0..12
        )
        .prop_map(|v| v.concat()),
    ]
}

/// A namespace: one to four path components of arbitrary printable text (including
/// `snapshots`, `wal`, dots, spaces and non-ASCII), never empty.
fn namespace() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        Just("snapshots".to_string()),
        Just("wal".to_string()),
        Just("a.db".to_string()),
        Just("x y".to_string()),
        Just("tën-ants".to_string()),
        "[^/\u{0}]{1,12}",
    ];
    proptest::collection::vec(component, 1..5).prop_map(|v| v.join("/"))
}

proptest! {
    /// Issue #12 finding 1: keys parse back to exactly what made them, whatever the namespace.
    #[test]
    fn object_keys_round_trip_for_any_namespace(
        ns in namespace(),
        gen in any::<u32>(),
        ts in 0u64..253_402_300_799_999,
    ) {
        use walsync::layout::{parse_key, segment_key, snapshot_key, Kind};
        let ts = walsync::time::Stamp::from_ms(ts);
        let (n, o) = parse_key(&snapshot_key(&ns, ts), 7).expect("snapshot key parses");
        prop_assert_eq!(&n, &ns);
        prop_assert_eq!((o.ts, o.kind, o.size), (ts, Kind::Snapshot, 7));
        let (n, o) = parse_key(&segment_key(&ns, gen, ts), 9).expect("segment key parses");
        prop_assert_eq!(&n, &ns);
        prop_assert_eq!((o.ts, o.kind), (ts, Kind::Segment { gen }));
    }

    /// Issue #12 finding 3: stray keys and timestamps of any text never panic.
    #[test]
    fn key_and_time_parsers_never_panic(s in "\\PC{0,40}", t in "[0-9é:T.Z+-]{0,30}") {
        let _ = walsync::layout::parse_key(&s, 0);
        let _ = walsync::layout::parse_key(&format!("x/snapshots/{t}.db"), 0);
        let _ = walsync::layout::parse_key(&format!("x/wal/{t}-{t}.wal"), 0);
        let _ = walsync::time::Stamp::parse_iso(&t);
        let _ = walsync::time::Stamp::parse_iso(&s);
        let _ = walsync::time::Stamp::parse_key(&t);
    }

    /// Metadata values of any text never panic the position reader.
    #[test]
    fn position_metadata_never_panics(salt in "\\PC{0,20}", cksum in "\\PC{0,20}") {
        let mut m = walsync::layout::Meta::new();
        for (k, v) in [("gen", "3"), ("magic", "377f0682"), ("page-size", "4096"), ("seq", "1"),
                       ("frame", "2"), ("db-pages", "5"), ("hdr-cksum", "0011223344556677")] {
            m.insert(k.into(), v.into());
        }
        m.insert("salt".into(), salt);
        m.insert("cksum".into(), cksum);
        let _ = walsync::layout::get_position(&m);
    }
}

#[test]
fn stray_non_ascii_keys_and_times_are_rejected() {
    assert_eq!(walsync::time::Stamp::parse_iso("2026-11-2é"), None);
    assert!(walsync::layout::parse_key("x/snapshots/20261é1220004051.db", 0).is_none());
    assert!(walsync::layout::parse_key("x/wal/+0000001-20261203085034464.wal", 0).is_none());
    let (ns, _) =
        walsync::layout::parse_key("team/snapshots/wal/snapshots/20261203085034464.db", 0).unwrap();
    assert_eq!(ns, "team/snapshots/wal");
    for bad in ["../x", "a/../b", "/abs", "a//b", ".", ""] {
        assert!(!walsync::layout::is_plain_relative(bad), "{bad}");
    }
    assert!(walsync::layout::is_plain_relative("tenants/a b/ü"));
}
