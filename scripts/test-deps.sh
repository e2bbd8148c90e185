#!/usr/bin/env bash
# test-deps.sh — install the client tools the berth test suite uses
# (ssh, sshd, rsync, paramiko, curl, git, sshfs, debootstrap, asciinema) from Debian
# packages. Idempotent: only missing packages are installed, and
# `apt-get update` runs only when something has to be installed.
set -euo pipefail

PACKAGES=(openssh-client openssh-server rsync python3-paramiko curl git sshfs debootstrap asciinema)

installed() {
    case "$1" in
        # Debian's python3-* packages are only visible to the system python.
        python3-paramiko) /usr/bin/python3 -c 'import paramiko' 2>/dev/null ;;
        *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ;;
    esac
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "test-deps: all present (${PACKAGES[*]})"
    exit 0
fi

echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for pkg in "${missing[@]}"; do
    installed "$pkg" || { echo "test-deps: $pkg still missing after install" >&2; exit 1; }
done
echo "test-deps: installed ${missing[*]}"
