//! Where the daemon's databases come from: a config file (re-read on SIGHUP, its `dir`
//! entries rescanned when they change) or the command line (a fixed set). The one conversion
//! from a config entry to a database's options lives here.

use std::path::PathBuf;

use crate::config::{self, Config, DbEntry};
use crate::error::Result;

use super::daemon::{Catalog, DbSpec};
use super::db::DbOptions;

impl From<&DbEntry> for DbOptions {
    fn from(d: &DbEntry) -> Self {
        DbOptions {
            sync_interval: d.sync_interval,
            snapshot_interval: d.snapshot_interval,
            retention: d.retention,
            compression: d.compression,
            ..Default::default()
        }
    }
}

/// Every database a config file lists now (its `dir` entries scanned).
pub fn specs_of(cfg: &Config) -> Result<Vec<DbSpec>> {
    Ok(cfg
        .all_databases()?
        .into_iter()
        .map(|d| DbSpec {
            opts: DbOptions::from(&d),
            path: d.path,
            ns: d.ns,
        })
        .collect())
}

/// The databases of a config file.
pub struct ConfigCatalog {
    pub cfg: Config,
}

impl Catalog for ConfigCatalog {
    fn scan(&mut self, reload: bool) -> Result<Vec<DbSpec>> {
        if reload {
            let new = config::load(&self.cfg.file)?;
            if new.bucket != self.cfg.bucket || new.s3 != self.cfg.s3 {
                log::warn!(
                    "reload: [storage] changed in {}; it takes effect at the next start",
                    self.cfg.file.display()
                );
            }
            self.cfg = new;
        }
        specs_of(&self.cfg)
    }
    fn dirs(&self) -> Vec<PathBuf> {
        self.cfg.dirs.iter().map(|d| d.dir.clone()).collect()
    }
}

/// The databases named on the command line.
pub struct FixedCatalog(pub Vec<DbSpec>);

impl Catalog for FixedCatalog {
    fn scan(&mut self, _reload: bool) -> Result<Vec<DbSpec>> {
        Ok(self.0.clone())
    }
    fn dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}
