//! The database-file proof (issue #11): when the WAL cannot say where the chain stands,
//! compare the pinned database with the page map of the chain's state and ship what changed
//! as a bridge segment (see `bridge`), or fall back to a new generation; and keeping the page
//! map and the database file's recorded facts up to date.

use super::*;

impl Shipper {
    /// Continuity is unproven (`why`): prove the chain from the database file and ship what
    /// changed (a bridge segment), or else start a new generation with a snapshot. Returns
    /// whether a snapshot was taken.
    pub(super) fn recover(&mut self, why: &str, report: &mut StepReport) -> Result<bool> {
        if self.chain.is_some() {
            if self
                .pin
                .as_ref()
                .is_some_and(|p| file_id(&self.path) != p.db_id)
            {
                self.release(); // our connection still reads the file that was replaced
            }
            match self.try_bridge(why, report)? {
                Ok(()) => return Ok(false),
                Err(reason) => {
                    self.new_generation(&format!("{why}; {reason}"))?;
                    return Ok(true);
                }
            }
        }
        self.new_generation(why)?;
        Ok(true)
    }

    /// Pin, compare the database with the page map of the chain's state, and capture the
    /// difference (see `bridge`). `Ok(Err(reason))` when it cannot, and a snapshot is needed.
    pub(super) fn try_bridge(
        &mut self,
        why: &str,
        report: &mut StepReport,
    ) -> Result<std::result::Result<(), String>> {
        let idx = self.pin_exact()?;
        let chain = self.chain.clone().expect("recover checked the chain");
        let pin = self.pin.as_ref().expect("pinned");
        let ps = dbfile::page_size(&pin.db, &self.path)?;
        let Some(mut map) = PageMap::open(&self.spool, &chain.last_sha, ps)? else {
            return Ok(Err(
                "no page map of the chain's state to compare the database file with".into(),
            ));
        };
        let cur = reader::read_header(&self.wal_path)?;
        let live = self.live_wal(&idx, ps, &cur)?;
        let live_frames = live.as_ref().map(|l| l.max_frame);
        let facts = FileFacts::of(&pin.db);
        let diff = !facts.is_some_and(|f| map.proves_unchanged(&f));
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let tmp = self
            .spool
            .join(format!("bridge-{}.tmp", std::process::id()));
        let t0 = Instant::now();
        let outcome = bridge::build(&pin.db, &self.path, &mut map, live, diff, &tmp)?;
        let secs = t0.elapsed().as_secs_f64();
        // The file just compared is the database from now on (it may be one that replaced
        // the file walsync knew): later proofs compare against it, not against the old one.
        let proven_id = pin.db_id;
        let b = match outcome {
            Outcome::TooLarge { changed, pages } => {
                PageMap::remove(&self.spool);
                return Ok(Err(format!(
                    "{changed} or more of {pages} pages changed, so a snapshot is smaller"
                )));
            }
            Outcome::Unchanged { read } => {
                map.finish(&chain.last_sha)?;
                self.db_id = proven_id;
                // Pinned on an empty WAL: no checkpoint can write the file while we read it.
                if let Some(f) = facts {
                    map.record_facts(f, &chain.last_sha)?;
                }
                debug!(
                    "db={} {why}: the database file proves nothing changed (read {} in {secs:.3}s)",
                    self.path.display(),
                    mb(read)
                );
                self.chain.as_mut().expect("chain").at_db = true;
                return Ok(Ok(()));
            }
            Outcome::Built(b) => b,
        };
        self.db_id = proven_id;
        let proven = Proven {
            b,
            tmp,
            map,
            facts,
            prev_sha: chain.last_sha,
            live_frames,
            secs,
        };
        self.queue_bridge(proven, why, report)?;
        Ok(Ok(()))
    }

