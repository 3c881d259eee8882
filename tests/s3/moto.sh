#!/usr/bin/env bash
# tests/s3/moto.sh install|start|stop [PORT]
#
# A second, independent S3 implementation for walsync's tests: moto's server (Python), which
# unlike Garage enforces conditional writes (If-None-Match / If-Match), so the namespace
# leases run against S3 too.
#   install  pip-install moto[server] (pinned) into a virtualenv under the cache (reused):
#            ${WALSYNC_CACHE:-$HOME/.cache/walsync}/moto.
#   start    install if needed, start on PORT (default 3950), create the bucket, and print the
#            endpoint (`export MOTO_ENDPOINT=...`, `export MOTO_BUCKET=...`) on stdout.
#   stop     stop the server started on PORT.
set -euo pipefail

CMD="${1:-start}"
PORT="${2:-3950}"
VERSION="5.2.5"
CACHE="${WALSYNC_CACHE:-${HOME:-/root}/.cache/walsync}"
VENV="$CACHE/moto-$VERSION"
RUN="${TMPDIR:-/tmp}/walsync-moto-$PORT"
NAME="moto.sh"
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BUCKET="walsync-moto"


install() {
  if "$VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
    return 0
  fi
  mkdir -p "$CACHE"
  exec 9>"$VENV.lock"
  flock 9
  if "$VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
    return 0
  fi
  say "installing moto[server]==$VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "moto[server]==$VERSION" >&2
}

start() {
  install
  running && return 0
  stop
  listening "$PORT" && die "port $PORT is in use"
  mkdir -p "$RUN"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$RUN/server.log" 2>&1 </dev/null &
  echo $! > "$RUN/pid"
  for _ in $(seq 1 300); do listening "$PORT" && break; sleep 0.1; done
  listening "$PORT" || { tail -20 "$RUN/server.log" >&2; die "moto did not start"; }
  # moto checks no signatures: a plain PUT creates the bucket.
  curl -sf -o /dev/null -X PUT "http://127.0.0.1:$PORT/$BUCKET" || die "moto: cannot create $BUCKET"
  cat > "$RUN/env" <<ENV
export MOTO_ENDPOINT=http://127.0.0.1:$PORT
export MOTO_BUCKET=$BUCKET
ENV
  cat "$RUN/env"
}

case "$CMD" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) die "usage: tests/s3/moto.sh install|start|stop [PORT]" ;;
esac
