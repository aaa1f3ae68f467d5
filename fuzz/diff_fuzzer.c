// diff_fuzzer.c: one source for allocator_diff_fuzzer and ring_diff_fuzzer. The same
// operation stream runs on an RSEQ instance and a CAS instance in this one process;
// both shadow models must hold and everything observable must be identical.
#include "fuzz/fuzz_target.h"

#ifndef FUZZ_FAMILY
#error "define FUZZ_FAMILY"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static struct op ops[FUZZ_MAX_OPS];
  size_t n = ops_decode(data + 1, size - 1, ops, FUZZ_MAX_OPS);
  char what[800];
  if (ops_compare_modes(FUZZ_FAMILY, fuzz_pick_index(data[0]), ops, n, what, sizeof what))
    fuzz_report("diff", FUZZ_FAMILY, ops, n, what);
  return 0;
}
