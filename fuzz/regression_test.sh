#!/usr/bin/env bash
# Replays a fuzz target's checked-in corpus and saved crash reproducers, once each.
# Usage: regression_test.sh FUZZER DIR... (missing directories are skipped)
set -euo pipefail
bin=$1
shift
dirs=()
for d in "$@"; do
  if [ -d "$d" ]; then dirs+=("$d"); else echo "note: $d does not exist (no inputs there)"; fi
done
[ ${#dirs[@]} -gt 0 ] || { echo "FAIL: no corpus directory for $bin"; exit 1; }
n=$(find -L "${dirs[@]}" -type f | wc -l)
[ "$n" -gt 0 ] || { echo "FAIL: the corpus of $bin is empty"; exit 1; }
echo "replaying $n inputs from ${dirs[*]}"
# -runs=0: a libFuzzer binary executes every input once and stops; the plain replay
# driver ignores flags and does the same.
"$bin" -runs=0 "${dirs[@]}"
echo "PASS: $n inputs replayed"
