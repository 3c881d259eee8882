"""walsync: continuous backup of many SQLite databases (WAL mode) to S3-compatible storage or a
local directory, and restore of any of them to the latest commit or a point in time.

    import walsync
    replica = walsync.Replica("s3://my-bucket/prod")      # or a local directory
    with replica.watch(["/srv/tenants/a.db", "/srv/tenants/b.db"], sync_interval=1.0):
        ...                                                # the application runs and writes
    replica.snapshot("/srv/tenants/a.db")                  # before a migration
    replica.restore("a", "/tmp/a.db", point_in_time="2026-12-01T10:00:00Z")
    for db in replica.list():
        print(db.name, db.oldest_restorable, db.latest_restorable)
    replica.verify("a")                                    # raises IntegrityError naming the object

Errors are `WalsyncError` subclasses whose message is the CLI's one-line error.

`restore`, `list` and `verify` run in this process, with the GIL released. `snapshot` and
`watch` read live databases, so they run in a child process (`python -m walsync`): SQLite
forbids two copies of SQLite using one database in one process (closing a file in one cancels
the other's POSIX locks), and the application's `sqlite3` module is such a copy.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from . import _walsync

__version__: str = _walsync.__version__

__all__ = [
    "Replica",
    "Database",
    "Restored",
    "Verified",
    "Watcher",
    "WalsyncError",
    "UsageError",
    "ConfigError",
    "LocalError",
    "StorageError",
    "StorageUnavailable",
    "NotFound",
    "IntegrityError",
    "DatabaseBusy",
]

_log = logging.getLogger("walsync")


class WalsyncError(Exception):
    """A walsync operation failed. `str(e)` is the one-line message the CLI prints, `hint` the
    advice line it prints under it (or None), `key` the storage object at fault (or None)."""

    def __init__(self, message: str, hint: Optional[str] = None, key: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.key = key


class UsageError(WalsyncError, ValueError):
    """A bad argument: a malformed URL, time or option."""


class ConfigError(WalsyncError):
    """The configuration file is wrong (the message names file, key and line)."""


class LocalError(WalsyncError):
    """A local file or database could not be read or written."""


class DatabaseBusy(LocalError):
    """The database was held exclusively by another connection for too long."""


class StorageError(WalsyncError):
    """The storage refused a request (permissions, credentials, a missing bucket)."""


class StorageUnavailable(StorageError):
    """The storage did not answer, or a transfer broke off, after retries; nothing stored was
    found damaged."""


class NotFound(StorageError):
    """An object or a backup does not exist."""


class IntegrityError(WalsyncError):
    """A stored object failed verification (SHA-256, format or chain); `key` names it."""


_CLASSES = {
    "usage": UsageError,
    "config": ConfigError,
    "io": LocalError,
    "sqlite": LocalError,
    "busy": DatabaseBusy,
    "storage_refused": StorageError,
    "storage_unavailable": StorageUnavailable,
    "integrity": IntegrityError,
}


def _raise(e: _walsync.NativeError) -> WalsyncError:
    return _error(*e.args)


def _error(cls: str, message: str, hint: Optional[str], key: Optional[str]) -> WalsyncError:
    kind = _CLASSES.get(cls, WalsyncError)
    if cls == "storage_refused" and " not found" in message:
        kind = NotFound
    elif cls == "other" and message.startswith("no backup of "):
        kind = NotFound
    return kind(message, hint, key)


def _ms(t: Union[None, str, _dt.datetime]) -> Optional[int]:
    if t is None:
        return None
    if isinstance(t, _dt.datetime):
        # A naive datetime is local time, as everywhere in Python.
        return int(round(t.timestamp() * 1000))
    if isinstance(t, str):
        try:
            return _walsync.parse_time(t)
        except _walsync.NativeError as e:
            raise _raise(e) from None
    raise UsageError(f"point_in_time must be a datetime or an ISO 8601 string, not {type(t).__name__}")


def _time(ms: Optional[int]) -> Optional[_dt.datetime]:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


@dataclass(frozen=True)
class Database:
    """One database in a replica and the window it can be restored to."""

    name: str
    oldest_restorable: Optional[_dt.datetime]
    latest_restorable: Optional[_dt.datetime]
    snapshots: Tuple[Tuple[_dt.datetime, int], ...]
    segments: int
    generations: Tuple[int, int]
    bytes: int


@dataclass(frozen=True)
class Restored:
    """What a restore applied: the snapshot key, segments and frames after it, and the time of
    the last commit restored."""

    path: str
    snapshot: str
    segments: int
    frames: int
    bytes: int
    restored_to: _dt.datetime


@dataclass(frozen=True)
class Verified:
    """A chain checked end to end: every object's SHA-256, format and link."""

    name: str
    objects: int
    snapshots: int
    segments: int
    latest: Optional[_dt.datetime]


