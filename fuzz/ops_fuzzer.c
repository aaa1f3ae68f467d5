// ops_fuzzer.c: one source for allocator_ops_fuzzer, ring_ops_fuzzer and
// rseq_primitives_fuzzer (FUZZ_FAMILY picks). The input is an operation stream (byte
// 0: mode and index; then 10 bytes per op); the family's shadow model checks every
// result as the stream runs. Any model failure aborts with the stream printed.
#include "fuzz/fuzz_target.h"

#ifndef FUZZ_FAMILY
#error "define FUZZ_FAMILY"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static struct op ops[FUZZ_MAX_OPS];
  size_t n = ops_decode(data + 1, size - 1, ops, FUZZ_MAX_OPS);
  enum rseq_mode mode = (data[0] & 2) ? RSEQ_MODE_CAS : RSEQ_MODE_RSEQ;
  enum rseq_index index = fuzz_pick_index(data[0]);
  struct ops_trace trace = {0};
  struct ops_result r;
  ops_run(FUZZ_FAMILY, mode, index, ops, n, &trace, &r);
  ops_trace_free(&trace);
  if (r.failed) {
    char what[700];
    snprintf(what, sizeof what, "%s mode, %s index: op %zu: %s", rseq_mode_name(mode),
             rseq_index_name(index), r.failed_op, r.message);
    fuzz_report(ops_family_name(FUZZ_FAMILY), FUZZ_FAMILY, ops, n, what);
  }
  return 0;
}
