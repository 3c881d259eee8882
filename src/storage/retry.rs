//! The one backoff policy, and retrying a read. The daemon's scheduler waits `backoff` between
//! attempts of a database's steps and uploads (`replicate::daemon::slot`); restore, verify,
//! list and prune ride out a storage hiccup (a 503, a connection reset, a download cut off
//! mid-way) with `retrying`, so a restore of 10,000 objects does not fail at the 9,000th
//! because one GET broke off. Only transient failures are retried; a refusal (permissions, a
//! missing bucket, a damaged object) fails at once.

use std::time::Duration;

use log::warn;

use crate::error::Result;

/// Attempts of one read, in all: about 7.5 s of waiting before giving up.
pub const READ_ATTEMPTS: u32 = 5;

/// Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... capped at 10 s, +-20 %. `salt` spreads
/// the retries of different databases apart.
pub fn backoff(failures: u32, salt: u64) -> Duration {
    let base = (250u64 << failures.min(6)).min(10_000);
    // Cheap jitter without a RNG crate: mix the clock's nanoseconds with the salt.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let r = (nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 401; // 0..=400
    Duration::from_millis(base * (800 + r) / 1000)
}

/// Run the read `f` until it succeeds, fails for good, or has failed transiently
/// `READ_ATTEMPTS` times; each retry is one warning line naming the failure and `what`.
pub fn retrying<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut failures = 0;
    loop {
        match f() {
            Err(e) if e.is_transient() && failures + 1 < READ_ATTEMPTS => {
                failures += 1;
                let wait = backoff(failures, 0);
                warn!("{e} (attempt {failures} of {READ_ATTEMPTS}; {what} again in {wait:.1?})");
                std::thread::sleep(wait);
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, StorageKind};
    use std::cell::Cell;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for failures in 1..20 {
            let base = (250u64 << failures.min(6)).min(10_000);
            for salt in 0..5 {
                let d = backoff(failures, salt).as_millis() as u64;
                assert!(
                    d >= base * 8 / 10 && d <= base * 12 / 10,
                    "{failures}: {d} ms"
                );
            }
        }
    }

    fn failure(kind: StorageKind) -> Error {
        Error::Storage {
            backend: "s3://b".into(),
            key: "k".into(),
            kind,
            msg: "HTTP 503".into(),
        }
    }

    #[test]
    fn retries_transient_failures_only() {
        let calls = Cell::new(0);
        let r = retrying("fetching k", || {
            calls.set(calls.get() + 1);
            if calls.get() < 2 {
                Err(failure(StorageKind::Transient))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 2);

        calls.set(0);
        let r: Result<()> = retrying("fetching k", || {
            calls.set(calls.get() + 1);
            Err(failure(StorageKind::Permanent))
        });
        assert!(r.is_err());
        assert_eq!(calls.get(), 1, "a refusal is not retried");
    }
}
