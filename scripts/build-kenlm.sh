#!/usr/bin/env bash
# Build KenLM's lmplz (n-gram estimation) and build_binary (quantised binary LMs) into
# build/kenlm/bin, from the sdist of the kenlm release that pyproject.toml pins. Only the
# trainer's LM stage uses them (model/train/lm.py, which falls back to its own estimator
# without them); the service loads ARPA or binary LMs with pip's kenlm module alone.
#
# Idempotent: a stamp keyed on this script and the pinned version makes a second run a
# no-op. The sdist (427 kB) comes through pip like any package; pip prepares its metadata
# with the build tools' wheels it cached when it installed the kenlm module. Only kenlm is
# asked for as source (`--no-binary kenlm`): `--no-binary :all:` made pip compile those
# build tools too, cmake among them, which took 14 of the 18 min of a fresh machine's
# `make setup-dev` (8.7 s now, with an empty pip cache).
# Usage: scripts/build-kenlm.sh [python]   (a path from the repository root; default
# .venv/bin/python, the interpreter whose pip fetches the sdist)
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$script")/.."
PY=${1:-.venv/bin/python}
OUT=build/kenlm

version=$(sed -n 's/^ *"kenlm==\([0-9.]*\)".*/\1/p' pyproject.toml)
if [ -z "$version" ]; then
  echo "build-kenlm: pyproject.toml pins no kenlm==<version>" >&2
  exit 1
fi
stamp="$OUT/.stamp-$( (cat "$script"; echo "$version") | sha256sum | cut -c1-12)"
if [ -f "$stamp" ] && [ -x "$OUT/bin/lmplz" ] && [ -x "$OUT/bin/build_binary" ]; then
  exit 0
fi

# The minimal set for kenlm's CMakeLists (it asks Boost for program_options, system,
# thread and unit_test_framework even with tests off; system comes with thread).
# zlib, bzip2 and xz are optional there (compressed input), and we feed plain text.
bash scripts/apt-ensure.sh cmake g++ make \
  libboost-program-options-dev libboost-thread-dev libboost-test-dev

mkdir -p "$OUT"
work=$(mktemp -d "$OUT/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-kenlm: building lmplz and build_binary of kenlm $version"
"$PY" -m pip download -q --no-deps --no-binary kenlm "kenlm==$version" -d "$work" 2>&1 |
  { grep -v '^WARNING: Location' || true; }
tar -xzf "$work/kenlm-$version.tar.gz" -C "$work"
# kenlm declares cmake_minimum_required < 3.5, which cmake 4 refuses without this.
export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}
# KENLM_MAX_ORDER=6 as in pip's kenlm module, so that it loads every model lmplz writes.
cmake -S "$work/kenlm-$version" -B "$work/cmake" -DCMAKE_BUILD_TYPE=Release \
  -DKENLM_MAX_ORDER=6 -Wno-dev >"$work/cmake.log" 2>&1 || {
  cat "$work/cmake.log" >&2
  exit 1
}
cmake --build "$work/cmake" --target lmplz build_binary -j "$(nproc)" >"$work/build.log" 2>&1 || {
  tail -50 "$work/build.log" >&2
  exit 1
}
mkdir -p "$OUT/bin"
install -m 755 "$work/cmake/bin/lmplz" "$work/cmake/bin/build_binary" "$OUT/bin/"
rm -f "$OUT"/.stamp-*
touch "$stamp"
echo "build-kenlm: $OUT/bin/lmplz and $OUT/bin/build_binary"
