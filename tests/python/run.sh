#!/usr/bin/env bash
# The Python bindings (issue #19): build the abi3 wheel from this checkout with maturin,
# install it with pip into a fresh virtualenv (no Rust toolchain involved), and run the pytest
# suite there against a local directory and the local S3 server. Called by tests/run.sh.
#   tests/python/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[tests/python/run.sh] %s\n' "$*" >&2; }

# The build tool, pinned, in a virtualenv of its own under ~/.cache/walsync (reused).
TOOLS="${HOME}/.cache/walsync/pybuild"
if ! "$TOOLS/bin/maturin" --version 2>/dev/null | grep -qx 'maturin 1.16.0'; then
  log "installing maturin 1.16.0 into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q 'maturin==1.16.0' >&2
fi

log "maturin build (profile wheel)"
rm -rf target/wheels
"$TOOLS/bin/maturin" build --locked --profile wheel -m packaging/python/Cargo.toml \
  --out target/wheels >&2
wheel=$(ls target/wheels/walsync-*.whl)
log "wheel: $(basename "$wheel"), $(stat -c %s "$wheel") bytes"

# A fresh virtualenv each run, with only the wheel and pytest: what a user's pip does, with no
# cargo on PATH.
VENV=target/python-venv
rm -rf "$VENV"
python3 -m venv "$VENV"
env PATH=/usr/bin:/bin "$VENV/bin/pip" install -q "$wheel" 'pytest==8.4.2' >&2

log "pytest tests/python"
cd tests/python
exec "../../$VENV/bin/python" -m pytest -p no:cacheprovider "$@" .
