//! Issue #2, test 6: the WAL reader against WAL files written by real SQLite at every page size
//! from 512 to 65536, including torn final frames, flipped bytes, truncation at every frame
//! boundary, and big-endian checksums (re-encoded, then accepted by SQLite itself).

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use walsync::wal::header::{FrameHeader, WalHeader, MAGIC_BE};
use walsync::wal::reader;
use walsync::wal::segment::{read_segment, SegmentWriter};

use crate::harness::*;

/// A database and its WAL, copied while the writer still had them open (SQLite deletes the WAL
/// on the last close). Returns (db copy, wal copy, live database path, commits written).
fn make_wal(t: &TestDir, page_size: u32) -> (PathBuf, PathBuf, PathBuf, u32) {
    let src = t.join(&format!("src-{page_size}.db"));
    let c = Connection::open(&src).unwrap();
    c.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
    ))
    .unwrap();
    c.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    // Make sure the schema sits in the database file so the WAL holds only our transactions.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let mut commits = 0;
    for i in 0..12u32 {
        let tx = c.unchecked_transaction().unwrap();
        for j in 0..(1 + i % 4) {
            tx.execute(
                "INSERT INTO t(b) VALUES (randomblob(?1))",
                [(i * 700 + j * 300) as i64 % 5000 + 10],
            )
            .unwrap();
        }
        if i % 5 == 4 {
            tx.execute("DELETE FROM t WHERE a % 3 = 0", []).unwrap();
        }
        tx.commit().unwrap();
        commits += 1;
    }
    let db = t.join(&format!("copy-{page_size}.db"));
    let wal = t.join(&format!("copy-{page_size}.db-wal"));
    fs::copy(&src, &db).unwrap();
    fs::copy(t.join(&format!("src-{page_size}.db-wal")), &wal).unwrap();
    std::mem::forget(c); // keep the WAL in place for as long as the test runs
    (db, wal, src, commits)
}

fn walk_all(path: &Path) -> (WalHeader, reader::Walk, Vec<(u32, FrameHeader)>) {
    let (f, hdr) = reader::read_header(path).unwrap().expect("valid header");
    let mut frames = Vec::new();
    let w = reader::walk(&f, path, &hdr, reader::start(&hdr), None, |i, fh, _| {
        frames.push((i, *fh));
        Ok(())
    })
    .unwrap();
    (hdr, w, frames)
}

/// The last commit frame at or before frame `n`.
fn last_commit_upto(frames: &[(u32, FrameHeader)], n: u32) -> u32 {
    frames
        .iter()
        .filter(|(i, fh)| *i <= n && fh.is_commit())
        .map(|(i, _)| *i)
        .max()
        .unwrap_or(0)
}

