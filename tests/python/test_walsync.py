"""The Python bindings against a local directory and the local S3 server: snapshot, restore to
the latest state and to a point in time compared with the source, verify of a damaged object
raising with its key, a watcher running beside an application that writes with the standard
`sqlite3` module, `stop()` flushing everything, the watcher ending with its application, the
errors (same one-line messages as the CLI) and the README's example as written."""

import datetime as dt
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

import walsync
from conftest import ROOT, create, rows, write


def wait_restorable(replica, name, want, out, timeout=60.0):
    """Until a restore of `name` holds `want` (what the product reports, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            replica.restore(name, out, force=True)
            last = rows(out)
            if last == want:
                return
        except walsync.WalsyncError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{name} never restored to {len(want)} rows; last: {last!r}")


def test_snapshot_then_restore_latest(replica, tmp_path):
    db = tmp_path / "app.db"
    create(db)
    write(db, "a", "b", "c")
    replica.snapshot(db)
    out = tmp_path / "out.db"
    r = replica.restore("app", out)
    assert rows(out) == rows(db)
    assert r.path == str(out) and r.snapshot.endswith(".db") and r.bytes > 0
    assert isinstance(r.restored_to, dt.datetime) and r.restored_to.tzinfo is not None
    [d] = replica.list()
    assert d.name == "app" and len(d.snapshots) == 1 and d.bytes > 0
    assert d.oldest_restorable <= d.latest_restorable
    # An existing output is kept unless force=True, with the CLI's message.
    with pytest.raises(walsync.WalsyncError) as e:
        replica.restore("app", out)
    assert str(e.value) == cli_error(["restore", "app", "-o", str(out)] + cli_replica(replica))
    assert rows(out) == rows(db)


def test_watch_and_restore_to_a_point_in_time(replica, tmp_path):
    db = tmp_path / "app.db"
    create(db)
    out = tmp_path / "out.db"
    with replica.watch([db], sync_interval=0.1):
        write(db, "first", "second")
        wait_restorable(replica, "app", rows(db), out)
        state_a = rows(db)
        t_a = dt.datetime.now(dt.timezone.utc)
        # Commits after t_a, by per-write connections and by one long-lived connection.
        write(db, "third")
        keep = sqlite3.connect(db)
        keep.execute("INSERT INTO t(v) VALUES ('fourth')")
        keep.commit()
        wait_restorable(replica, "app", rows(db), out)
        keep.close()
    latest = rows(db)
    replica.restore("app", out, force=True)
    assert rows(out) == latest
    replica.restore("app", out, point_in_time=t_a, force=True)
    assert rows(out) == state_a
    iso = t_a.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t_a.microsecond // 1000:03d}Z"
    replica.restore("app", out, point_in_time=iso, force=True)
    assert rows(out) == state_a
    v = replica.verify("app")
    assert v.objects >= 2 and v.snapshots >= 1 and v.segments >= 1


def test_stop_ships_everything_pending(replica, tmp_path):
    """The application writes inside the `with` block and the restore right after it, without
    waiting for anything, holds every commit: stop() flushed them."""
    dbs = [tmp_path / f"tenant{i}.db" for i in range(5)]
    for d in dbs:
        create(d)
    # A long sync interval: nothing would be shipped before stop() but for the flush.
    with replica.watch(dbs, sync_interval=30.0) as w:
        assert w.running()
        for i, d in enumerate(dbs):
            write(d, *[f"{i}-{n}" for n in range(20)])
    assert not w.running()
    for d in dbs:
        out = tmp_path / f"{d.stem}.restored.db"
        replica.restore(d.stem, out)
        assert rows(out) == rows(d), d.name
    assert sorted(x.name for x in replica.list()) == sorted(d.stem for d in dbs)


def test_verify_raises_naming_the_damaged_object(replica, tmp_path):
    db = tmp_path / "app.db"
    create(db)
    out = tmp_path / "out.db"
    with replica.watch([db], sync_interval=0.1):
        write(db, "a", "b")
        wait_restorable(replica, "app", rows(db), out)
    key = damage_newest_segment(replica, tmp_path)
    with pytest.raises(walsync.IntegrityError) as e:
        replica.verify("app")
    assert e.value.key == key
    assert str(e.value).startswith(f"object {key}: SHA-256 mismatch: stored ")
    assert str(e.value) == cli_error(["verify", "app"] + cli_replica(replica))
    assert "damaged" in e.value.hint
    with pytest.raises(walsync.IntegrityError):
        replica.restore("app", tmp_path / "never.db")
    assert not (tmp_path / "never.db").exists()


def test_watcher_ends_with_its_application(replica, tmp_path):
    """An application killed with SIGKILL: its watcher ships what is pending and exits."""
    db = tmp_path / "app.db"
    create(db)
    app = f"""
