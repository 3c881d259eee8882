#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (idempotently),
# then runs formatting, lints, the no-async-runtime check, the FreeBSD compile check of the
# kqueue watcher (when the target can be installed), and every test.
#   tests/run.sh            # as in the README; .ci/run calls exactly this
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# The sqlite3 CLI: the manual-recovery test runs the README's procedure with it.
if ! command -v sqlite3 >/dev/null 2>&1; then
  log "installing sqlite3 (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq sqlite3 >&2
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

log "no async runtime in the binary"
if cargo tree -e normal --prefix none --locked | grep -qE '^(tokio|async-std|smol|futures-executor) '; then
  cargo tree -e normal -i tokio >&2 || true
  log "FAIL: the dependency tree contains an async runtime"
  exit 1
fi

# kqueue watcher: at least compile-checked for FreeBSD (skipped only if rustup cannot add it).
if command -v rustup >/dev/null 2>&1 && rustup target add x86_64-unknown-freebsd >/dev/null 2>&1; then
  log "cargo check --target x86_64-unknown-freebsd"
  cargo check --locked --target x86_64-unknown-freebsd
else
  log "note: x86_64-unknown-freebsd target unavailable; kqueue watcher not compile-checked"
fi

log "cargo test"
cargo test --locked -- --test-threads 2
