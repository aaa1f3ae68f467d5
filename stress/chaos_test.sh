#!/usr/bin/env bash
# chaos_test: real programs we did not write, with libccache_malloc.so preloaded, under
# //stress:chaos with all four forcers (migrate, cgroup, fence, antagonist): python3
# (PYTHONMALLOC=malloc, so every object goes through our malloc) and git. Each one's
# output must be byte-identical to its run on glibc's malloc, CCACHE_STATS=1 must show
# the allocator in charge, and the critical sections must have aborted in each. A forcer
# that cannot run here (no cpuset cgroup, no stress-ng) is named, and the test still
# requires the others.
set -uo pipefail
chaos=$1
lib="$(pwd)/$2"
make_repo="$(pwd)/$3"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
fail=0
py=/usr/bin/python3
[ -x $py ] || py=$(command -v python3)

script='
import random
random.seed(11)
d = {}
for i in range(120000):
    d["k%07d" % random.randrange(10**7)] = [i, str(i) * (i % 7)]
items = sorted(d.items())
print(len(items), items[0][0], items[-1][0], sum(v[0] for _, v in items) % 1000003)
'
# A small repository with fixed authors and dates, built on glibc's malloc.
repo="$tmp/repo"
"$make_repo" "$repo" 5
export GIT_CONFIG_NOSYSTEM=1 HOME="$tmp"
# 30 rounds: one round takes ~50 ms, too short for the forcers to land in a section.
gitcmd="for r in \$(seq 30); do git -C '$repo' log -p --stat --format='%H %s' | md5sum; git -C '$repo' rev-list --objects --all | git -C '$repo' cat-file --batch-check; done"

run() {  # name, then the command
  local name=$1
  shift
  "$@" > "$tmp/$name.glibc" 2> "$tmp/$name.glibc.err" || { echo "FAIL: $name fails on glibc"; fail=1; return; }
  PYTHONMALLOC=malloc CCACHE_STATS=1 timeout -k 5 120 "$chaos" --seconds 4 --preload "$lib" \
    --force migrate,cgroup,fence,antagonist -- "$@" > "$tmp/$name.chaos" 2> "$tmp/$name.err"
  local rc=$?
  echo "== $name: chaos exit $rc"
  grep '^chaos:' "$tmp/$name.err"
  local aborts
  aborts=$(grep -o 'aborts pop [0-9]* push [0-9]*' "$tmp/$name.err" | awk '{ s += $3 + $5 } END { print s + 0 }')
  echo "$name: $(grep -c 'ccache: process heap' "$tmp/$name.err") process(es) on libccache_malloc.so, $aborts aborts in all"
  [ $rc -eq 0 ] || { echo "FAIL: $name under chaos exited $rc"; cat "$tmp/$name.err"; fail=1; }
  grep -q 'ccache: process heap (rseq mode' "$tmp/$name.err" ||
    { echo "FAIL: $name: libccache_malloc.so was not in charge in rseq mode"; fail=1; }
  cmp -s "$tmp/$name.glibc" "$tmp/$name.chaos" ||
    { echo "FAIL: $name: output under chaos differs from the glibc run"; fail=1; }
  grep -qE '^chaos: migrate: [1-9][0-9]* affinity changes' "$tmp/$name.err" ||
    { echo "FAIL: $name: no migration was forced"; fail=1; }
  grep -qE '^chaos: fence: [1-9][0-9]* membarrier fences' "$tmp/$name.err" ||
    { echo "FAIL: $name: no fence was sent"; fail=1; }
  if grep -q '^chaos: cgroup: not exercised' "$tmp/$name.err"; then
    echo "NOTE: $name: the cgroup forcer could not run on this machine (see above)"
  else
    grep -qE '^chaos: cgroup: [1-9][0-9]* cpuset.cpus writes' "$tmp/$name.err" ||
      { echo "FAIL: $name: no cpuset write"; fail=1; }
  fi
  grep -q '^chaos: antagonist: stress-ng ran' "$tmp/$name.err" ||
    { echo "FAIL: $name: stress-ng did not run (ci/setup installs it)"; fail=1; }
  eval "${name}_aborts=$aborts"
}

run python3 "$py" -c "$script"
run git bash -c "$gitcmd"
# python3 allocates through malloc hundreds of thousands of times in 4 s of forcing: a
# run without one abort means the forcers did not reach its sections.
[ "${python3_aborts:-0}" -gt 0 ] || { echo "FAIL: python3: no critical section aborted under chaos"; fail=1; }
[ "${git_aborts:-0}" -gt 0 ] || { echo "FAIL: git: no critical section aborted under chaos"; fail=1; }
[ $fail -eq 0 ] && echo PASS
exit $fail
