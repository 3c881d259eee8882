#!/usr/bin/env bash
# tests/s3/garage.sh install|start|stop [PORT]
#
# A real, single-node Garage S3 server on 127.0.0.1 for walsync's tests.
#   install  build Garage from crates.io once into the cache (outside the checkout, reused by
#            later runs on the same machine): ${WALSYNC_CACHE:-$HOME/.cache/walsync}/garage.
#            About 13 minutes on 2 cores the first time; instant afterwards.
#   start    install if needed, start on PORT (default 3900; RPC on PORT+1), create a key and
#            the bucket, and print `export AWS_...` lines on stdout (progress on stderr).
#   stop     stop the server started on PORT and delete its state.
set -euo pipefail

CMD="${1:-start}"
PORT="${2:-3900}"
RPC_PORT=$((PORT + 1))
VERSION="${GARAGE_VERSION:-2.5.0}"
CACHE="${WALSYNC_CACHE:-${HOME:-/root}/.cache/walsync}"
ROOT="$CACHE/garage-$VERSION"
BIN="$ROOT/bin/garage"
RUN="${TMPDIR:-/tmp}/walsync-garage-$PORT"
NAME="garage.sh"
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BUCKET="${S3_BUCKET:-walsync-test}"
REGION="${AWS_REGION:-us-east-1}"


install() {
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is needed to build Garage"
  mkdir -p "$ROOT"
  # One build at a time, even when several test runs start together.
  exec 9>"$ROOT.lock"
  flock 9
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    return 0
  fi
  say "building garage $VERSION into $ROOT (first time only; ~13 min on 2 cores)"
  local t0=$SECONDS
  CARGO_TARGET_DIR="$CACHE/build-garage" cargo install garage --version "$VERSION" --locked \
    --no-default-features --features bundled-libs,lmdb --root "$ROOT" >&2
  rm -rf "$CACHE/build-garage"
  say "built garage in $((SECONDS - t0))s"
}

start() {
  install
  running && return 0
  stop
  listening "$PORT" && die "port $PORT is in use"
  mkdir -p "$RUN/meta" "$RUN/data"
  chmod 700 "$RUN"
  cat > "$RUN/garage.toml" <<TOML
metadata_dir = "$RUN/meta"
data_dir = "$RUN/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$PORT"
root_domain = ".s3.garage.localhost"
TOML
  G() { "$BIN" -c "$RUN/garage.toml" "$@"; }
  RUST_LOG=garage=warn nohup "$BIN" -c "$RUN/garage.toml" server >"$RUN/server.log" 2>&1 </dev/null &
  echo $! > "$RUN/pid"
  for _ in $(seq 1 300); do listening "$PORT" && break; sleep 0.1; done
  listening "$PORT" || { tail -20 "$RUN/server.log" >&2; die "garage did not start"; }
  local node=""
  for _ in $(seq 1 100); do
    node=$(G node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
    sleep 0.1
  done
  [ -n "$node" ] || die "garage: no node id"
  G layout assign -z dc1 -c 1G "$node" >/dev/null
  G layout apply --version 1 >/dev/null
  local key="GK$(hex 12)" secret
  secret="$(hex 32)"
  G key import --yes -n walsync-test "$key" "$secret" >/dev/null
  G bucket create "$BUCKET" >/dev/null
  G bucket allow --read --write --owner "$BUCKET" --key "$key" >/dev/null
  G key allow --create-bucket "$key" >/dev/null
  # The S3 API answers 503 until the layout is live.
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/$BUCKET" 2>/dev/null || echo 000)
    case "$code" in 403|200|400) break ;; esac
    sleep 0.1
  done
  cat > "$RUN/env" <<ENV
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PORT
export AWS_REGION=$REGION
export S3_BUCKET=$BUCKET
export S3_SERVER_PID=$(cat "$RUN/pid")
ENV
  cat "$RUN/env"
}

case "$CMD" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) die "usage: tests/s3/garage.sh install|start|stop [PORT]" ;;
esac
