# promtool for the CI scripts, from Debian's prometheus package: downloaded (not
# installed, so no service), unpacked into .cache/prom once, by whichever script asks first.
#
# Source this file, then call `install_promtool`; it sets PROMTOOL to a working promtool.
# Safe to run repeatedly and from several scripts at once: a lock serialises the download,
# and `apt-get update` runs only when the download fails (missing or stale package lists).
# PROM_DIR=... caches elsewhere; PROMETHEUS_DEB_VERSION=... pins another version.

PROM_DIR="${PROM_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.cache/prom}"
PROMETHEUS_DEB_VERSION="${PROMETHEUS_DEB_VERSION:-2.42.0+ds-5+deb12u1}"

# A working promtool from the cache, wherever a script extracted it.
cached_promtool() {
    local candidate
    for candidate in "$PROM_DIR/usr/bin/promtool" "$PROM_DIR/promtool" "$PROM_DIR/bin/promtool"; do
        if [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_promtool() {
    if PROMTOOL=$(cached_promtool); then
        return 0
    fi
    mkdir -p "$PROM_DIR"
    (
        # Another script may be installing it right now: wait for it, then look again.
        flock 9
        cached_promtool >/dev/null && exit 0
        work=$(mktemp -d "$PROM_DIR/.download.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        package="prometheus=$PROMETHEUS_DEB_VERSION"
        if ! (cd "$work" && apt-get download "$package" >/dev/null 2>&1); then
            if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo -n apt-get update -qq; fi
            (cd "$work" && apt-get download "$package" >/dev/null)
        fi
        dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
        mkdir -p "$PROM_DIR/usr/bin"
        # A rename within one filesystem: readers never see a half-written binary.
        mv -f "$work/root/usr/bin/promtool" "$PROM_DIR/usr/bin/promtool"
    ) 9>"$PROM_DIR.lock"
    PROMTOOL=$(cached_promtool) || {
        echo "promtool: none in $PROM_DIR after unpacking $PROMETHEUS_DEB_VERSION" >&2
        return 1
    }
}
