#!/bin/sh
# Builds a fuzz target with clang (libFuzzer + AddressSanitizer +
# UndefinedBehaviorSanitizer over the whole loom library) in its own build
# directory and runs it.
#
#   tests/fuzz/run_fuzz.sh [TARGET] [SECONDS] [libFuzzer options...]
#
# TARGET: safetensors (the default: fuzz_safetensors, the safetensors reader)
# or infer_request (fuzz_infer_request, the Open Inference Protocol's request
# parser in src/serve/protocol.cpp). SECONDS (default 60) is the fuzzing
# time. The seed corpus (valid inputs from the target's seed script) is
# regenerated each run; what the fuzzer learns accumulates in
# $BUILD/fuzz-corpus, and crashing inputs land in $BUILD/fuzz-artifacts
# (for safetensors; other targets add -TARGET to both names).
# Environment: LOOM_FUZZ_BUILD (build dir, default build-fuzz), JOBS (default 2).
set -eu

target=safetensors
case "${1:-}" in
  safetensors|infer_request) target=$1; shift ;;
esac
seconds=${1:-60}
if [ $# -gt 0 ]; then shift; fi
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${LOOM_FUZZ_BUILD:-$root/build-fuzz}
jobs=${JOBS:-2}

# Per target: its seed script, its dictionary, the longest input to try.
# -max_len: headers stay small, so the fuzzer spends its time on the
# structure (a request's binary section needs a little more room).
case "$target" in
  safetensors) seed_script=make_seeds.py; dict=safetensors.dict; max_len=4096; suffix= ;;
  infer_request) seed_script=make_infer_seeds.py; dict=infer_request.dict; max_len=8192; suffix=-$target ;;
esac

if ! command -v clang++ >/dev/null 2>&1; then
  echo "run_fuzz.sh: clang++ not found; install it with: apt-get install clang libclang-rt-dev" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "run_fuzz.sh: python3 not found (it writes the seed corpus); install it with: apt-get install python3" >&2
  exit 1
fi

# Everything instrumented for coverage (fuzzer-no-link) and sanitizers; the
# fuzzers' own CMakeLists adds -fsanitize=fuzzer to link libFuzzer's main.
flags="-fsanitize=address,undefined -fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" -DLOOM_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j"$jobs" --target "fuzz_$target"

seeds="$build/fuzz-seeds$suffix"
corpus="$build/fuzz-corpus$suffix"
artifacts="$build/fuzz-artifacts$suffix"
mkdir -p "$corpus" "$artifacts"
python3 "$root/tests/fuzz/$seed_script" "$seeds"

# -rss_limit_mb and -malloc_limit_mb turn an oversized allocation into a
# reported bug rather than a slow machine.
exec "$build/tests/fuzz/fuzz_$target" "$corpus" "$seeds" \
  -dict="$root/tests/fuzz/$dict" \
  -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
  -rss_limit_mb=2048 -malloc_limit_mb=512 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 "$@"
