# Shared by tests/s3/{garage,moto,s3s-fs}.sh: sourced after NAME and RUN are set.
#   NAME  the script's name in its messages; RUN  the server's state directory (pid, env).

say() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stop the server whose pid is in $RUN/pid (TERM, then KILL after 5 s) and delete its state.
stop() {
  if [ -f "$RUN/pid" ]; then
    local pid
    pid=$(cat "$RUN/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$RUN"
}

# The server of $RUN still runs: print its exports and succeed (start reuses it).
running() {
  [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null && cat "$RUN/env"
}