import os, signal, sqlite3, sys, walsync
r = walsync.Replica({replica.url!r}, endpoint={replica.endpoint!r}, region={replica.region!r})
w = r.watch([{str(db)!r}], sync_interval=30.0)
c = sqlite3.connect({str(db)!r})
c.execute("INSERT INTO t(v) VALUES ('before the crash')")
c.commit()
print(w.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", app], stdout=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL
    pid = int(p.stdout.strip())
    deadline = time.monotonic() + 60
    while alive(pid):
        assert time.monotonic() < deadline, f"watcher {pid} outlived its application"
        time.sleep(0.05)
    out = tmp_path / "out.db"
    replica.restore("app", out)
    assert rows(out) == rows(db) == [(1, "before the crash")]


def test_errors_are_the_clis_one_line_messages(tmp_path):
    r = walsync.Replica("ftp://example.org/x")
    with pytest.raises(walsync.UsageError) as e:
        r.list()
    assert str(e.value) == cli_error(["list", "-b", "ftp://example.org/x"])
    local = walsync.Replica(str(tmp_path / "replica"))
    with pytest.raises(walsync.UsageError) as e:
        local.restore("app", tmp_path / "o.db", point_in_time="yesterday-ish")
    assert str(e.value) == (
        "invalid time 'yesterday-ish' (use ISO 8601, e.g. 2026-11-22T10:00:00Z)"
    )
    with pytest.raises(walsync.NotFound) as e:
        local.restore("nope", tmp_path / "o.db")
    assert str(e.value) == cli_error(["restore", "nope", "-o", str(tmp_path / "o.db"), "-b", local.url])
    with pytest.raises(walsync.LocalError) as e:
        local.snapshot(tmp_path / "missing.db")
    assert str(e.value) == f"open database {tmp_path / 'missing.db'}: no such file or directory"
    with pytest.raises(walsync.LocalError) as e:
        local.watch([tmp_path / "missing.db"])
    assert str(e.value) == f"open database {tmp_path / 'missing.db'}: no such file or directory"
    with pytest.raises(walsync.UsageError):
        local.watch()


def test_readme_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", readme, re.S)
    assert m, "README.md has no python example"
    code = m.group(1)
    assert len(code.strip().splitlines()) <= 12, "the README's example should stay short"
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "tenant-1" in p.stdout and "3 rows" in p.stdout, p.stdout


# --- helpers --------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its (dead) parent's reaper is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cli_replica(r: walsync.Replica) -> list:
    return ["-b", r.url] + (["--endpoint", r.endpoint] if r.endpoint else [])


def cli_error(args: list) -> str:
    """The error line the CLI prints for the same request (without 'walsync: error: ')."""
    p = subprocess.run(
        [sys.executable, "-m", "walsync"] + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.returncode != 0, p.stdout
    [line] = [l for l in p.stderr.splitlines() if l.startswith("walsync: error: ")]
    return line[len("walsync: error: "):]


def damage_newest_segment(replica: walsync.Replica, tmp_path: Path) -> str:
    """Flip one byte of the newest WAL segment, keeping its stored SHA-256: the key."""
    if replica.endpoint is None:
        root = Path(replica.url)
        segs = sorted((root / "app" / "wal").glob("*.wal"))
        seg = segs[-1]
        data = bytearray(seg.read_bytes())
        data[40] ^= 0xFF
        seg.write_bytes(bytes(data))
        return f"app/wal/{seg.name}"
    # S3: read the object with its metadata, write it back one byte different (curl signs).
    bucket, prefix = replica.url[len("s3://"):].split("/", 1)
    env = os.environ
    sign = [
        "--aws-sigv4", f"aws:amz:{env['AWS_REGION']}:s3",
        "--user", f"{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}",
        "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    ]
    base = f"{replica.endpoint}/{bucket}"
    listing = subprocess.run(
        ["curl", "-sf"] + sign + [f"{base}?list-type=2&prefix={quote(prefix + '/app/wal/', safe='')}"],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    key = sorted(re.findall(r"<Key>([^<]+)</Key>", listing))[-1]
    body = tmp_path / "object"
    heads = subprocess.run(
        ["curl", "-sf", "-D", "-", "-o", str(body)] + sign + [f"{base}/{key}"],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    meta = [l.strip() for l in heads.splitlines() if l.lower().startswith("x-amz-meta-")]
    data = bytearray(body.read_bytes())
    data[40] ^= 0xFF
    body.write_bytes(bytes(data))
    put = ["curl", "-sf", "-X", "PUT", "--data-binary", f"@{body}"] + sign
    for h in meta:
        put += ["-H", h]
    subprocess.run(put + [f"{base}/{key}"], check=True, stdout=subprocess.DEVNULL)
    return key
