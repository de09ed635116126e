#!/usr/bin/env bash
# `make gpu-check`: every CUDA test (ctest label `cuda`) on a machine with a
# GPU, failing where a test skipped that should have run. Usage:
#   tests/cuda/gpu_check.sh BUILD_DIR
# The only skips allowed are the tests that need something this machine
# lacks by design: two GPUs (peer copies; NCCL across ranks) or no GPU at all.
set -euo pipefail
build=${1:?usage: gpu_check.sh BUILD_DIR}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no GPU here (nvidia-smi finds none); the CUDA tests would only skip" >&2
  exit 1
fi
nvidia-smi -L

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
(cd "$build" && ctest -L cuda --output-on-failure --timeout 300 -j4) 2>&1 | tee "$log" || status=$?

# ctest prints "... ***Skipped" for a GTEST_SKIP.
allowed='CopiesBetweenTwoGpus|WithoutAGpuEveryRequestSaysWhy|Nccl'
skipped=$(grep -E '\*\*\*Skipped|Not Run' "$log" | grep -Ev "$allowed" || true)
if [ -n "$skipped" ]; then
  echo "gpu-check: these CUDA tests skipped on a machine with a GPU:" >&2
  echo "$skipped" >&2
  status=1
fi
if [ "$status" = 0 ]; then echo "gpu-check: passed"; else echo "gpu-check: FAILED" >&2; fi
exit "$status"
