#!/usr/bin/env bash
# Builds rbee exactly as the container image's build stage does: the
# Dockerfile runs this script, and CI (which has no Docker engine) runs it too
# and starts the result, so the image's build command cannot drift from what
# CI checks.
#
#   bash deploy/docker/build-binary.sh OUT     (OUT: path of the binary to write)
#
# CGO_ENABLED=1: GPU figures come from NVML through cgo (github.com/NVIDIA/go-nvml),
# which dlopens libnvidia-ml.so.1 at run time. The binary therefore links
# glibc dynamically but needs no CUDA or NVIDIA library to build or to start;
# on a GPU host the NVIDIA container runtime (or the driver) supplies
# libnvidia-ml. Without it the node reports no GPU figures and says why.
# -trimpath keeps build-machine paths out of the binary; -s -w drops the symbol
# table and DWARF (a smaller image; panics still print stack traces).
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUT" >&2
  exit 2
fi
out=$1
case $out in
  /*) ;;
  *) out="$PWD/$out" ;; # relative to where the caller stands, not the repo root
esac

cd "$(dirname "$0")/../.."
CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o "$out" ./cmd/rbee
