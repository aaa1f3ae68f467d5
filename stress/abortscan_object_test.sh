#!/usr/bin/env bash
# abortscan_object_test: abortscan --object on code we did not write (the sections of
# stress/foreign/foreign_sections.S, in the selftest/librseq conventions):
#   - the clean fixture, as a PIE (ET_DYN, tables filled in by relocations), as a
#     classic ET_EXEC, and linked so that its last abort handler starts fewer than 16
#     bytes before the end of the code segment (librseq's param_test, built with
#     Debian's ld, has one there): every instruction of every section reached, aborted,
#     and the output identical; nothing fails;
#   - an exit through a teardown stub (register moves, then a jump to the listed exit,
#     as librseq's memcpy sections leave): passes, with a note naming the stub; the same
#     stub with a store in it: the exit is unlisted (exit 1);
#   - a section without its CPU compare: every forced abort passes (exit 0), and it is
#     noted as comparing no cpu_id/mm_cid field (no clean fixture is noted);
#   - the broken twin: exit 1, the add section's side effect before the commit, the
#     push section's commit-not-last and the pop section's unlisted exit flagged;
#   - a failure that does not repeat on rerun is FLAKY, not FAIL (a natural abort in
#     the broken twin's add section used to fail a pop point about 1 run in 40);
#   - bad input: tables with a section outside any executable segment and a handler
#     without the signature are named by address; an ELF with no tables exits 2 with a
#     message; a command that is not deterministic is refused (exit 2).
set -uo pipefail
scan=$1 fixture=$2 nopie=$3 broken=$4 bad_table=$5 end_of_segment=$6 exit_stub=$7
exit_stub_store=$8 no_cpu_compare=$9
out=${TEST_UNDECLARED_OUTPUTS_DIR:-${TEST_TMPDIR:-/tmp}}
fail=0
scan_fixture() {  # BINARY: abortscan --object on it, undisturbed; sets name and rc
  name=$(basename "$1")
  "$scan" --object "$1" -- "$1" > "$out/$name.txt" 2>&1
  rc=$?
}
check() {  # description, then a command that must succeed
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

# The end-of-segment build's premise: its last abort handler (the 5-byte jump that ends
# __rseq_failure) starts fewer than 16 bytes before the end of the executable segment
# that holds it. Checked, so that a toolchain that lays it out otherwise is noticed
# rather than passing for nothing.
seg=($(readelf -lW "$end_of_segment" | awk '$1 == "LOAD" && $7 == "R" && $8 == "E" { print $3, $5 }'))
sec=($(readelf -SW "$end_of_segment" | sed 's/^ *\[ *[0-9]*\]//' | awk '$1 == "__rseq_failure" { print $3, $5 }'))
seg_end=$(( ${seg[0]:-0} + ${seg[1]:-0} ))
fail_end=$(( 0x${sec[0]:-0} + 0x${sec[1]:-0} ))
check "end-of-segment build: the last abort handler starts $(( seg_end - fail_end + 5 )) bytes before its segment ends (< 16)" \
  test "${#seg[@]}" -eq 2 -a "${#sec[@]}" -eq 2 -a $(( seg_end - fail_end + 5 )) -lt 16 -a $(( seg_end - fail_end )) -ge 0

for bin in "$fixture" "$nopie" "$end_of_segment" "$exit_stub"; do
  name=$(basename "$bin")
  "$scan" --object "$bin" --json "$out/$name.json" -- "$bin" > "$out/$name.txt" 2>&1
  rc=$?
  if grep -q '^SKIPPED' "$out/$name.txt"; then
    echo "SKIPPED: $name: $(grep '^SKIPPED' "$out/$name.txt")"
    continue
  fi
  check "$name: abortscan exits 0 (got $rc)" test "$rc" -eq 0
  check "$name: the undisturbed fixture exits 0 and prints its two lines" \
    grep -qE '^abortscan: undisturbed, the command exits 0 with [1-9][0-9]* bytes of stdout' "$out/$name.txt"
  check "$name: 3 sections, all entered" grep -q '^abortscan: 3 sections (3 entered' "$out/$name.txt"
  check "$name: no instruction failed, none unreached" \
    grep -qE ' [0-9]+ forced aborts passed, 0 failed, 0 not reached, 0 not forced' "$out/$name.txt"
  n=$(grep -cE '^\| foreign_[a-z_]+\+0x[0-9a-f]+ \| \+[0-9]+ .* \| ok \|$' "$out/$name.txt")
  check "$name: every instruction point passed ($n of 23)" test "$n" -eq 23
  check "$name: the post-commit points did not abort" \
    test "$(grep -c '(post-commit)` | yes | no | yes | ok |' "$out/$name.txt")" -eq 3
  check "$name: no section is noted for a missing CPU compare" \
    bash -c "! grep -q '| CPU compare |' '$out/$name.txt'"
  [ $fail -eq 0 ] || cat "$out/$name.txt"
done

# A section that never compares its CPU passes every forced abort (one thread, no
# migration): abortscan can only note that it finds no compare.
scan_fixture "$no_cpu_compare"
check "$name: every forced abort passes: exit 0 (got $rc)" test "$rc" -eq 0
check "$name: ... and the add section is noted for its missing CPU compare" \
  grep -qE '^\| foreign_percpu_add\+0x[0-9a-f]+ \| - \| CPU compare \| - \| - \| - \| note: no compare of a 32-bit field in memory' "$out/$name.txt"
check "$name: ... and only it" test "$(grep -c '| CPU compare |' "$out/$name.txt")" -eq 1
[ $fail -eq 0 ] || cat "$out/$name.txt"

"$scan" --object "$fixture" --max-runs 5 --seed 3 -- "$fixture" > "$out/sampled.txt" 2>&1
rc=$?
check "--max-runs 5: exit 0 (got $rc)" test "$rc" -eq 0
check "--max-runs 5: 5 forced, the other 18 reported as not forced, with the seed" \
  grep -qE ' 5 forced aborts passed, 0 failed, 0 not reached, 18 not forced \(sample: --max-runs 5, seed 3\)' "$out/sampled.txt"

# A failure that does not repeat: a --check that fails only the first time it runs. The
# point is forced twice more, passes, and is reported FLAKY (exit 1), not FAIL.
marker="$out/check_failed_once"
rm -f "$marker"
"$scan" --object "$fixture" --max-runs 1 --seed 3 --check "test -e '$marker' || { touch '$marker'; exit 1; }" \
  -- "$fixture" > "$out/flaky.txt" 2>&1
rc=$?
check "a failure that does not repeat: exit 1 (got $rc)" test "$rc" -eq 1
check "a failure that does not repeat: FLAKY, not FAIL, in the table" \
  grep -qE '^\| foreign_[a-z_]+\+0x[0-9a-f]+ \| \+[0-9]+ .* \| FLAKY: --check failed in one run, passed on 2 reruns \|$' "$out/flaky.txt"
check "a failure that does not repeat: counted as flaky, not failed" \
  grep -qE ' 0 forced aborts passed, 0 failed, .*; 1 flaky \(failed once, passed on 2 reruns\)' "$out/flaky.txt"
[ $fail -eq 0 ] || cat "$out/flaky.txt"

name=$(basename "$exit_stub")
check "$name: the exit through the stub is a note naming the stub and the listed exit" \
  grep -qE '^\| foreign_list_pop\+0x[0-9a-f]+ \| - \| exit points \| - \| - \| - \| note: `je 0x[0-9a-f]+` at \+19 leaves for 0x[0-9a-f]+, a stub of 2 register-only instructions that jumps to the listed exit 0x[0-9a-f]+ \|$' "$out/$name.txt"
scan_fixture "$exit_stub_store"
check "$name: a stub that stores is no teardown stub: exit 1 (got $rc)" test "$rc" -eq 1
check "$name: ... the exit is flagged unlisted" \
  grep -qE '^\| foreign_list_pop\+0x[0-9a-f]+ \| - \| exit points .*FAIL: `je 0x[0-9a-f]+` at \+19 leaves the section for 0x[0-9a-f]+, which __rseq_exit_point_array does not list' "$out/$name.txt"
check "$name: ... and nothing else fails" \
  grep -qE ' 23 forced aborts passed, 0 failed, 0 not reached' "$out/$name.txt"
[ $fail -eq 0 ] || cat "$out/$name.txt"

scan_fixture "$broken"
check "broken twin: abortscan exits 1 (got $rc)" test "$rc" -eq 1
check "broken twin: the side effect before the add's commit makes the output differ" \
  grep -qE '^\| foreign_percpu_add\+0x[0-9a-f]+ \| \+[0-9]+ \| `mov qword ptr \[rsi \+ rax\*8\], r8 \(commit\)` .* FAIL: stdout differs' "$out/$name.txt"
check "broken twin: ... shown by its first differing line (one add counted twice)" \
  grep -qE '^    got      counters sum [0-9]+, adds started 4001$' "$out/$name.txt"
check "broken twin: the push's commit that is not last is flagged statically" \
  grep -qE '^\| foreign_list_push\+0x[0-9a-f]+ \| - \| structure .*the commit is not last' "$out/$name.txt"
check "broken twin: ... and by a forced abort after the commit" \
  grep -qE '^\| foreign_list_push\+0x[0-9a-f]+ .*\(last, not a store\)` .* FAIL' "$out/$name.txt"
check "broken twin: the pop section's unlisted exit is flagged" \
  grep -qE '^\| foreign_list_pop\+0x[0-9a-f]+ \| - \| exit points .*`je 0x[0-9a-f]+` at \+19 leaves the section for 0x[0-9a-f]+, which __rseq_exit_point_array does not list' "$out/$name.txt"
check "broken twin: ... but no forced abort fails in the pop section (its code is right)" \
  bash -c "! grep -E '^\| foreign_list_pop.* \| \+[0-9]+ \| .*FAIL' '$out/$name.txt'"
[ $fail -eq 0 ] || cat "$out/$name.txt"

scan_fixture "$bad_table"
check "bad tables: abortscan exits 1 (got $rc)" test "$rc" -eq 1
check "bad tables: a section outside any executable segment is named by address" \
  grep -qE 'FAIL: descriptor at 0x[0-9a-f]+: \[start_ip 0x[0-9a-f]+, \+16\) is outside any executable segment' "$out/$name.txt"
check "bad tables: an abort handler without the signature is reported" \
  grep -qE 'FAIL: abort handler at 0x[0-9a-f]+ lacks the signature 0x53053053 before abort_ip' "$out/$name.txt"
check "bad tables: the three good sections still pass" \
  grep -qE ' 23 forced aborts passed, 0 failed' "$out/$name.txt"

"$scan" --object /bin/true -- /bin/true > "$out/true.txt" 2>&1
rc=$?
check "an ELF without rseq tables: exit 2 (got $rc)" test "$rc" -eq 2
check "an ELF without rseq tables: says so" grep -q 'has no rseq critical sections' "$out/true.txt"

"$scan" --object "$fixture" -- sh -c "'$fixture'; cat /proc/sys/kernel/random/uuid" > "$out/nondet.txt" 2>&1
rc=$?
check "a command that is not deterministic: exit 2 (got $rc)" test "$rc" -eq 2
check "a command that is not deterministic: refused with the reason" \
  grep -q 'refused: the command is not deterministic without perturbation' "$out/nondet.txt"

check "a command that is not deterministic: no two of 5 undisturbed runs agree" \
  grep -q 'no two of 5 undisturbed runs agree' "$out/nondet.txt"

# An undisturbed run that was disturbed (here: the first prints one line more, as a
# broken section does when the kernel aborts it on its own): the next two agree, and
# they are the baseline.
rm -f "$out/once"
"$scan" --object "$fixture" -- \
  sh -c "[ -e '$out/once' ] || { touch '$out/once'; echo disturbed; }; exec '$fixture'" \
  > "$out/once.txt" 2>&1
rc=$?
check "one disturbed undisturbed run: abortscan exits 0 (got $rc)" test "$rc" -eq 0
check "one disturbed undisturbed run: says it took 3 runs for two to agree" \
  grep -q '3 undisturbed runs before two agreed (runs 2 and 3)' "$out/once.txt"

[ $fail -eq 0 ] && echo PASS
exit $fail
