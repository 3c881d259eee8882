"""Figures for issue #19: the wheel's size, and the memory of a Python process running
`Replica.watch()` on 100 databases against the same process without it.

    target/python-venv/bin/python tests/python/bench_watch.py [N]

(after tests/python/run.sh, which builds the wheel and that virtualenv). The watcher runs in a
child process (see the package docs), so both are reported: the application's own RSS, and the
watcher's."""

import glob
import os
import sqlite3
import sys
import tempfile
import time

import walsync


def rss_kb(pid="self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    here = os.path.dirname(os.path.abspath(__file__))
    wheels = glob.glob(os.path.join(here, "../../target/wheels/walsync-*.whl"))
    with tempfile.TemporaryDirectory() as tmp:
        dbs = []
        for i in range(n):
            p = os.path.join(tmp, f"tenant{i}.db")
            c = sqlite3.connect(p)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.commit()
            c.close()
            dbs.append(p)
        # The application: one connection per database, kept open, as a pool would.
        conns = [sqlite3.connect(p) for p in dbs]
        for c in conns:
            c.execute("INSERT INTO t(v) VALUES ('x')")
            c.commit()
        without = rss_kb()
        replica = walsync.Replica(os.path.join(tmp, "replica"))
        w = replica.watch(dbs, sync_interval=1.0)
        for round in range(5):
            for c in conns:
                c.execute("INSERT INTO t(v) VALUES (?)", ("y" * 100,))
                c.commit()
        # Until every database has its snapshot and a segment in the replica.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = replica.list()
            if len(listed) == n and all(d.segments > 0 for d in listed):
                break
            time.sleep(0.2)
        app, watcher = rss_kb(), rss_kb(w.pid)
        w.stop()
        for c in conns:
            c.close()
    if wheels:
        print(f"wheel: {os.path.basename(wheels[0])}: {os.path.getsize(wheels[0]) / 1e6:.2f} MB")
    print(f"{n} databases, one open connection each, 5 commits each")
    print(f"  application process without watch(): {without / 1024:6.1f} MB RSS")
    print(f"  application process with watch():    {app / 1024:6.1f} MB RSS")
    print(f"  its watcher (child process):          {watcher / 1024:6.1f} MB RSS")
    print(f"  total with watch():                   {(app + watcher) / 1024:6.1f} MB RSS")


if __name__ == "__main__":
    main()
