// fuzz_target.h: what every fuzz target here shares: the fake-CPU setup and the
// failure report (a failing model check aborts, so libFuzzer saves the input).
#ifndef CCACHE_FUZZ_FUZZ_TARGET_H_
#define CCACHE_FUZZ_FUZZ_TARGET_H_

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz/ops.h"
#include "rseq/rseq.h"

#define FUZZ_MAX_OPS 400

// Run in fake-CPU mode: deterministic, every CPU's path reachable from one thread.
// (This header is included by exactly one source file of each fuzzer.)
int LLVMFuzzerInitialize(int *argc, char ***argv);

static inline void fuzz_enter_fake_cpus(void) {
  if (!rseq_available()) {
    fprintf(stderr, "fuzz target: rseq unavailable (%s); fake CPUs need it\n",
            rseq_unavailable_reason());
    abort();
  }
  if (rseq_fake_cpu_enter() != 0) {
    perror("rseq_fake_cpu_enter");
    abort();
  }
}

__attribute__((noreturn)) static inline void fuzz_report(const char *target, enum ops_family f,
                                                          const struct op *ops, size_t n,
                                                          const char *what) {
  fprintf(stderr, "\n%s: %s\nops (%zu):\n", target, what, n);
  ops_print(f, ops, n, stderr);
  abort();
}

// Byte 0 of an input picks the index (and, for single-mode targets, the mode).
static inline enum rseq_index fuzz_pick_index(uint8_t b) {
  return (b & 1) && rseq_mm_cid_available() ? RSEQ_INDEX_MM_CID : RSEQ_INDEX_CPU_ID;
}

// Allocator streams reuse a warm heap for this many inputs in a row, then start from a
// fresh one (see ops_reuse_heaps): bounded history, ~100 times the speed.
#define FUZZ_HEAP_REUSE 256

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_enter_fake_cpus();
  ops_reuse_heaps(FUZZ_HEAP_REUSE);
  return 0;
}

// After a failure on a reused heap: does the input fail alone, on fresh heaps? The
// answer goes into the report (a saved input that needs its predecessors says so).
// `fails_alone` reruns the input and returns whether it fails.
static inline void fuzz_describe_history(unsigned earlier_streams, int (*fails_alone)(void),
                                         char *out, size_t size) {
  if (!earlier_streams) {
    snprintf(out, size, "on a fresh heap");
    return;
  }
  ops_reuse_heaps(0);
  int alone = fails_alone();
  ops_reuse_heaps(FUZZ_HEAP_REUSE);
  snprintf(out, size, "on a heap that had served %u earlier inputs; rerun alone on fresh heaps "
                      "it %s", earlier_streams, alone ? "fails too" : "PASSES (it needs the "
                      "earlier inputs: rerun the fuzzer with the same -seed)");
}

#endif  // CCACHE_FUZZ_FUZZ_TARGET_H_
