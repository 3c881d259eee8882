//! The restored file's pages as the segments bring them, each written once per batch: a page
//! that changes in many segments (a hot table's leaf, the schema page) is written only in its
//! newest version, and the batch goes to disk in page order. Bounded: a batch is written out
//! once it holds `BATCH_BYTES` of pages.
//!
//! The result is the file that writing every frame in order would give: a commit that shrinks
//! the database writes out the batch first (its pages past the new end dropped) and cuts the
//! file there at once, so that a later commit growing it again finds zeros past the cut, as
//! before; growth and the last size are applied when a batch is written out at a commit. A
//! batch that fills up in the middle of a transaction is written without touching the file's
//! length: the transaction's pages may lie past the last commit's end, and its own commit
//! sets the length.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Pages held before a batch is written out.
const BATCH_BYTES: usize = 32 << 20;

pub struct Pages<'a> {
    out: &'a File,
    page_size: u64,
    /// Bytes of pages held before the batch is written out.
    cap: usize,
    batch: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    /// The database size in pages after the last commit seen, and the file's length in pages
    /// (as last set, or as pages written past it made it).
    size: Option<u32>,
    file_pages: u64,
    /// Page writes saved by the batching, for the log.
    pub rewrites: u64,
}

impl<'a> Pages<'a> {
    pub fn new(out: &'a File, page_size: u32) -> io::Result<Self> {
        Self::with_cap(out, page_size, BATCH_BYTES)
    }

    fn with_cap(out: &'a File, page_size: u32, cap: usize) -> io::Result<Self> {
        let ps = page_size as u64;
        Ok(Pages {
            out,
            page_size: ps,
            cap,
            batch: BTreeMap::new(),
            bytes: 0,
            size: None,
            file_pages: out.metadata()?.len() / ps,
            rewrites: 0,
        })
    }

    /// Page `pgno` (1-based) now holds `page`.
    pub fn put(&mut self, pgno: u32, page: &[u8]) -> io::Result<()> {
        match self.batch.get_mut(&pgno) {
            Some(old) => {
                old.copy_from_slice(page);
                self.rewrites += 1;
            }
            None => {
                self.batch.insert(pgno, page.to_vec());
                self.bytes += page.len();
            }
        }
        if self.bytes >= self.cap {
            self.write_batch()?;
        }
        Ok(())
    }

    /// A commit: the database is now `pages` pages long.
    pub fn commit(&mut self, pages: u32) -> io::Result<()> {
        self.size = Some(pages);
        if (pages as u64) < self.file_pages || self.batch.keys().next_back() > Some(&pages) {
            // Shrinking: what lies past the new end is gone, now.
            let dropped = self.batch.split_off(&(pages + 1));
            self.bytes -= dropped.values().map(Vec::len).sum::<usize>();
            self.flush()?;
        }
        Ok(())
    }

    /// Write the batch out, in page order, leaving the file's length to the next commit.
    fn write_batch(&mut self) -> io::Result<()> {
        for (pgno, page) in std::mem::take(&mut self.batch) {
            self.out
                .write_all_at(&page, (pgno as u64 - 1) * self.page_size)?;
            self.file_pages = self.file_pages.max(pgno as u64);
        }
        self.bytes = 0;
        Ok(())
    }

    /// At a commit (or after the last one): write the batch out and give the file the last
    /// commit's size.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_batch()?;
        if let Some(n) = self.size {
            self.out.set_len(n as u64 * self.page_size)?;
            self.file_pages = n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched file equals the file written frame by frame, for every sequence of
    /// writes, growth and shrinking in the table.
    #[test]
    fn same_file_as_writing_every_frame() {
        let dir = std::env::temp_dir().join(format!("walsync-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // (page, fill byte) writes; a 0 page is a commit of that many pages (the fill).
        let cases: &[&[(u32, u8)]] = &[
            &[(1, 1), (2, 2), (1, 3), (0, 2)],
            // Shrink to 2 then grow to 4 without writing page 3: zeros there.
            &[(3, 9), (4, 9), (0, 4), (1, 5), (0, 2), (4, 6), (0, 4)],
            // A page written, dropped by a shrink in the same batch, written again.
            &[(5, 1), (0, 5), (0, 3), (5, 2), (0, 5)],
            &[(2, 7), (2, 8), (2, 9), (0, 6)],
            // A transaction growing the database past the last commit's end.
            &[
                (1, 1),
                (0, 8),
                (9, 2),
                (10, 3),
                (0, 10),
                (11, 4),
                (12, 5),
                (0, 12),
            ],
            // Grown, then pages past the end written and cut by the same transaction.
            &[(0, 8), (9, 1), (10, 2), (11, 3), (0, 9), (10, 4), (0, 10)],
        ];
        // Each case also with a batch of one page: written out in the middle of transactions.
        for (i, (case, cap)) in cases
            .iter()
            .flat_map(|c| [(c, BATCH_BYTES), (c, 16)])
            .enumerate()
        {
            let ps = 16u32;
            let start: Vec<u8> = (0..8 * ps).map(|b| (b % 251) as u8).collect();
            let (a, b) = (dir.join(format!("a{i}")), dir.join(format!("b{i}")));
            std::fs::write(&a, &start).unwrap();
            std::fs::write(&b, &start).unwrap();
            let fa = File::options().write(true).open(&a).unwrap();
            let fb = File::options().write(true).open(&b).unwrap();
            let mut pages = Pages::with_cap(&fb, ps, cap).unwrap();
            for &(pg, fill) in case.iter() {
                if pg == 0 {
                    fa.set_len(fill as u64 * ps as u64).unwrap();
                    pages.commit(fill as u32).unwrap();
                } else {
                    let page = vec![fill; ps as usize];
                    fa.write_all_at(&page, (pg as u64 - 1) * ps as u64).unwrap();
                    pages.put(pg, &page).unwrap();
                }
            }
            pages.flush().unwrap();
            assert_eq!(
                std::fs::read(&a).unwrap(),
                std::fs::read(&b).unwrap(),
                "case {i}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
