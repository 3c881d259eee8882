"""Fixtures of the Python bindings' tests: a replica per test, in a local directory or in the
real S3 server the Rust suite uses (Garage on 127.0.0.1, started by tests/s3/garage.sh), and
helpers that write with the standard `sqlite3` module as applications do."""

import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

import walsync

ROOT = Path(__file__).resolve().parents[2]
_s3_env = {}


def _start_s3() -> dict:
    if not _s3_env:
        port = os.environ.get("WALSYNC_TEST_S3_PORT", "3900")
        out = subprocess.run(
            [str(ROOT / "tests/s3/garage.sh"), "start", port],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                _s3_env[k] = v
        os.environ.update(_s3_env)
    return _s3_env


@pytest.fixture(params=["local", "s3"])
def replica(request, tmp_path) -> walsync.Replica:
    if request.param == "local":
        return walsync.Replica(str(tmp_path / "replica"))
    env = _start_s3()
    return walsync.Replica(
        f"s3://{env['S3_BUCKET']}/py-{uuid.uuid4().hex[:12]}",
        endpoint=env["AWS_ENDPOINT_URL_S3"],
        region=env["AWS_REGION"],
    )


def create(path: Path) -> None:
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.commit()
    c.close()


def write(path: Path, *values: str) -> None:
    """One short-lived connection per commit: opened, written, closed (the last close
    checkpoints the WAL and deletes it, as PHP, cron jobs and the sqlite3 CLI do)."""
    for v in values:
        c = sqlite3.connect(path)
        c.execute("INSERT INTO t(v) VALUES (?)", (v,))
        c.commit()
        c.close()


def rows(path: Path) -> list:
    c = sqlite3.connect(path)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return c.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        c.close()
