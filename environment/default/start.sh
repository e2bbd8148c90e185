#!/bin/sh
# berth's start script: the seed's start.sh, minus what berth now does
# itself (the user, permissions, keeping the container alive). It runs as
# root in the background at every container start, and its output is the
# container's provisioning log.
set -u

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
	echo "GPUs visible in this container:"
	nvidia-smi -L
	cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)
	echo "CUDA driver version: ${cuda:-unknown}"
else
	echo "No GPU visible in this container; CPU only."
fi
