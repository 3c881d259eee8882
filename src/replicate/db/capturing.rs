//! Capturing: reading the WAL (pinned, or the old cycle's tail after a restart) and recording
//! what is new into the chain, the page map and the outbox.

use super::*;

impl Shipper {
    /// Capture the committed frames after the chain's position into a spooled segment.
    /// `restart` is true when `hdr` begins a new WAL cycle continuing the chain.
    pub(super) fn capture(
        &mut self,
        f: &File,
        hdr: &WalHeader,
        restart: bool,
        limit: Option<u32>,
    ) -> Result<(u32, WalEnd)> {
        let chain = self.chain.as_ref().expect("capture needs a chain").clone();
        let from = match (&chain.pos.wal, restart) {
            (Some((_, end)), false) => *end,
            _ => reader::start(hdr),
        };
        fs::create_dir_all(&self.spool)
            .map_err(|e| Error::io("create spool directory", &self.spool, e))?;
        let gen = if restart && chain.pos.wal.is_some() {
            self.new_gen()
        } else {
            chain.pos.gen
        };
        // A backlog merges: frames continuing the newest pending segment are appended to it.
        let tail = self.outbox.take_appendable(gen, hdr, from.frame);
        let tmp = self
            .spool
            .join(format!("capture-{}.tmp", std::process::id()));
        let target = match &tail {
            Some(p) => capture::Target::Append(
                &p.file,
                Box::new(
                    p.append
                        .clone()
                        .expect("take_appendable returns appendable segments"),
                ),
            ),
            None => capture::Target::New(&tmp),
        };
        let res = capture::capture(f, &self.wal_path, hdr, gen, from, limit, target);
        let captured = match res {
            Ok(c) => c,
            Err(e) => {
                if let Some(p) = tail {
                    self.outbox.push(p); // unchanged: cut back or never touched
                }
                return Err(e);
            }
        };
        let (captured, wal_tail) = captured;
        // A small transaction caught mid-write (a commit landing as the step runs) is worth a
        // second look soon; a large one in progress is not (its writes keep waking us).
        match wal_tail {
            Some((frames, last)) if frames <= TAIL_FRAMES && last != self.tail_seen => {
                self.tail_seen = last;
                self.tail_pending = true;
            }
            Some(_) => {}
            None => self.tail_seen = 0,
        }
        let Some((file, c)) = captured else {
            if let Some(p) = tail {
                self.outbox.push(p);
            }
            if restart && chain.pos.wal.is_some() {
                self.max_gen -= 1; // nothing captured under the new generation yet
            }
            return Ok((0, from));
        };
        self.record(hdr, gen, file, c, tail, &chain)
    }

    /// Record a capture: its spool file named (or merged into the pending one it continues),
    /// its metadata, the page map, the outbox and the chain's new position.
    fn record(
        &mut self,
        hdr: &WalHeader,
        gen: u32,
        file: PathBuf,
        c: capture::Captured,
        tail: Option<Pending>,
        chain: &Chain,
    ) -> Result<(u32, WalEnd)> {
        self.wal_frames = c.end.frame.max(self.wal_frames);
        self.bytes_since_snapshot += c.frames as u64 * hdr.frame_len();
        let ts = self.next_ts();
        let key = layout::segment_key(&self.ns, gen, ts);
        self.update_map(&chain.last_sha, &file, c.start, hdr.page_size, &c.sha);
        let pos = Position {
            gen,
            wal: Some((*hdr, c.end)),
        };
        let queued = tail.as_ref().and_then(|p| p.queued);
        let (file, mut meta, first) = match tail {
            // The merged object keeps the first one's links and takes the new end.
            Some(p) => {
                let first = p.meta.get(layout::FIRST).cloned().unwrap_or_default();
                (p.file, p.meta, first)
            }
            None => {
                let dst = self.spool.join(format!("{gen:08x}-{}.wal", ts.key()));
                fs::rename(&file, &dst).map_err(|e| Error::io("rename spool file", &dst, e))?;
                let mut meta = Meta::new();
                meta.insert(layout::PREV.into(), chain.last_sha.clone());
                meta.insert(layout::FIRST.into(), c.first.to_string());
                meta.insert(layout::SOURCE.into(), self.source.clone());
                if chain.at_db && chain.pos.wal.is_some() {
                    // Follows the database state of the object before it, not a WAL cycle.
                    meta.insert(layout::BASE.into(), layout::BASE_DB.into());
                }
                (dst, meta, c.first.to_string())
            }
        };
        meta.insert(layout::SHA256.into(), c.sha.clone());
        layout::put_position(&mut meta, &pos);
        debug!(
            "db={} captured {key}: frames {}..{} ({} frames{})",
            self.path.display(),
            c.first,
            c.end.frame,
            c.frames,
            if first == c.first.to_string() {
                String::new()
            } else {
                format!(", merged with pending frames from {first}")
            }
        );
        self.outbox.push(Pending {
            file,
            key,
            meta,
            len: c.appendable.len,
            append: Some(c.appendable),
            queued,
        });
        self.chain = Some(Chain {
            pos,
            last_sha: c.sha,
            at_db: false,
        });
        self.changed_since_snapshot = true;
        self.last_frames_at = Instant::now();
        Ok((c.frames, c.end))
    }

