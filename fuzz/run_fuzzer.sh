#!/usr/bin/env bash
# Open-ended fuzzing of one target into a corpus directory.
#   bazel run --config=fuzz //fuzz:NAME_run -- [CORPUS_DIR] [libFuzzer flags...]
# CORPUS_DIR defaults to /tmp/ccache-fuzz/NAME; it is seeded from the checked-in corpus.
set -euo pipefail
bin=$(realpath "$1")
name=$2
shift 2
corpus=/tmp/ccache-fuzz/$name
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then corpus=$1; shift; fi
mkdir -p "$corpus"
here=$(pwd)
[ -d "$here/fuzz/corpus/$name" ] && cp -n "$here/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null || true
extra=()
[ -f "$here/fuzz/$name.dict" ] && extra+=("-dict=$here/fuzz/$name.dict")
if [ -f "$here/fuzz/$name.options" ]; then
  max_len=$(sed -n 's/^max_len *= *//p' "$here/fuzz/$name.options")
  [ -n "$max_len" ] && extra+=("-max_len=$max_len")
fi
echo "fuzzing $name into $corpus"
exec "$bin" -artifact_prefix="${BUILD_WORKING_DIRECTORY:-.}/" "${extra[@]}" "$@" "$corpus"
