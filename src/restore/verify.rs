//! `verify`: every object of a namespace fetched (ahead, as a restore does) and checked: its
//! SHA-256, its format, and that the chain has no gap.

use std::io;

use super::read::{need, read_segment_body, with_body, Checked};
use super::{ahead, objects_of_backup, ChainCheck};
use crate::dbfile;
use crate::error::{Error, Result};
use crate::layout::{self, Kind, Object};
use crate::storage::Storage;
use crate::time::Stamp;

/// Result of `verify`.
pub struct Verified {
    pub objects: usize,
    pub snapshots: usize,
    pub segments: usize,
    pub latest: Option<Stamp>,
}

/// Check every object's SHA-256 and format, and that the chain has no gap: each snapshot either
/// starts a chain or continues the current one, each segment follows the object before it.
pub fn verify(storage: &dyn Storage, ns: &str) -> Result<Verified> {
    let objs = objects_of_backup(storage, ns)?;
    let keys: Vec<(String, u64)> = objs.iter().map(|o| (o.key.clone(), o.size)).collect();
    let (snaps, segs) = ahead::with_ahead(storage, &keys, None, |next| {
        verify_chain(storage, &objs, next)
    })?;
    Ok(Verified {
        objects: objs.len(),
        snapshots: snaps,
        segments: segs,
        latest: objs.last().map(|o| o.ts),
    })
}

/// `verify`'s walk over the fetched objects: (snapshots, segments) checked.
fn verify_chain(
    storage: &dyn Storage,
    objs: &[Object],
    next: &mut ahead::Ahead,
) -> Result<(usize, usize)> {
    let backend = storage.describe();
    let mut chain: Option<ChainCheck> = None;
    let (mut snaps, mut segs) = (0, 0);
    for o in objs {
        let first = next
            .next()
            .ok_or_else(|| Error::integrity(&o.key, "was not fetched"))?;
        with_body(storage, &o.key, first, |body| {
            match o.kind {
                Kind::Snapshot => {
                    let want = need(&body.meta, &o.key, layout::SHA256)?.clone();
                    let mut r = Checked::new(body.reader, body.size);
                    let mut head = [0u8; 100];
                    let n = read_up_to(&mut r, &mut head).unwrap_or(0);
                    let got = r.finish(&backend, &o.key, &want)?;
                    let Some(h) = dbfile::Header::parse(&head[..n]) else {
                        return Err(Error::integrity(&o.key, "is not a SQLite database"));
                    };
                    if let (Some(c), Some(prev)) = (&chain, body.meta.get(layout::PREV)) {
                        if *prev != c.anchor {
                            return Err(Error::integrity(
                                &o.key,
                                "does not follow the object before it (a gap in the chain)",
                            ));
                        }
                    }
                    chain = Some(ChainCheck::start(&o.key, &body.meta, &got, h.page_size)?);
                    snaps += 1;
                }
                Kind::Segment { .. } => {
                    let Some(c) = chain.as_mut() else {
                        return Err(Error::integrity(&o.key, "comes before any snapshot"));
                    };
                    let pos = c.check_links(&o.key, &body.meta)?;
                    let (_, _, got) = read_segment_body(body, &backend, &o.key, |_, _| Ok(()))?;
                    c.advance(got, pos);
                    segs += 1;
                }
            }
            Ok(())
        })?;
    }
    Ok((snaps, segs))
}

fn read_up_to(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
