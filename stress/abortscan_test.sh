#!/usr/bin/env bash
# abortscan_test: abortscan over every critical section of our binaries (the workload
# drives the primitives, the allocator and the ring), with the cpu_id and the mm_cid
# index; fails on any instruction not covered or any invariant broken. Then the window
# scan (abortscan --window) with both indexes: the main thread held at every
# instruction before each section's start_ip while an actor thread on its CPU changes
# that CPU's data. Then the self-test: every deliberately broken section must be
# flagged.
set -uo pipefail
scan=$1 workload=$2 broken=$3
out=${TEST_UNDECLARED_OUTPUTS_DIR:-${TEST_TMPDIR:-/tmp}}
fail=0
for index in cpu cid; do
  echo "== abortscan, index $index"
  if ! "$scan" --workload "$workload" --index "$index" --json "$out/abortscan-$index.json"; then fail=1; fi
done
for index in cpu cid; do
  echo "== abortscan --window, index $index"
  if ! "$scan" --workload "$workload" --window --index "$index" --json "$out/window-$index.json"; then fail=1; fi
done
echo "== self-test: deliberately broken sections"
if ! "$scan" --workload "$broken" --expect-broken; then fail=1; fi
[ $fail -eq 0 ] && echo PASS
exit $fail
