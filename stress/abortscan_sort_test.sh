#!/usr/bin/env bash
# abortscan_sort_test: abortscan --object on a real program we did not write: sort(1)
# with libccache_malloc.so preloaded, on a fixed input, with each index. Every
# instruction of every allocator section that sort reaches is forced to abort once;
# each run's output must be byte-identical to the undisturbed run, which must itself
# equal sort's output on glibc's malloc, and the library's own abort counter must
# have counted the abort. The malloc and free fast-path sections must be among those
# reached.
set -uo pipefail
scan=$1
lib=$2
out=${TEST_UNDECLARED_OUTPUTS_DIR:-${TEST_TMPDIR:-/tmp}}
input="${TEST_TMPDIR:-/tmp}/sort-input.txt"
# 3000 fixed lines (an LCG, no randomness): sort allocates a line table and buffers.
awk 'BEGIN { x = 12345; for (i = 0; i < 3000; i++) { x = (x * 1103515245 + 12345) % 2147483648;
  printf "%d %s\n", x % 1000003, substr("wwwwwwwwwwwwwwwwwwww", 1, x % 21) } }' > "$input"
fail=0
for index in cpu cid; do
  log="$out/sort-$index.txt"
  LC_ALL=C CCACHE_MODE=rseq "$scan" --object "$lib" --preload --index "$index" \
    --json "$out/sort-$index.json" -- sort "$input" > "$log" 2>&1
  rc=$?
  echo "== index $index: $(tail -1 "$log")"
  ok=1
  [ $rc -eq 0 ] || { echo "FAIL: abortscan exited $rc"; ok=0; }
  grep -q 'identical with and without the object preloaded' "$log" ||
    { echo "FAIL: the preloaded output differs from glibc's"; ok=0; }
  # The library has our registry: its own abort counter must confirm each abort.
  grep -q "our registry's abort counters are read at exit too" "$log" ||
    { echo "FAIL: abortscan did not find the registry's counters"; ok=0; }
  for section in ccache_malloc_pop ccache_free_push; do
    grep -qE "^\| $section@[^ ]+ \| \+[0-9]+ .* \| yes \(counter [1-9][0-9]*\) \| yes \| ok \|$" "$log" ||
      { echo "FAIL: no forced abort passed, counted, in $section (was it reached?)"; ok=0; }
  done
  grep -qE ' [1-9][0-9]* forced aborts passed, 0 failed' "$log" || { echo "FAIL: see the table"; ok=0; }
  [ $ok -eq 1 ] || { cat "$log"; fail=1; }
done
[ $fail -eq 0 ] && echo PASS
exit $fail