def _duration(seconds: float) -> str:
    return f"{max(1, int(round(seconds * 1000)))}ms"


class Replica:
    """A replica: `s3://bucket/prefix` (with `endpoint` for S3-compatible servers other than
    AWS, and `region`), or a local directory (a path or `file://` URL)."""

    def __init__(self, url: str, endpoint: Optional[str] = None, region: Optional[str] = None):
        self.url = os.fspath(url)
        self.endpoint = endpoint
        self.region = region

    def __repr__(self) -> str:
        return f"Replica({self.url!r})"

    def _cli(self) -> List[str]:
        a = ["-b", self.url]
        if self.endpoint:
            a += ["--endpoint", self.endpoint]
        return a

    def _env(self) -> dict:
        env = dict(os.environ)
        env["WALSYNC_ERROR_CLASS"] = "1"
        if self.region:
            env["AWS_REGION"] = self.region
        return env

    def restore(
        self,
        name: str,
        out: Union[str, os.PathLike],
        point_in_time: Union[None, str, _dt.datetime] = None,
        force: bool = False,
    ) -> Restored:
        """Restore database `name` into `out`, to the latest commit or to the state at
        `point_in_time` (a datetime or an ISO 8601 string). An existing `out` is replaced only
        with `force=True`. Every object's SHA-256 and the chain are verified; the result passes
        `PRAGMA integrity_check` before it is renamed onto `out`."""
        pit = _ms(point_in_time)
        path = os.fspath(out)
        try:
            r = _walsync.restore(self.url, self.endpoint, self.region, name, path, pit, force)
        except _walsync.NativeError as e:
            raise _raise(e) from None
        snapshot, segments, frames, nbytes, restored_to = r
        return Restored(path, snapshot, segments, frames, nbytes, _time(restored_to))

    def list(self) -> List[Database]:
        """Every database in the replica with its restorable window."""
        try:
            rows = _walsync.list(self.url, self.endpoint, self.region)
        except _walsync.NativeError as e:
            raise _raise(e) from None
        return [
            Database(
                name=name,
                oldest_restorable=_time(oldest),
                latest_restorable=_time(latest),
                snapshots=tuple((_time(ts), size) for ts, size in snaps),
                segments=segs,
                generations=(g0, g1),
                bytes=nbytes,
            )
            for name, oldest, latest, snaps, segs, g0, g1, nbytes in rows
        ]

    def verify(self, name: str) -> Verified:
        """Check database `name`'s chain end to end; raises `IntegrityError` naming the first
        object at fault."""
        try:
            objects, snaps, segs, latest = _walsync.verify(self.url, self.endpoint, self.region, name)
        except _walsync.NativeError as e:
            raise _raise(e) from None
        return Verified(name, objects, snaps, segs, _time(latest))

    def snapshot(self, path: Union[str, os.PathLike]) -> None:
        """Upload a consistent snapshot of the database at `path` now (through the watcher
        owning it, if one runs, so both stay on one chain)."""
        cmd = ["snapshot", os.fspath(path)] + self._cli()
        proc = subprocess.run(
            [sys.executable, "-m", "walsync"] + cmd,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            raise _cli_error(proc.stderr)

    def watch(
        self,
        paths: Union[None, str, os.PathLike, Iterable[Union[str, os.PathLike]]] = None,
        *,
        config: Union[None, str, os.PathLike] = None,
        sync_interval: float = 1.0,
        snapshot_interval: Optional[float] = None,
        timeout: float = 60.0,
    ) -> "Watcher":
        """Start replicating the databases `paths` (or those of the config file `config`) and
        return once they are watched. Every commit reaches the replica within about
        `sync_interval` seconds; `Watcher.stop()` ships everything pending, then returns."""
        if paths is None and config is None:
            raise UsageError("watch needs database paths or a config file")
        args = ["watch"]
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        args += [os.fspath(p) for p in (paths or [])]
        if config is not None:
            args += ["--config", os.fspath(config)]
            if self.url:
                args += self._cli()
        else:
            args += self._cli()
        args += ["--sync-interval", _duration(sync_interval)]
        if snapshot_interval is not None:
            args += ["--snapshot-interval", _duration(snapshot_interval)]
        return Watcher(args, self._env(), timeout)


def _cli_error(stderr: str) -> WalsyncError:
    """The CLI's error lines ('walsync: error: ...', 'hint: ...') as an exception."""
    message, hint, cls = None, None, "other"
    for line in stderr.splitlines():
        if line.startswith("walsync: error: "):
            message, hint = line[len("walsync: error: "):], None
        elif line.startswith("hint: ") and message is not None:
            hint = line[len("hint: "):]
        elif line.startswith("walsync: class: "):
            cls = line[len("walsync: class: "):]
    if message is None:
        tail = stderr.strip().splitlines()[-1:] or ["no error message"]
        return WalsyncError(f"walsync exited unexpectedly: {tail[0]}")
    return _error(cls, message, hint, None)


_LEVELS = {"ERROR": logging.ERROR, "WARN": logging.WARNING, "INFO": logging.INFO, "DEBUG": logging.DEBUG, "TRACE": 5}


class Watcher:
    """A running watcher. `stop()` (or leaving the `with` block) ships everything pending and
    waits for it; an error of the watcher is raised there. Its log lines go to the Python logger
    'walsync'. It lives in a child process that reads a pipe from this one: when this process
    ends, even by kill -9, the watcher ships what is pending and exits."""

    def __init__(self, args: Sequence[str], env: dict, timeout: float):
        env = dict(env)
        # The "watching N database(s)" line tells that it has started; Python logging filters.
        env["RUST_LOG"] = "info"
        env["WALSYNC_STOP_ON_EOF"] = "1"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "walsync"] + list(args),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self._started = False
        self._errors: List[str] = []
        self._reader = threading.Thread(target=self._read, name="walsync-log", daemon=True)
        self._reader.start()
        self._ready.wait(timeout)
        if not self._started:
            # It failed (its stderr ended first) or is too slow: either way, no watcher.
            if self._proc.poll() is None and not self._ready.is_set():
                self._proc.kill()
            code = self._proc.wait()
            self._reader.join()
            if self._errors:
                raise _cli_error("\n".join(self._errors + [f"exit status {code}"]))
            raise WalsyncError(f"the watcher did not start within {timeout} s")

    def _read(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            line = line.rstrip("\n")
            # "<time> <LEVEL> <message>", the level padded to five characters
            parts = line.split(None, 2)
            if len(parts) < 3 or parts[1] not in _LEVELS:
                # The error lines at exit, or anything else the process printed.
                self._errors.append(line)
                continue
            msg = parts[2]
            _log.log(_LEVELS[parts[1]], "%s", msg)
            if not self._ready.is_set() and msg.startswith("watching "):
                self._started = True
                self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        """The watcher's process id."""
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout: Optional[float] = None) -> None:
        """Ship everything pending, then stop. Raises `WalsyncError` if the watcher failed."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise WalsyncError(f"the watcher did not finish within {timeout} s; stopped it") from None
        self._reader.join()
        if code != 0:
            raise _cli_error("\n".join(self._errors + [f"exit status {code}"]))

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