    /// Read the WAL while pinned and capture what is new; a restart of our WAL continues the
    /// chain (see the module docs), anything else unexpected breaks it.
    pub(super) fn capture_pinned(&mut self, report: &mut StepReport) -> Result<Option<String>> {
        let cur = reader::read_header(&self.wal_path)?;
        let wal_id = file_id(&self.wal_path);
        let pin = self.pin.as_mut().expect("pinned");
        if let (Some(old), Some(_)) = (pin.wal_id, &cur) {
            if wal_id != Some(old) {
                return Ok(Some(
                    "the WAL file was deleted or replaced while the database was open".into(),
                ));
            }
        }
        if cur.is_none() && pin.wal_id.is_some() && wal_id.is_none() {
            return Ok(Some(
                "the WAL file was deleted while the database was open".into(),
            ));
        }
        if wal_id.is_some() {
            pin.wal_id = wal_id;
        }
        // Before anything else about the WAL: a database file replaced at its path (by `mv`,
        // or deleted and created again by a process that wrote, checkpointed and deleted its
        // WAL before this step) leaves no WAL to look at, and "no WAL, nothing new" would let
        // its commits wait, unshipped, for a next write that may never come.
        if file_id(&self.path) != pin.db_id {
            return Ok(Some(
                "the database file was replaced while walsync had it open".into(),
            ));
        }
        let Some((f, hdr)) = cur else {
            return Ok(None); // truncated (or never written): nothing new
        };
        let chain = self.chain.as_ref().expect("pinned implies a chain");
        let restart = match &chain.pos.wal {
            // The database held everything and the WAL was empty when we pinned, and our pin
            // has held every checkpoint back since: this WAL's frames follow the chain.
            _ if chain.at_db => true,
            None => true,
            Some((h, _)) if hdr.same_wal(h) => false,
            Some((h, _)) if hdr.is_restart_of(h) => true,
            Some((h, _)) => {
                return Ok(Some(format!(
                    "unexpected WAL header while pinned (checkpoint sequence {} -> {})",
                    h.seq, hdr.seq
                )))
            }
        };
        if restart {
            self.wal_frames = 0;
            self.checkpointed_at = 0;
        }
        // Up to a little past what the wal-index published when we looked (a commit whose
        // frames are written but not yet published), never chasing a writer that commits
        // faster than we read: the rest is for the next step.
        let limit = match shm::read(&self.pin.as_ref().expect("pinned").shm, &self.shm_path)? {
            Some(i) if (i.salt1, i.salt2) == (hdr.salt1, hdr.salt2) => {
                Some(i.max_frame.saturating_add(TAIL_FRAMES))
            }
            _ => None,
        };
        let (n, _) = self.capture(&f, &hdr, restart, limit)?;
        if n > 0 {
            report.segments += 1;
            report.frames += n;
        }
        Ok(None)
    }

    /// (Re)pin at an exact position and check continuity; capture the tail when it holds.
    /// Returns the reason when a new generation is needed.
    pub(super) fn pin_and_check(&mut self, report: &mut StepReport) -> Result<Option<String>> {
        let idx = self.pin_exact()?;
        let cur = reader::read_header(&self.wal_path)?;
        let restart = match self.continuity(&idx, &cur)? {
            Continuity::Unproven(why) => return Ok(Some(why)),
            Continuity::Same => false,
            Continuity::Restarted => true,
            Continuity::RestartedAfter(last) => {
                if let Some(why) = self.capture_old_tail(&cur, last, report)? {
                    return Ok(Some(why));
                }
                true
            }
        };
        if let Some((f, hdr)) = &cur {
            let limit = (idx.max_frame > 0).then_some(idx.max_frame);
            let (n, end) = self.capture(f, hdr, restart, limit)?;
            if n > 0 {
                report.segments += 1;
                report.frames += n;
            }
            if restart {
                self.wal_frames = end.frame;
                self.checkpointed_at = 0;
            }
            if idx.max_frame > 0 && (end.frame != idx.max_frame || end.cksum != idx.cksum) {
                // Only possible if SQLite restarted the WAL under a read-mark-0 pin before we
                // read frames we had not shipped.
                return Ok(Some(format!(
                    "the WAL changed while walsync read it (frame {} of {})",
                    end.frame, idx.max_frame
                )));
            }
        }
        let wal_id = file_id(&self.wal_path);
        self.pin.as_mut().expect("pinned").wal_id = wal_id;
        Ok(None)
    }

    /// The WAL restarted after more commits than walsync had captured, and their frames are
    /// still in the file (`Continuity::RestartedAfter`): capture them into the chain as they
    /// are, up to `last`, before the new cycle. Returns why not, if the file changed meanwhile.
    pub(super) fn capture_old_tail(
        &mut self,
        cur: &Option<(File, WalHeader)>,
        last: WalEnd,
        report: &mut StepReport,
    ) -> Result<Option<String>> {
        let (Some((f, _)), Some(Chain { pos, .. })) = (cur, &self.chain) else {
            return Ok(Some("the WAL vanished while walsync read it".into()));
        };
        let Some((ours, from)) = pos.wal else {
            return Ok(Some("the chain has no WAL position".into()));
        };
        let (n, end) = self.capture(f, &ours, false, Some(last.frame))?;
        if end != last {
            return Ok(Some(format!(
                "the WAL's old frames changed while walsync read them (frame {} of {})",
                end.frame, last.frame
            )));
        }
        report.segments += 1;
        report.frames += n;
        debug!(
            "db={} the WAL restarted after frame {}; its old frames {}..{} were still in the file and continue the chain",
            self.path.display(),
            last.frame,
            from.frame + 1,
            last.frame
        );
        Ok(None)
    }
}
