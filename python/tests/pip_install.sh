#!/usr/bin/env bash
# `pip install --no-build-isolation .` into a fresh virtual environment, with
# no network (--no-index), then `import loom` from outside the repository.
# $1: the repository root; $2: the CMake build directory to reuse.
set -euo pipefail
root=$1
build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
LOOM_BUILD_DIR=$build "$work/venv/bin/pip" install --no-build-isolation --no-index --no-deps -q "$root"
cd "$work"
"$work/venv/bin/python" - <<'PY'
import loom
assert "site-packages" in loom.__file__, loom.__file__
x = loom.arange(6, dtype=loom.float32).reshape(2, 3)
assert (x * 2).sum().item() == 30.0
print("installed:", loom.__file__, loom.__version__)
PY
