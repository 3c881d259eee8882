#!/usr/bin/env bash
# tests/s3/s3s-fs.sh install|start|stop [PORT]
#
# A third, independent S3 implementation for walsync's tests: s3s-fs (crates.io), a
# filesystem-backed server that checks signatures and enforces conditional writes.
#   install  cargo install s3s-fs (pinned) once into the cache (reused):
#            ${WALSYNC_CACHE:-$HOME/.cache/walsync}/s3s-fs-VERSION (~2.5 min on 2 cores).
#   start    install if needed, start on PORT (default 3960) with generated keys and a bucket,
#            and print `export S3S_...` lines on stdout.
#   stop     stop the server started on PORT and delete its state.
set -euo pipefail

CMD="${1:-start}"
PORT="${2:-3960}"
VERSION="0.14.1"
CACHE="${WALSYNC_CACHE:-${HOME:-/root}/.cache/walsync}"
ROOT="$CACHE/s3s-fs-$VERSION"
BIN="$ROOT/bin/s3s-fs"
RUN="${TMPDIR:-/tmp}/walsync-s3s-fs-$PORT"
NAME="s3s-fs.sh"
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BUCKET="walsync-s3s"


install() {
  [ -x "$BIN" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build s3s-fs"
  mkdir -p "$CACHE"
  exec 9>"$ROOT.lock"
  flock 9
  [ -x "$BIN" ] && return 0
  say "building s3s-fs $VERSION into $ROOT (first time only; ~2.5 min on 2 cores)"
  CARGO_TARGET_DIR="$CACHE/build-s3s-fs" cargo install s3s-fs --version "$VERSION" --locked \
    --features binary --root "$ROOT" >&2
  rm -rf "$CACHE/build-s3s-fs"
}

start() {
  install
  running && return 0
  stop
  listening "$PORT" && die "port $PORT is in use"
  mkdir -p "$RUN/root/$BUCKET"
  chmod 700 "$RUN"
  local key="AK$(hex 9)" secret
  secret="$(hex 20)"
  # The keys go on the command line (s3s-fs has no other way); loopback test use only.
  RUST_LOG=warn nohup "$BIN" --host 127.0.0.1 --port "$PORT" --access-key "$key" \
    --secret-key "$secret" "$RUN/root" >"$RUN/server.log" 2>&1 </dev/null &
  echo $! > "$RUN/pid"
  for _ in $(seq 1 300); do listening "$PORT" && break; sleep 0.1; done
  listening "$PORT" || { tail -20 "$RUN/server.log" >&2; die "s3s-fs did not start"; }
  cat > "$RUN/env" <<ENV
export S3S_ENDPOINT=http://127.0.0.1:$PORT
export S3S_BUCKET=$BUCKET
export S3S_KEY=$key
export S3S_SECRET=$secret
ENV
  cat "$RUN/env"
}

case "$CMD" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) die "usage: tests/s3/s3s-fs.sh install|start|stop [PORT]" ;;
esac
