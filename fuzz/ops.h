// ops.h: operation streams for the allocator, the ring and the rseq primitives, with
// shadow models. One interpreter per family runs a stream against one instance, checks
// every result against its model as it goes, and records an observable trace: the
// values that must be identical whatever the mode (success or failure, usable sizes,
// contents, the stats that should agree). The fuzzers decode streams from their input;
// the differential check (ci/differential) generates them from a seed, runs each in
// RSEQ and CAS mode, and compares the traces.
//
// Single-threaded and deterministic: the caller's thread must be in fake-CPU mode
// (rseq_fake_cpu_enter), and the streams choose the CPU themselves (OP_*_CPU).
#ifndef CCACHE_FUZZ_OPS_H_
#define CCACHE_FUZZ_OPS_H_

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rseq/rseq.h"

#ifdef __cplusplus
extern "C" {
#endif

struct op {
  uint8_t kind;
  uint8_t cpu;
  uint32_t a, b;
};

enum ops_family { FAMILY_ALLOC = 0, FAMILY_RING, FAMILY_PRIM, FAMILY_COUNT };
const char *ops_family_name(enum ops_family f);
int ops_kind_count(enum ops_family f);
const char *ops_kind_name(enum ops_family f, int kind);

// Decode a fuzzer input: 10 bytes per op (kind, cpu, a, b).
size_t ops_decode(const uint8_t *data, size_t size, struct op *out, size_t max);
// A seeded random stream of n ops.
void ops_generate(enum ops_family f, uint64_t seed, struct op *out, size_t n);

struct ops_trace {
  uint64_t *v;  // one or more values per op
  size_t n, cap;
};
void ops_trace_free(struct ops_trace *t);

struct ops_result {
  int failed;            // a model check failed
  size_t failed_op;      // at which op
  char message[512];     // what failed
};

// Run a stream on a fresh instance of `mode` x `index`, created and destroyed inside
// (allocator streams: see ops_reuse_heaps). `trace` may be NULL: nothing recorded.
void ops_run(enum ops_family f, enum rseq_mode mode, enum rseq_index index, const struct op *ops,
             size_t n, struct ops_trace *trace, struct ops_result *result);

// Allocator streams: 0 (the default) gives each stream a fresh heap; N > 0 lets a heap
// per mode and index serve up to N streams in a row, each ending with everything
// freed (the fuzzers: fast, but a failure may need the earlier streams to reproduce).
// Any call destroys the kept heaps.
void ops_reuse_heaps(unsigned max_streams);
// How many streams the kept heap of mode x index has served (1: fresh for this one).
unsigned ops_heap_uses(enum rseq_mode mode, enum rseq_index index);

// Runs the stream in RSEQ mode and in CAS mode with `index`: 1 (and why) when either
// model fails or the observable traces differ, else 0. The differential check and the
// diff fuzzers share it.
int ops_compare_modes(enum ops_family f, enum rseq_index index, const struct op *ops, size_t n,
                      char *why, size_t why_size);

// Index of the first differing trace value, or -1 when equal.
long ops_trace_diff(const struct ops_trace *a, const struct ops_trace *b);

// Print a stream as C-like lines ("alloc: malloc cpu=1 a=123 b=0"), for reproducers.
void ops_print(enum ops_family f, const struct op *ops, size_t n, FILE *out);

#ifdef __cplusplus
}
#endif

#endif  // CCACHE_FUZZ_OPS_H_
