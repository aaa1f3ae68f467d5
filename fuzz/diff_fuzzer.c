// diff_fuzzer.c: one source for allocator_diff_fuzzer and ring_diff_fuzzer. The same
// operation stream runs on an RSEQ instance and a CAS instance in this one process;
// both shadow models must hold and everything observable must be identical.
#include "fuzz/fuzz_target.h"

#ifndef FUZZ_FAMILY
#error "define FUZZ_FAMILY"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_enter_fake_cpus();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static struct op ops[FUZZ_MAX_OPS];
  size_t n = ops_decode(data + 1, size - 1, ops, FUZZ_MAX_OPS);
  enum rseq_index index = fuzz_pick_index(data[0]);
  struct ops_trace tr = {0}, tc = {0};
  struct ops_result rr, rc;
  ops_run(FUZZ_FAMILY, RSEQ_MODE_RSEQ, index, ops, n, &tr, &rr);
  ops_run(FUZZ_FAMILY, RSEQ_MODE_CAS, index, ops, n, &tc, &rc);
  char what[800];
  what[0] = 0;
  if (rr.failed)
    snprintf(what, sizeof what, "rseq mode, %s index: op %zu: %s", rseq_index_name(index), rr.failed_op, rr.message);
  else if (rc.failed)
    snprintf(what, sizeof what, "cas mode, %s index: op %zu: %s", rseq_index_name(index), rc.failed_op, rc.message);
  else {
    long d = ops_trace_diff(&tr, &tc);
    if (d >= 0)
      snprintf(what, sizeof what, "%s index: rseq and cas traces diverge at value %ld (%#lx vs %#lx)",
               rseq_index_name(index), d, (unsigned long)(d < (long)tr.n ? tr.v[d] : 0),
               (unsigned long)(d < (long)tc.n ? tc.v[d] : 0));
  }
  ops_trace_free(&tr);
  ops_trace_free(&tc);
  if (what[0]) fuzz_report("diff", FUZZ_FAMILY, ops, n, what);
  return 0;
}
