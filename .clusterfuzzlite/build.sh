#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: the same fuzz targets as //fuzz, compiled with the
# base-builder's $CC, $CFLAGS and $LIB_FUZZING_ENGINE into $OUT, each with its
# <target>_seed_corpus.zip, .dict and .options. Plain compiler commands: the
# base-builder image has no Bazel. ci/cflite-build-check runs this script locally.
cd "${SRC:-$(cd "$(dirname "$0")/.." && pwd)}/ccache-suite" 2>/dev/null || cd "$(dirname "$0")/.."
: "${CC:=clang}" "${CFLAGS:=}" "${OUT:?set OUT}" "${LIB_FUZZING_ENGINE:?set LIB_FUZZING_ENGINE}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(-std=c11 -D_GNU_SOURCE -I. -mcx16 -g -O1)
lib_srcs=(
  rseq/rseq.c rseq/primitives.c rseq/registry.c rseq/fence.c sanitizers/sanitizers.c
  allocator/size_class.c allocator/central.c allocator/cpu_cache.c allocator/heap.c
  allocator/init.c allocator/large.c allocator/os.c allocator/page_heap.c ring/ring.c fuzz/ops.c
  allocator/conformance.c
)
objs=()
for src in "${lib_srcs[@]}"; do
  obj="$work/$(echo "$src" | tr / _).o"
  $CC $CFLAGS "${common[@]}" -c "$src" -o "$obj"
  objs+=("$obj")
done
build() {  # name source defines...
  local name=$1 src=$2
  shift 2
  $CC $CFLAGS "${common[@]}" "$@" -c "fuzz/$src" -o "$work/$name.o"
  $CC $CFLAGS $LIB_FUZZING_ENGINE "$work/$name.o" "${objs[@]}" -lpthread -ldl -o "$OUT/$name"
  if [ -d "fuzz/corpus/$name" ]; then
    (cd "fuzz/corpus/$name" && zip -q -r "$OUT/${name}_seed_corpus.zip" .)
  fi
  [ -f "fuzz/$name.dict" ] && cp "fuzz/$name.dict" "$OUT/"
  [ -f "fuzz/$name.options" ] && cp "fuzz/$name.options" "$OUT/"
  echo "built $OUT/$name"
}
build allocator_ops_fuzzer ops_fuzzer.c -DFUZZ_FAMILY=FAMILY_ALLOC
build ring_ops_fuzzer ops_fuzzer.c -DFUZZ_FAMILY=FAMILY_RING
build rseq_primitives_fuzzer ops_fuzzer.c -DFUZZ_FAMILY=FAMILY_PRIM
build allocator_diff_fuzzer diff_fuzzer.c -DFUZZ_FAMILY=FAMILY_ALLOC
build ring_diff_fuzzer diff_fuzzer.c -DFUZZ_FAMILY=FAMILY_RING
build size_class_fuzzer size_class_fuzzer.c
build conformance_fuzzer conformance_fuzzer.c
