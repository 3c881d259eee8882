//! `walsync._walsync`: the native half of the Python package. Thin: every function opens the
//! replica as the CLI does and calls the same library function, with the GIL released while it
//! works; an error is raised as `NativeError(class, message, hint, key)`, which the Python half
//! (`walsync/__init__.py`) turns into its `WalsyncError` hierarchy. Plain tuples cross the
//! boundary; the Python half gives them names and types.
//!
//! Nothing here opens a live database: SQLite forbids two copies of itself using one database
//! in one process (their POSIX locks cancel each other), and the application's `sqlite3`
//! module is such a copy. `snapshot` and `watch` run `python -m walsync` (`main` below) in a
//! child process; `restore`, `list` and `verify` only read the replica and write new files.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use walsync::error::Error;
use walsync::layout;
use walsync::restore as chain;
use walsync::storage::{self, Storage};
use walsync::time::Stamp;

create_exception!(
    _walsync,
    NativeError,
    PyException,
    "A walsync error: (class, message, hint, key)."
);

fn raise(e: Error) -> PyErr {
    let key = match &e {
        Error::Integrity { key, .. } => Some(key.clone()),
        Error::Storage { key, .. } if !key.is_empty() => Some(key.clone()),
        _ => None,
    };
    NativeError::new_err((e.class(), e.to_string(), e.hint(), key))
}

fn open(
    url: &str,
    endpoint: Option<String>,
    region: Option<String>,
) -> walsync::error::Result<(Arc<dyn Storage>, String)> {
    let url = storage::parse_url(url)?;
    storage::open(
        &url,
        &storage::s3::S3Options {
            endpoint,
            region,
            ..Default::default()
        },
    )
}

/// The `walsync` command line (`args` without the program name) in this process: (exit code,
/// class of the error printed or None). For `python -m walsync` and the child processes of
/// `snapshot` and `watch`.
#[pyfunction]
fn main(py: Python<'_>, args: Vec<OsString>) -> (u8, Option<&'static str>) {
    py.detach(|| walsync::cmd::main_classified(args))
}

/// Milliseconds since the epoch of an ISO 8601 time, as `--point-in-time` reads it. Times
/// cross into Python as milliseconds (0: none); `walsync/__init__.py` makes datetimes of them.
#[pyfunction]
fn parse_time(s: &str) -> PyResult<u64> {
    Stamp::parse_iso(s).map(Stamp::ms).ok_or_else(|| {
        raise(Error::usage(format!(
            "invalid time '{s}' (use ISO 8601, e.g. 2026-11-22T10:00:00Z)"
        )))
    })
}

/// Restore `name` into `out`: (snapshot key, segments, frames, bytes, restored_to ms).
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (url, endpoint, region, name, out, point_in_time, force))]
fn restore(
    py: Python<'_>,
    url: &str,
    endpoint: Option<String>,
    region: Option<String>,
    name: &str,
    out: PathBuf,
    point_in_time: Option<u64>,
    force: bool,
) -> PyResult<(String, usize, u64, u64, u64)> {
    py.detach(|| {
        let (st, prefix) = open(url, endpoint, region)?;
        let r = chain::restore(
            st.as_ref(),
            &layout::join(&prefix, name),
            &out,
            point_in_time.map(Stamp::from_ms),
            force,
        )?;
        Ok((
            r.snapshot,
            r.segments,
            r.frames,
            r.bytes,
            r.restored_to.ms(),
        ))
    })
    .map_err(raise)
}

type Listed = (
    String,
    Option<u64>,
    u64,
    Vec<(u64, u64)>,
    usize,
    u32,
    u32,
    u64,
);

/// Every database in the replica: (name, oldest restorable ms, latest restorable ms,
/// [(snapshot ms, bytes)], segments, first generation, last generation, bytes).
#[pyfunction]
fn list(
    py: Python<'_>,
    url: &str,
    endpoint: Option<String>,
    region: Option<String>,
) -> PyResult<Vec<Listed>> {
    py.detach(|| {
        let (st, prefix) = open(url, endpoint, region)?;
        let all = chain::list(st.as_ref(), &prefix)?;
        let under = format!("{prefix}/");
        Ok(all
            .into_iter()
            .map(|s| {
                let name = s.ns.strip_prefix(&under).unwrap_or(&s.ns).to_string();
                let oldest = s.snapshots.iter().map(|x| x.0.ms()).min();
                let first_gen = if s.segments == 0 { 0 } else { s.generations.0 };
                let (segs, last_gen, bytes, latest) =
                    (s.segments, s.generations.1, s.bytes, ms(s.latest));
                (
                    name,
                    oldest,
                    latest,
                    s.snapshots.iter().map(|&(t, n)| (t.ms(), n)).collect(),
                    segs,
                    first_gen,
                    last_gen,
                    bytes,
                )
            })
            .collect())
    })
    .map_err(raise)
}

/// Check one database's chain end to end: (objects, snapshots, segments, latest ms).
#[pyfunction]
fn verify(
    py: Python<'_>,
    url: &str,
    endpoint: Option<String>,
    region: Option<String>,
    name: &str,
) -> PyResult<(usize, usize, usize, u64)> {
    py.detach(|| {
        let (st, prefix) = open(url, endpoint, region)?;
        let v = chain::verify(st.as_ref(), &layout::join(&prefix, name))?;
        Ok((v.objects, v.snapshots, v.segments, ms(v.latest)))
    })
    .map_err(raise)
}

fn ms(t: Option<Stamp>) -> u64 {
    t.map_or(0, Stamp::ms)
}

#[pymodule]
fn _walsync(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(parse_time, m)?)?;
    m.add_function(wrap_pyfunction!(restore, m)?)?;
    m.add_function(wrap_pyfunction!(list, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    Ok(())
}
