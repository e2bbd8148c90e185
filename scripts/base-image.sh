#!/usr/bin/env bash
# base-image.sh [--force] — build the local Docker image berth-base:bookworm
# (override with $BASE_IMAGE) from Debian packages alone: debootstrap a
# minbase bookworm rootfs from the mirror the host's apt already uses, point
# its apt sources at that mirror (bookworm, -updates, -security) and
# `docker import` it. No registry is needed. Idempotent: does nothing if the
# image already exists, unless --force is given.
set -euo pipefail

IMAGE="${BASE_IMAGE:-berth-base:bookworm}"
SUITE=bookworm
FORCE=0
case "${1:-}" in
    --force) FORCE=1 ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

docker info >/dev/null 2>&1 || { echo "base-image: the Docker engine is not reachable (docker info failed)" >&2; exit 1; }
if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base-image: $IMAGE already exists (use --force to rebuild)"
    exit 0
fi
start=$SECONDS

if ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# Print "URI SUITE" for every enabled binary source the host's apt knows,
# from deb822 *.sources files and classic one-line sources.list files.
host_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'function flush() {
                 if (types ~ /(^| )deb( |$)/ && enabled != "no") {
                     nu = split(uris, u, " "); ns = split(suites, s, " ")
                     for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
                 }
                 types = uris = suites = enabled = ""
             }
             /^[ \t]*#/ { next }
             /^[ \t]*$/ { flush(); next }
             /^Types:/   { sub(/^Types:[ \t]*/, "");   types = $0 }
             /^URIs:/    { sub(/^URIs:[ \t]*/, "");    uris = $0 }
             /^Suites:/  { sub(/^Suites:[ \t]*/, "");  suites = $0 }
             /^Enabled:/ { sub(/^Enabled:[ \t]*/, ""); enabled = $0 }
             END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -E -n 's/^[ \t]*deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+([^ \t]+).*/\2 \3/p' "$f"
    done
}
mirror_for() { host_sources | awk -v s="$1" '$2 == s { sub(/\/+$/, "", $1); print $1; exit }'; }

MIRROR="$(mirror_for "$SUITE")"
SECURITY="$(mirror_for "$SUITE-security")"
[ -n "$MIRROR" ] || { echo "base-image: no apt source for suite '$SUITE' found in /etc/apt/sources.list{,.d/*}" >&2; exit 1; }
[ -n "$SECURITY" ] || { echo "base-image: no apt source for suite '$SUITE-security' found in /etc/apt/sources.list{,.d/*}" >&2; exit 1; }

ROOTFS="$(mktemp -d /tmp/berth-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

echo "base-image: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null

cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SOURCES
# Keep the host's tolerance for stale Release files (e.g. snapshot mirrors).
if apt-config dump | grep -q '^Acquire::Check-Valid-Until "false"'; then
    echo 'Acquire::Check-Valid-Until "false";' > "$ROOTFS/etc/apt/apt.conf.d/99no-check-valid-until"
fi
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb

tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base-image: built $IMAGE from $MIRROR in $((SECONDS - start))s"