#[test]
fn real_wal_files_at_every_page_size() {
    let t = TestDir::new("walreader");
    for ps in [512u32, 1024, 2048, 4096, 8192, 16384, 32768, 65536] {
        let (_db, wal, _src, commits) = make_wal(&t, ps);
        let bytes = read(&wal);
        let (hdr, w, frames) = walk_all(&wal);
        assert_eq!(hdr.page_size, ps);
        let frame_len = 24 + ps as usize;
        let n_frames = ((bytes.len() - 32) / frame_len) as u32;
        assert_eq!(
            frames.len() as u32,
            n_frames,
            "page size {ps}: every frame valid"
        );
        assert_eq!(w.end.frame, n_frames, "the last frame is a commit");
        assert_eq!(w.stop, None);
        assert_eq!(
            frames.iter().filter(|(_, f)| f.is_commit()).count() as u32,
            commits
        );
        assert!(reader::holds(&fs::File::open(&wal).unwrap(), &wal, &hdr, &w.end).unwrap());

        // Truncation at every frame boundary, and torn frames in the middle of each frame.
        for k in 0..=n_frames {
            for extra in [0usize, 24 + ps as usize / 2] {
                let cut = 32 + k as usize * frame_len + extra;
                if cut > bytes.len() {
                    continue;
                }
                let p = t.join("cut.wal");
                fs::write(&p, &bytes[..cut]).unwrap();
                let (_, w, _) = walk_all(&p);
                assert_eq!(
                    w.end.frame,
                    last_commit_upto(&frames, k),
                    "ps {ps} cut after frame {k} + {extra}"
                );
            }
        }

        // A flipped byte in frame k's page, or in its header, stops the walk before frame k.
        for k in [1, n_frames / 2 + 1, n_frames] {
            for off in [24 + 100usize, 2] {
                let mut b = bytes.clone();
                b[32 + (k as usize - 1) * frame_len + off] ^= 0x40;
                let p = t.join("flip.wal");
                fs::write(&p, &b).unwrap();
                let (_, w, _) = walk_all(&p);
                assert_eq!(
                    w.end.frame,
                    last_commit_upto(&frames, k - 1),
                    "ps {ps} flip in frame {k} at {off}"
                );
                assert!(w.stop.is_some());
            }
        }

        // A frame with another WAL's salt is not part of this WAL.
        let mut b = bytes.clone();
        b[32 + 8] ^= 1;
        let p = t.join("salt.wal");
        fs::write(&p, &b).unwrap();
        let (_, w, _) = walk_all(&p);
        assert_eq!(w.end.frame, 0);
        assert_eq!(w.stop, Some("frame salt does not match the WAL header"));

        // A flipped header byte makes the whole WAL invalid (SQLite ignores it too).
        let mut b = bytes.clone();
        b[13] ^= 1;
        fs::write(&p, &b).unwrap();
        assert!(reader::read_header(&p).unwrap().is_none());
    }
}

/// Frames re-encoded as a standalone WAL with big-endian checksums are valid for our reader
/// and for SQLite, which applies them and ends with the same database as the original.
#[test]
fn segments_with_either_byte_order_are_accepted_by_sqlite() {
    let t = TestDir::new("walbe");
    for ps in [512u32, 4096, 65536] {
        let (db, wal, src, _) = make_wal(&t, ps);
        let (hdr, w, _) = walk_all(&wal);
        let f = fs::File::open(&wal).unwrap();
        for magic in [hdr.magic, MAGIC_BE] {
            let seg_hdr = WalHeader { magic, ..hdr };
            let mut out = Vec::new();
            let mut sw = SegmentWriter::new(&seg_hdr, &mut out).unwrap();
            reader::walk(&f, &wal, &hdr, reader::start(&hdr), None, |_, fh, page| {
                sw.frame(&mut out, fh, page).unwrap();
                Ok(())
            })
            .unwrap();
            assert_eq!(sw.committed_frames, w.end.frame);
            let (got_hdr, n) = read_segment(&mut &out[..], |_, _| Ok(())).unwrap();
            assert_eq!((got_hdr.magic, n), (magic, w.end.frame));
            // Apply with SQLite itself.
            let target = t.join(&format!("apply-{ps}-{magic:x}.db"));
            fs::copy(&db, &target).unwrap();
            fs::write(t.join(&format!("apply-{ps}-{magic:x}.db-wal")), &out).unwrap();
            let c = Connection::open(&target).unwrap();
            let r: (i64, i64, i64) = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(r, (0, 0, 0));
            drop(c);
            assert_eq!(
                content_hash(&target),
                content_hash(&src),
                "ps {ps} magic {magic:x}"
            );
        }
        // A segment that ends before its last commit frame is rejected.
        let mut out = Vec::new();
        let mut sw = SegmentWriter::new(&hdr, &mut out).unwrap();
        let mut first = true;
        reader::walk(&f, &wal, &hdr, reader::start(&hdr), None, |_, fh, page| {
            if first {
                let nc = FrameHeader { commit: 0, ..*fh };
                sw.frame(&mut out, &nc, page).unwrap();
                first = false;
            }
            Ok(())
        })
        .unwrap();
        let err = read_segment(&mut &out[..], |_, _| Ok(())).unwrap_err();
        assert_eq!(
            err,
            "segment ends with frame 1, which is not a commit frame"
        );
    }
}
