"""`python -m walsync ...` (and the `walsync` script of the wheel): the walsync command line,
the same code as the `walsync` binary. `Replica.snapshot` and `Replica.watch` run it as their
child process."""

import os
import signal
import sys
import threading

from . import _walsync


def _stop_when_parent_goes() -> None:
    # A watcher started by `Replica.watch` reads its stdin, a pipe from the application: at
    # EOF the application has ended (even by kill -9), and the watcher ships what is pending
    # and exits instead of outliving it. Blocking, not polling.
    def wait() -> None:
        try:
            # os.read, not sys.stdin: a daemon thread inside a buffered read aborts the
            # interpreter's shutdown.
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="walsync-parent", daemon=True).start()


def main() -> None:
    if os.environ.pop("WALSYNC_STOP_ON_EOF", None) == "1":
        _stop_when_parent_goes()
    code, cls = _walsync.main(sys.argv[1:])
    if cls is not None and os.environ.get("WALSYNC_ERROR_CLASS") == "1":
        # For the parent's exception class (Replica.snapshot, Replica.watch).
        print(f"walsync: class: {cls}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
