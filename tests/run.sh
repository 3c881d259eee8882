#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (idempotently),
# then runs formatting, lints, the no-async-runtime check, the FreeBSD compile check of the
# kqueue watcher (when the target can be installed), every test, the Python bindings' suite
# and the packaging checks.
#   tests/run.sh            # as in the README; .ci/run calls exactly this
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# Debian packages the tests use: the sqlite3 CLI (the manual-recovery test runs the README's
# procedure with it), curl and flock (the S3 server script), script (restore's progress line
# under a terminal), openssl (the HTTPS-through-a-proxy test makes its own CA), lz4 (the
# manual recovery of LZ4-compressed segments).
missing=()
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v lz4 >/dev/null 2>&1 || missing+=(lz4)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (Debian packages)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

# The Prometheus project's own parser of the text exposition (the metrics test checks
# walsync's /metrics with it), in a virtualenv of its own under ~/.cache/walsync.
PYENV="${HOME}/.cache/walsync/py"
if ! "$PYENV/bin/python" -c 'import prometheus_client' >/dev/null 2>&1; then
  log "installing prometheus_client into $PYENV"
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q 'prometheus_client==0.26.0' >&2
fi
export WALSYNC_TEST_PYTHON="$PYENV/bin/python"

# The real S3 server of the S3 tests: Garage, built once into ~/.cache/walsync (outside the
# checkout, reused by later runs on this machine; ~13 min the first time). The tests start it
# on 127.0.0.1:3900; it is stopped when this script ends.
log "S3 server: tests/s3/garage.sh install"
tests/s3/garage.sh install
# A second, independent S3 implementation that enforces conditional writes (the leases):
# moto's server, pip-installed into ~/.cache/walsync (tests/moto.rs starts it on 3950).
log "S3 server: tests/s3/moto.sh install"
tests/s3/moto.sh install
# A third, s3s-fs (checks signatures, enforces conditional writes): built once from crates.io
# into ~/.cache/walsync (~2.5 min the first time; tests/servers.rs starts it on 3960).
log "S3 server: tests/s3/s3s-fs.sh install"
tests/s3/s3s-fs.sh install
trap 'tests/s3/garage.sh stop 3900 || true; tests/s3/moto.sh stop 3950 || true; tests/s3/s3s-fs.sh stop 3960 || true' EXIT

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy -p walsync-python --locked -- -D warnings

log "no async runtime in the binary or the Python extension"
if cargo tree -e normal --prefix none --locked -p walsync -p walsync-python | grep -qE '^(tokio|async-std|smol|futures-executor) '; then
  cargo tree -e normal -i tokio >&2 || true
  log "FAIL: the dependency tree contains an async runtime"
  exit 1
fi

# kqueue watcher: at least compile-checked for FreeBSD (skipped only if rustup cannot add it).
if command -v rustup >/dev/null 2>&1 && rustup target add x86_64-unknown-freebsd >/dev/null 2>&1; then
  log "cargo check --target x86_64-unknown-freebsd (without the tls feature: its C code needs a FreeBSD sysroot)"
  cargo check --locked --target x86_64-unknown-freebsd --no-default-features
else
  log "note: x86_64-unknown-freebsd target unavailable; kqueue watcher not compile-checked"
fi

log "cargo test"
cargo test --locked -- --test-threads 2

# The Python bindings (issue #19): the wheel built with maturin, installed into a fresh
# virtualenv, and its pytest suite against a local directory and the S3 server.
log "tests/python/run.sh"
tests/python/run.sh

# Packages (issue #6): .deb built, linted, installed, used and purged; .rpm built and listed;
# systemd unit verified; Dockerfile linted; static musl build; binary size.
log "packaging/check.sh"
packaging/check.sh
