//! The crate's one error type. Each variant carries the context a user needs to act on it
//! (the file, object key or option at fault); `is_transient` lets workers decide between retry
//! and giving up, `hint` gives the one recovery line `main` prints under the error.

use std::fmt;
use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// Bad command line: exit code 2.
    Usage { msg: String, hint: Option<String> },
    /// Bad configuration (file, key, message): exit code 2.
    Config {
        file: String,
        key: String,
        msg: String,
    },
    /// A local file operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// SQLite refused an operation on a database.
    Sqlite {
        op: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A storage backend failed for one key.
    Storage {
        backend: String,
        key: String,
        kind: StorageKind,
        msg: String,
    },
    /// Stored data failed verification (checksum, chain, format).
    Integrity { key: String, msg: String },
    /// The database is too busy for this attempt; retried later.
    Busy { what: String },
    /// Anything else that stops one operation, with its own message and hint.
    Other { msg: String, hint: Option<String> },
}

/// What went wrong in a storage call, so callers can branch without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    NotFound,
    /// Worth retrying: connection errors, timeouts, 408, 429, 5xx.
    Transient,
    /// Not worth retrying: permissions, bad credentials, missing bucket.
    Permanent,
}

impl Error {
    /// A short name of the kind of failure, for `walsync status` and the metrics' `class`
    /// label (a bounded set).
    pub fn class(&self) -> &'static str {
        match self {
            Error::Usage { .. } => "usage",
            Error::Config { .. } => "config",
            Error::Io { .. } => "io",
            Error::Sqlite { .. } => "sqlite",
            Error::Storage {
                kind: StorageKind::Transient,
                ..
            } => "storage_unavailable",
            Error::Storage { .. } => "storage_refused",
            Error::Integrity { .. } => "integrity",
            Error::Busy { .. } => "busy",
            Error::Other { .. } => "other",
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
    pub fn sqlite(op: &'static str, path: impl Into<PathBuf>, source: rusqlite::Error) -> Self {
        Error::Sqlite {
            op,
            path: path.into(),
            source,
        }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage {
            msg: msg.into(),
            hint: Some("run 'walsync --help' for usage".into()),
        }
    }
    pub fn other(msg: impl Into<String>) -> Self {
        Error::Other {
            msg: msg.into(),
            hint: None,
        }
    }
    pub fn with_hint(self, h: impl Into<String>) -> Self {
        match self {
            Error::Other { msg, .. } => Error::Other {
                msg,
                hint: Some(h.into()),
            },
            Error::Usage { msg, .. } => Error::Usage {
                msg,
                hint: Some(h.into()),
            },
            e => e,
        }
    }
    pub fn integrity(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Integrity {
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// Exit code for `main`: 2 for usage or configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage { .. } | Error::Config { .. } => 2,
            _ => 1,
        }
    }

    /// True when retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage { kind, .. } => *kind == StorageKind::Transient,
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            Error::Sqlite { source, .. } => is_busy(source),
            Error::Busy { .. } => true,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Storage {
                kind: StorageKind::NotFound,
                ..
            }
        )
    }

    /// One line of advice printed under the error, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Other { hint, .. } => hint.clone(),
            Error::Config { .. } => Some("fix the configuration and run again".into()),
            Error::Io { source, path, op: "create spool directory" }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Some(format!(
                    "walsync needs write access to {} (its spool directory and SQLite's -shm live beside the database)",
                    path.parent().unwrap_or(path).display()
                ))
            }
            Error::Io { source, path, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Some(format!("check the permissions of {}", path.display()))
            }
            Error::Integrity { .. } => Some(
                "the replica is damaged at this object; restore to an earlier --point-in-time or from another replica"
                    .into(),
            ),
            Error::Storage { kind: StorageKind::NotFound, .. } => {
                Some("check the replica URL and the database name ('walsync list -b URL')".into())
            }
            Error::Sqlite { source, .. } if is_busy(source) => Some(
                "another connection holds the database exclusively for more than 5 s: an application using PRAGMA locking_mode=EXCLUSIVE (walsync cannot read such a database while it is open; use locking_mode=NORMAL), or a very long write; walsync keeps retrying"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock; try again later.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage { msg, .. } => write!(f, "{msg}"),
            Error::Config { file, key, msg } if key.is_empty() => write!(f, "config {file}: {msg}"),
            Error::Config { file, key, msg } => write!(f, "config {file}: {key}: {msg}"),
            Error::Io { op, path, source } => {
                write!(f, "{op} {}: {}", path.display(), io_msg(source))
            }
            Error::Sqlite { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Storage {
                backend,
                key,
                kind,
                msg,
            } => match kind {
                StorageKind::NotFound => write!(f, "{backend}: object {key} not found"),
                _ if key.is_empty() => write!(f, "{backend}: {msg}"),
                _ => write!(f, "{backend}: {key}: {msg}"),
            },
            Error::Integrity { key, msg } => write!(f, "object {key}: {msg}"),
            Error::Other { msg, .. } => write!(f, "{msg}"),
            Error::Busy { what } => write!(f, "{what}"),
        }
    }
}

/// io::Error's Display appends "(os error N)"; users want the words only.
fn io_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Sqlite { source, .. } => Some(source),
            _ => None,
        }
    }
}
