//! Where the chain stands: learnt from the replica at start (from `state.json`, a listing of
//! what follows it and one HEAD), extended by
//! captures, and restarted as a new generation with a snapshot at an exact position when
//! continuity cannot be proven; periodic snapshots of a continuing chain.

use std::io::Read;

use super::*;

/// The newest object `state.json` named, with the chain's generation then.
struct Hint {
    obj: layout::Object,
    gen: u32,
}

/// What the start-up listing found: the newest object and its metadata, the highest generation.
#[derive(Default)]
struct Newest {
    obj: Option<layout::Object>,
    max_gen: u32,
    meta: Meta,
    /// How the listing went, for the log.
    how: String,
}

impl Shipper {
    /// Learn where the chain stands from the newest object in the replica. `state.json` names
    /// the newest object as of its writing, so the listing starts there (a GET, two LISTs of
    /// what came after it, one HEAD: the same few requests whatever the namespace's age);
    /// without it, or when the object it names is gone, the whole namespace is listed.
    pub(super) fn load(&mut self) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        // The lease first (`lease.rs`): the chain read next is then the one this walsync
        // continues, no other holder shipping after it.
        self.outbox.keep_lease()?;
        let Newest {
            obj: newest,
            max_gen,
            meta,
            how,
        } = self.find_newest()?;
        self.max_gen = max_gen;
        if let Some(o) = newest {
            self.last_ts = o.ts;
            self.refuse_other_source(&o, &meta)?;
            match (meta.get(layout::SHA256), layout::get_position(&meta)) {
                (Some(sha), Some(pos)) => {
                    let last_sha = match o.kind {
                        Kind::Snapshot => meta.get(layout::PREV).unwrap_or(sha),
                        Kind::Segment { .. } => layout::chain_sha(&meta).unwrap_or(sha),
                    }
                    .clone();
                    self.max_gen = self.max_gen.max(pos.gen);
                    info!(
                        "db={} found chain ending at {} (generation {}; {how})",
                        self.path.display(),
                        o.key,
                        pos.gen
                    );
                    self.chain = Some(Chain {
                        pos,
                        last_sha,
                        at_db: false,
                    });
                }
                _ => warn!(
                    "db={} newest object {} has no chain metadata; a new generation will start",
                    self.path.display(),
                    o.key
                ),
            }
        }
        self.clear_spool();
        self.loaded = true;
        Ok(())
    }

    /// The newest object: after the one `state.json` names, or from a listing of the whole
    /// namespace when there is no `state.json` or its object is gone.
    fn find_newest(&self) -> Result<Newest> {
        let hint = self.state_hint()?;
        if let Some(h) = &hint {
            if let Some(found) = self.newest_after(Some(h))? {
                return Ok(found);
            }
            warn!(
                "db={} state.json names {}, which is gone; listing the whole namespace",
                self.path.display(),
                h.obj.key
            );
        }
        Ok(self.newest_after(None)?.unwrap_or_default())
    }

    /// Another database, elsewhere, is shipping into this namespace right now: two chains in
    /// one namespace would make both unrestorable. Refuse (and retry later). Where the
    /// storage enforces leases the lease decides instead (`lease.rs`): a released one is
    /// taken at once, as in a rolling deploy, not 2 minutes later.
    fn refuse_other_source(&self, newest: &layout::Object, meta: &Meta) -> Result<()> {
        let leased =
            crate::replicate::lease::enforced(self.storage.as_ref(), &self.ns).unwrap_or(false);
        let Some(other) = meta
            .get(layout::SOURCE)
            .filter(|s| **s != self.source && !leased)
        else {
            return Ok(());
        };
        let age = Stamp::now().since(newest.ts);
        if age < NAMESPACE_BUSY {
            return Err(Error::other(format!(
                "namespace {} is being replicated from {other} (newest object {} s old)",
                self.ns,
                age.as_secs()
            ))
            .with_hint("give this database another name or prefix, or stop the other walsync"));
        }
        Ok(())
    }

    /// Where `state.json` says the chain stood: None when it is absent or not ours to read.
    fn state_hint(&self) -> Result<Option<Hint>> {
        let key = layout::state_key(&self.ns);
        let mut body = match self.storage.get(&key) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut json = String::new();
        let read = body
            .reader
            .by_ref()
            .take(64 << 10)
            .read_to_string(&mut json);
        let hint = read
            .ok()
            .and_then(|_| super::super::upload::parse_state(&json))
            .and_then(|(gen, k)| {
                let (ns, obj) = layout::parse_key(&k, 0)?;
                (ns == self.ns).then_some(Hint { obj, gen })
            });
        if hint.is_none() {
            warn!(
                "db={} {key} is not one walsync wrote; listing the whole namespace",
                self.path.display()
            );
        }
        Ok(hint)
    }

    /// The newest object of the namespace (with its metadata) and the highest generation seen,
    /// listing only what sorts after `hint`'s object. Generations never decrease with time and
    /// times are unique, so every newer segment sorts after `<ns>/wal/<gen>-<time>` and every
    /// newer snapshot after `<ns>/snapshots/<time>`. None when nothing is newer and the hint's
    /// object is gone.
    fn newest_after(&self, hint: Option<&Hint>) -> Result<Option<Newest>> {
        let mut newest: Option<layout::Object> = None;
        let mut max_gen = hint.map_or(0, |h| h.gen);
        let mut listed = 0u64;
        let ns = self.ns.clone();
        let mut see = |e: crate::storage::Entry| {
            if let Some((n, o)) = layout::parse_key(&e.key, e.size) {
                if n != ns {
                    return;
                }
                listed += 1;
                if let Kind::Segment { gen } = o.kind {
                    max_gen = max_gen.max(gen);
                }
                if newest.as_ref().is_none_or(|b| o.ts > b.ts) {
                    newest = Some(o);
                }
            }
        };
        match hint {
            None => self.storage.list(&format!("{}/", self.ns), &mut see)?,
            Some(h) => {
                let (wal, snaps) = (format!("{}/wal/", ns), format!("{}/snapshots/", ns));
                let after_seg = layout::segment_key(&ns, h.gen, h.obj.ts);
                self.storage.list_from(&wal, &after_seg, &mut see)?;
                let after_snap = layout::snapshot_key(&ns, h.obj.ts);
                self.storage.list_from(&snaps, &after_snap, &mut see)?;
            }
        }
        let how = match hint {
            Some(h) => format!("{listed} object(s) newer than {}", h.obj.key),
            None => format!("{listed} object(s) listed"),
        };
        let Some(obj) = newest.or_else(|| hint.map(|h| h.obj.clone())) else {
            return Ok(Some(Newest::default()));
        };
        match self.storage.head(&obj.key) {
            Ok(meta) => Ok(Some(Newest {
                obj: Some(obj),
                max_gen,
                meta,
                how,
            })),
            Err(e) if e.is_not_found() && hint.is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn next_ts(&mut self) -> Stamp {
        self.last_ts = Stamp::now().max(self.last_ts.next());
        self.last_ts
    }

    pub(super) fn new_gen(&mut self) -> u32 {
        let g = self
            .max_gen
            .max(self.chain.as_ref().map_or(0, |c| c.pos.gen))
            + 1;
        self.max_gen = g;
        g
    }

    /// Start a new generation: a fresh snapshot at an exact position, under a new pin.
    pub(super) fn new_generation(&mut self, why: &str) -> Result<()> {
        // A chain existed and the database changed while we were away: count it as active, so
        // the new chain is held pinned for IDLE_RELEASE (an application closing right after
        // writing would otherwise cost yet another generation). A first generation does not:
        // starting on a thousand new databases must not pin them all at once.
        if self.chain.is_some() {
            self.last_frames_at = Instant::now();
        }
        let idx = self.pin_exact()?;
        let wal = if idx.max_frame == 0 {
            None
        } else {
            let (f, hdr) = reader::read_header(&self.wal_path)?.ok_or_else(|| Error::Busy {
                what: format!("WAL {} vanished while pinning", self.wal_path.display()),
            })?;
            let walk = reader::walk(
                &f,
                &self.wal_path,
                &hdr,
                reader::start(&hdr),
                Some(idx.max_frame),
                |_, _, _| Ok(()),
            )?;
            if walk.end.frame != idx.max_frame
                || walk.end.cksum != idx.cksum
                || hdr.salt1 != idx.salt1
            {
                return Err(Error::Busy {
                    what: format!("WAL {} changed while pinning", self.wal_path.display()),
                });
            }
            Some((hdr, walk.end))
        };
        self.wal_frames = idx.max_frame;
        self.checkpointed_at = 0;
        let wal_id = file_id(&self.wal_path);
        self.pin.as_mut().expect("pinned").wal_id = wal_id;
        let pos = Position {
            gen: self.new_gen(),
            wal,
        };
        info!(
            "db={} starting generation {}: {why}",
            self.path.display(),
            pos.gen
        );
        self.take_snapshot(pos, None)?;
        self.db_id = file_id(&self.path);
        self.chain_lost = None;
        Ok(())
    }

    /// Snapshot the pinned reader's view (which must be exactly at `pos`) into the spool.
    pub(super) fn take_snapshot(&mut self, pos: Position, prev: Option<String>) -> Result<()> {
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let ts = self.next_ts();
        let file = self.spool.join(format!("{}.db", ts.key()));
        let started = Instant::now();
        let pin = self.pin.as_ref().expect("snapshot needs a pin");
        let len = snapshot::backup_to_file(&pin.reader, &self.path, &file)?;
        let sha = digest::file_sha256(&file).map_err(|e| Error::io("read snapshot", &file, e))?;
        let key = layout::snapshot_key(&self.ns, ts);
        let mut meta = Meta::new();
        meta.insert(layout::SHA256.into(), sha.clone());
        meta.insert(layout::SOURCE.into(), self.source.clone());
        if let Some(p) = &prev {
            meta.insert(layout::PREV.into(), p.clone());
        }
        layout::put_position(&mut meta, &pos);
        let secs = started.elapsed().as_secs_f64();
        info!(
            "db={} snapshot {key}: {len} bytes in {:.3}s ({:.1} MB/s)",
            self.path.display(),
            secs,
            len as f64 / 1e6 / secs.max(1e-6)
        );
        let periodic = prev.is_some();
        let last_sha = prev.unwrap_or(sha);
        self.snapshot_map(&file, &last_sha, pos.wal.is_none());
        self.outbox.push(Pending {
            file,
            key,
            meta,
            len,
            append: None,
            queued: None,
        });
        // A periodic snapshot keeps what the chain knew; a new generation's at an empty WAL
        // has the database file hold the chain's state.
        let at_db = match (periodic, &self.chain) {
            (true, Some(c)) => c.at_db,
            _ => pos.wal.is_none(),
        };
        self.chain = Some(Chain {
            pos,
            last_sha,
            at_db,
        });
        self.changed_since_snapshot = false;
        self.last_snapshot_at = Some(Instant::now());
        self.bytes_since_snapshot = 0;
        Ok(())
    }

    /// A periodic snapshot of a continuing chain, at the exact position the chain has reached.
    pub(super) fn periodic_snapshot(&mut self, report: &mut StepReport) -> Result<()> {
        if let Some(why) = self.pin_and_check(report)? {
            return self.new_generation(&why);
        }
        let chain = self.chain.clone().expect("chain after pin");
        self.take_snapshot(chain.pos, Some(chain.last_sha))
    }

    /// Keep the spool bounded while uploads fail (SPEC section 4, guarantee 6): merged
    /// segments keep the objects few, but every committed byte waits on disk. Past the limit,
    /// drop what waits (the database file still holds all of it) and start a new generation
    /// with a snapshot, which is what the next upload ships. Points in time between the last
    /// uploaded object and that snapshot are lost, never the latest state; logged.
    /// `incoming`: what the capture about to run may add (checked before it, so that the limit
    /// holds with the capture, not only after it).
    pub(super) fn bound_spool(&mut self, incoming: u64) -> Result<bool> {
        let (_, bytes) = self.outbox.size();
        let db_len = fs::metadata(&self.path).map_or(0, |m| m.len());
        let limit = SPOOL_LIMIT_MIN.max(db_len.saturating_mul(2));
        if bytes == 0 || bytes + incoming <= limit || self.pin.is_none() {
            return Ok(false);
        }
        let (n, freed) = self.outbox.drop_unsent();
        if n == 0 {
            return Ok(false);
        }
        warn!(
            "db={} the spool held {} of objects waiting for upload and the WAL {} more (limit {}): dropped {n} of them ({}); the database file still holds everything",
            self.path.display(),
            mb(bytes),
            mb(incoming),
            mb(limit),
            mb(freed)
        );
        // The chain's tip went with them: nothing may link to it any more, neither a capture
        // nor a bridge from the page map (which describes the dropped state). If the new
        // generation cannot start now, the next step starts it (the pin is let go, so that
        // step re-pins and finds the chain lost).
        let why = "objects waiting for upload were dropped to keep the spool bounded";
        self.chain = None;
        PageMap::remove(&self.spool);
        self.chain_lost = Some(why.to_string());
        if let Err(e) = self.new_generation(why) {
            self.release();
            return Err(e);
        }
        Ok(true)
    }

    /// Bytes of the WAL after the chain's position: at most what the next capture adds.
    pub(super) fn uncaptured(&self) -> u64 {
        let wal = fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        let at = self
            .chain
            .as_ref()
            .and_then(|c| c.pos.wal)
            .map_or(0, |(h, e)| h.frame_offset(e.frame + 1));
        wal.saturating_sub(at)
    }
}