    /// The live WAL a bridge appends after the changed pages: none when the pin is on an
    /// empty WAL, else the file SQLite's wal-index describes (busy when they disagree).
    fn live_wal<'a>(
        &'a self,
        idx: &WalIndex,
        ps: u32,
        cur: &'a Option<(File, WalHeader)>,
    ) -> Result<Option<Live<'a>>> {
        match cur {
            _ if idx.max_frame == 0 => Ok(None),
            Some((f, h)) if (h.salt1, h.salt2) == (idx.salt1, idx.salt2) && h.page_size == ps => {
                Ok(Some(Live {
                    file: f,
                    path: &self.wal_path,
                    hdr: *h,
                    max_frame: idx.max_frame,
                    cksum: idx.cksum,
                }))
            }
            _ => Err(Error::Busy {
                what: format!(
                    "WAL {} does not match SQLite's wal-index while pinned",
                    self.wal_path.display()
                ),
            }),
        }
    }

    /// A built bridge into the outbox as the first segment of a new generation; the chain,
    /// the page map and the pin's WAL stand where it ends.
    fn queue_bridge(&mut self, p: Proven, why: &str, report: &mut StepReport) -> Result<()> {
        let Proven {
            b,
            tmp,
            mut map,
            facts,
            prev_sha,
            live_frames,
            secs,
        } = p;
        let gen = self.new_gen();
        let ts = self.next_ts();
        let key = layout::segment_key(&self.ns, gen, ts);
        let dst = self.spool.join(format!("{gen:08x}-{}.wal", ts.key()));
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename spool file", &dst, e))?;
        map.finish(&b.sha)?;
        if let (Some(f), None) = (facts, live_frames) {
            map.record_facts(f, &b.sha)?;
        }
        let end = b.end.unwrap_or(WalEnd {
            frame: b.frames,
            cksum: b.seg_cksum,
            db_pages: b.pages,
        });
        let pos = Position {
            gen,
            wal: Some((b.hdr, end)),
        };
        let mut meta = Meta::new();
        meta.insert(layout::SHA256.into(), b.sha.clone());
        meta.insert(layout::PREV.into(), prev_sha);
        meta.insert(layout::FIRST.into(), "1".into());
        meta.insert(layout::SOURCE.into(), self.source.clone());
        meta.insert(layout::BASE.into(), layout::BASE_DB.into());
        meta.insert(layout::BRIDGE.into(), b.changed.to_string());
        layout::put_position(&mut meta, &pos);
        info!(
            "db={} {why}: proven from the database file: {} changed page(s) of {}{} shipped as {key} in generation {gen} (read {} in {secs:.3}s)",
            self.path.display(),
            b.changed,
            b.pages,
            live_frames.map_or(String::new(), |_| format!(" and WAL frames 1..{}", b.wal_frames)),
            mb(b.read)
        );
        self.outbox.push(Pending {
            file: dst,
            key,
            meta,
            len: b.len,
            append: None,
            queued: None,
        });
        self.chain = Some(Chain {
            pos,
            last_sha: b.sha,
            at_db: live_frames.is_none(),
        });
        if let Some(frames) = live_frames {
            self.wal_frames = frames;
            self.checkpointed_at = 0;
        }
        let wal_id = file_id(&self.wal_path);
        self.pin.as_mut().expect("pinned").wal_id = wal_id;
        self.changed_since_snapshot = true;
        self.last_frames_at = Instant::now();
        report.segments += 1;
        report.frames += b.frames;
        Ok(())
    }

    /// Bring the page map from chain tip `old` to `new` by the frames of the segment in
    /// `file` from byte `start` on. A map that does not describe `old` is removed: it can never be trusted again.
    pub(super) fn update_map(&self, old: &str, file: &Path, start: u64, page_size: u32, new: &str) {
        let r = (|| -> Result<bool> {
            let Some(mut map) = PageMap::open(&self.spool, old, page_size)? else {
                return Ok(false);
            };
            map.begin()?;
            map.apply_segment_frames(file, start)?;
            map.finish(new)?;
            Ok(true)
        })();
        match r {
            Ok(true) => {}
            Ok(false) => PageMap::remove(&self.spool),
            Err(e) => {
                warn!(
                    "db={} page map dropped ({e}); a later unproven change will cost a snapshot",
                    self.path.display()
                );
                PageMap::remove(&self.spool);
            }
        }
    }

    /// The chain's state is exactly the database file (pinned on an empty WAL, nothing
    /// captured since): record the file's identity and times in the page map, so that a later
    /// start or re-pin proves an unchanged file without reading it.
    pub(super) fn note_db_facts(&mut self) {
        let (Some(chain), Some(pin)) = (&self.chain, &self.pin) else {
            return;
        };
        if !chain.at_db {
            return;
        }
        if !shm::read(&pin.shm, &self.shm_path).is_ok_and(|i| i.is_some_and(|i| i.max_frame == 0)) {
            return;
        }
        let Ok(ps) = dbfile::page_size(&pin.db, &self.path) else {
            return;
        };
        if let (Ok(Some(mut map)), Some(f)) = (
            PageMap::open(&self.spool, &chain.last_sha, ps),
            FileFacts::of(&pin.db),
        ) {
            let _ = map.record_facts(f, &chain.last_sha);
        }
    }

    /// The page map of a snapshot just taken (kept as it is when it already describes that
    /// state); with `at_db`, the database file holds that state too: record its facts.
    pub(super) fn snapshot_map(&self, file: &Path, tag: &str, at_db: bool) {
        let pin = self.pin.as_ref().expect("snapshot needs a pin");
        let r = (|| -> Result<()> {
            let ps = dbfile::page_size(&pin.db, &self.path)?;
            let mut map = match PageMap::open(&self.spool, tag, ps)? {
                Some(m) => m,
                None => PageMap::build(&self.spool, file, ps, tag)?,
            };
            if let (true, Some(f)) = (at_db, FileFacts::of(&pin.db)) {
                map.record_facts(f, tag)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            warn!(
                "db={} no page map ({e}); a later unproven change will cost a snapshot",
                self.path.display()
            );
            PageMap::remove(&self.spool);
        }
    }
}

/// A built bridge on its way into the outbox: the segment, the page map it leaves, what proved
/// it and where the chain stood before it.
struct Proven {
    b: bridge::Built,
    tmp: PathBuf,
    map: PageMap,
    facts: Option<FileFacts>,
    prev_sha: String,
    /// The live WAL frames it carries (None: the database file alone).
    live_frames: Option<u32>,
    secs: f64,
}
