// conformance_fuzzer: allocation calls at the limits, on glibc's malloc and on a ccache
// heap, compared (allocator/conformance.h). Each 4 bytes of input make one call: the
// call, its first and second argument (each an index into the boundary values: sizes,
// overflow-prone factors and alignments, all in one table) and a signed nudge added
// to the first argument. Any disagreement aborts with the call, its arguments and both
// results.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "allocator/conformance.h"

#define MAX_VALUES 2048

static size_t values[MAX_VALUES];
static size_t nvalues;
static struct ccache_heap *heap;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!heap) {
    nvalues = conformance_sizes(values, MAX_VALUES);
    nvalues += conformance_factors(values + nvalues, MAX_VALUES - nvalues);
    nvalues += conformance_alignments(values + nvalues, MAX_VALUES - nvalues);
    if (nvalues > MAX_VALUES) abort();
    // The reservation of libccache_malloc.so (CCACHE_RESERVE_GB's default).
    struct ccache_options o = {.mode = RSEQ_MODE_AUTO, .reserve_bytes = (size_t)64 << 30};
    heap = ccache_heap_create(&o);
    if (!heap) abort();
  }
  struct conformance_counts counts = {0};
  char why[512];
  for (size_t i = 0; i + 4 <= size && i < 4 * 64; i += 4) {
    enum conformance_call c = (enum conformance_call)(data[i] % CONF_CALLS);
    size_t a = values[data[i + 1] * 8 % nvalues + data[i + 1] / 32 % 8] + (size_t)(int8_t)data[i + 3];
    size_t b = values[data[i + 2] * 8 % nvalues + data[i + 2] / 32 % 8];
    if (!conformance_check(heap, c, a, b, &counts, why, sizeof why)) {
      fprintf(stderr, "conformance_fuzzer: call %zu: %s\n", i / 4, why);
      abort();
    }
  }
  return 0;
}
