#!/usr/bin/env bash
# gpu-check.sh: the real-NVML check for a host with an NVIDIA GPU. It
# builds berth, prints this host's GPUs through real NVML
# (`berth gpus --local`), and runs the nvml-tagged Go test that asserts at
# least one GPU with a UUID and memory. It needs no Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}"
go build -o bin/berth ./cmd/berth
echo "== berth gpus --local"
./bin/berth gpus --local
echo "== berth gpus --local --json"
./bin/berth gpus --local --json
echo "== go test -tags nvml ./gpus"
go test -count=1 -tags nvml -run TestRealNVML -v ./gpus
