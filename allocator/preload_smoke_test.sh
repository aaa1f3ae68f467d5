#!/usr/bin/env bash
# preload_smoke_test: real programs under LD_PRELOAD=libccache_malloc.so give output
# byte-identical to a run on glibc's malloc, in rseq mode and in CAS mode:
# python3 building and sorting a large dict, perl doing the same with a hash, sort(1)
# on a large generated file, a gzip round trip, and git reading a repository (log with
# stats, diffs, every object). CCACHE_STATS=1 proves the library was really in charge.
# Then python's ctypes calls mallinfo2 and malloc_stats: the ccache heap answers. And a
# program exporting functions named as the library's internals does not capture them.
set -euo pipefail
lib="$(pwd)/$1"
make_repo="$(pwd)/$2"
probe="$(pwd)/$3"
[ -f "$lib" ] || { echo "FAIL: $lib not found"; exit 1; }
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
fail=0

py='
import random
random.seed(12345)
d = {}
for i in range(300000):
    d["k%07d" % random.randrange(10**7)] = [i, str(i) * (i % 7)]
items = sorted(d.items())
print(len(items), items[0][0], items[-1][0], sum(v[0] for _, v in items) % 1000003)
print(sorted(d.keys(), key=lambda k: (len(d[k][1]), k))[:5])
'
python3 -c 'import random
random.seed(7)
for i in range(400000): print(random.randrange(10**9), "x" * random.randrange(30))' > "$tmp/input.txt"

run() {  # name, then the command
  local name=$1
  shift
  "$@" > "$tmp/$name.glibc" 2>/dev/null
  for mode in rseq cas; do
    # 30 s at most (a run takes ~1 s): a hang, say a lock held across fork, fails the
    # test at once, with a message.
    local rc=0
    timeout -k 5 30 env CCACHE_MODE=$mode CCACHE_STATS=1 LD_PRELOAD="$lib" "$@" > "$tmp/$name.$mode" 2> "$tmp/$name.$mode.err" || rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      echo "FAIL: $name (CCACHE_MODE=$mode) hung: killed after 30 s"; cat "$tmp/$name.$mode.err"; exit 1
    elif [ $rc -ne 0 ]; then
      echo "FAIL: $name (CCACHE_MODE=$mode) exited $rc:"; cat "$tmp/$name.$mode.err"; fail=1; continue
    fi
    if ! grep -q "ccache: process heap ($mode mode" "$tmp/$name.$mode.err"; then
      echo "FAIL: $name (CCACHE_MODE=$mode): libccache_malloc.so was not in charge:"; cat "$tmp/$name.$mode.err"; fail=1; continue
    fi
    if ! cmp -s "$tmp/$name.glibc" "$tmp/$name.$mode"; then
      echo "FAIL: $name (CCACHE_MODE=$mode): output differs from the glibc run"; fail=1; continue
    fi
    echo "ok: $name, CCACHE_MODE=$mode: identical output; $(grep 'ccache: process heap' "$tmp/$name.$mode.err")"
  done
}

# A small repository with fixed authors and dates (built on glibc's malloc): git's
# output is then the same on every run.
repo="$tmp/repo"
"$make_repo" "$repo" 6
export GIT_CONFIG_NOSYSTEM=1 HOME="$tmp"
pl='srand(42); my %h; for my $i (1..200000) { $h{int(rand(1e7))} = "x" x ($i % 13) }
my @k = sort { $a <=> $b } keys %h; print scalar(@k), " @k[0..4] ", length(join("", values %h)), "\n";'

run python3 python3 -c "$py"
run perl perl -e "$pl"
run git bash -c "git -C '$repo' log --stat --format='%H %s' && git -C '$repo' diff HEAD~5 HEAD | md5sum && git -C '$repo' rev-list --objects --all | git -C '$repo' cat-file --batch-check"
run sort sort "$tmp/input.txt"
run gzip bash -c "gzip -c '$tmp/input.txt' | gzip -dc | md5sum"
# glibc's introspection calls reach the ccache heap, not glibc's arenas: python's ctypes
# calls malloc_stats and mallinfo2 of the preloaded process.
intro='
import ctypes
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = M
big = ctypes.create_string_buffer(3 << 20)
m = libc.mallinfo2()
print(m.hblks >= 1, m.hblkhd >= 3 << 20, m.uordblks > 0)
libc.malloc_stats()
'
for mode in rseq cas; do
  rc=0
  out=$(CCACHE_MODE=$mode LD_PRELOAD="$lib" python3 -c "$intro" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL: introspection (CCACHE_MODE=$mode) exited $rc: $out"; fail=1; continue
  fi
  if ! echo "$out" | grep -qx "True True True" ||
     ! echo "$out" | grep -q "^ccache heap ($mode mode"; then
    echo "FAIL: introspection (CCACHE_MODE=$mode): mallinfo2 or malloc_stats did not answer for the ccache heap:"; echo "$out"; fail=1; continue
  fi
  echo "ok: introspection, CCACHE_MODE=$mode: mallinfo2 and malloc_stats answer for the ccache heap"
done
# The library's internal names are its own: a program that exports functions of the
# same names (allocator/interpose_probe.c, each aborts) does not capture its calls.
for mode in rseq cas; do
  rc=0
  out=$(CCACHE_MODE=$mode LD_PRELOAD="$lib" "$probe" 2>&1) || rc=$?
  if [ $rc -ne 0 ] || [ "$out" != "interpose_probe: ok" ]; then
    echo "FAIL: interpose_probe (CCACHE_MODE=$mode) exited $rc:"; echo "$out"; fail=1; continue
  fi
  echo "ok: interpose_probe, CCACHE_MODE=$mode: the library calls its own internals"
done
[ $fail -eq 0 ] && echo PASS
exit $fail
