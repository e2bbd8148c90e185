#!/usr/bin/env bash
# dev-keys.sh: make the key pairs the example config.yaml names (dev/alice
# and dev/bob), unless they exist, so `make run` works on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dev
for user in alice bob; do
    if [ ! -f "dev/$user" ]; then
        ssh-keygen -q -t ed25519 -N '' -C "$user@berth-example" -f "dev/$user"
        echo "dev-keys: made dev/$user (log in with: ssh -p 2222 -i dev/$user $user@127.0.0.1)"
    fi
done
