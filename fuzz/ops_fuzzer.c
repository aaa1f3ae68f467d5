// ops_fuzzer.c: one source for allocator_ops_fuzzer, ring_ops_fuzzer and
// rseq_primitives_fuzzer (FUZZ_FAMILY picks). The input is an operation stream (byte
// 0: mode and index; then 10 bytes per op); the family's shadow model checks every
// result as the stream runs. Any model failure aborts with the stream printed.
#include "fuzz/fuzz_target.h"

#ifndef FUZZ_FAMILY
#error "define FUZZ_FAMILY"
#endif

static struct op ops[FUZZ_MAX_OPS];
static size_t n;
static enum rseq_mode mode;
static enum rseq_index index;

// No trace: the model checks every result as the stream runs, and only the diff
// fuzzers compare traces.
static int run_once(struct ops_result *r) {
  ops_run(FUZZ_FAMILY, mode, index, ops, n, NULL, r);
  return r->failed;
}

static int fails_alone(void) {
  struct ops_result r;
  return run_once(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  n = ops_decode(data + 1, size - 1, ops, FUZZ_MAX_OPS);
  mode = (data[0] & 2) ? RSEQ_MODE_CAS : RSEQ_MODE_RSEQ;
  index = fuzz_pick_index(data[0]);
  unsigned earlier = FUZZ_FAMILY == FAMILY_ALLOC ? ops_heap_uses(mode, index) : 0;
  if (earlier >= FUZZ_HEAP_REUSE) earlier = 0;  // this input gets a fresh heap
  struct ops_result r;
  if (run_once(&r)) {
    char what[1000], history[200];
    fuzz_describe_history(earlier, fails_alone, history, sizeof history);
    snprintf(what, sizeof what, "%s mode, %s index: op %zu: %s (%s)", rseq_mode_name(mode),
             rseq_index_name(index), r.failed_op, r.message, history);
    fuzz_report(ops_family_name(FUZZ_FAMILY), FUZZ_FAMILY, ops, n, what);
  }
  return 0;
}
