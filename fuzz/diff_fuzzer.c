// diff_fuzzer.c: one source for allocator_diff_fuzzer and ring_diff_fuzzer. The same
// operation stream runs on an RSEQ instance and a CAS instance in this one process;
// both shadow models must hold and everything observable must be identical.
#include "fuzz/fuzz_target.h"

#ifndef FUZZ_FAMILY
#error "define FUZZ_FAMILY"
#endif

static struct op ops[FUZZ_MAX_OPS];
static size_t n;
static enum rseq_index index;

static int fails_alone(void) {
  char why[800];
  return ops_compare_modes(FUZZ_FAMILY, index, ops, n, why, sizeof why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  n = ops_decode(data + 1, size - 1, ops, FUZZ_MAX_OPS);
  index = fuzz_pick_index(data[0]);
  unsigned earlier = FUZZ_FAMILY == FAMILY_ALLOC ? ops_heap_uses(RSEQ_MODE_RSEQ, index) : 0;
  if (earlier >= FUZZ_HEAP_REUSE) earlier = 0;  // this input gets a fresh heap
  char what[800], history[200], full[1100];
  if (ops_compare_modes(FUZZ_FAMILY, index, ops, n, what, sizeof what)) {
    fuzz_describe_history(earlier, fails_alone, history, sizeof history);
    snprintf(full, sizeof full, "%s (%s)", what, history);
    fuzz_report("diff", FUZZ_FAMILY, ops, n, full);
  }
  return 0;
}
