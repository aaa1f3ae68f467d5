// test_fill.h: a helper for the tests that need a CPU cache exactly full (the overflow
// section's liveness: allocator/liveness_test.c, stress/cpuset_shrink_test.c).
#ifndef CCACHE_ALLOCATOR_TEST_FILL_H_
#define CCACHE_ALLOCATOR_TEST_FILL_H_

#include <stdbool.h>
#include <stdint.h>

#include "allocator/ccache.h"

// Bytes in the cache of CPU (or mm_cid) `idx`; 0 for an index the heap does not have.
static inline uint64_t test_cached_bytes(struct ccache_heap *h, int idx) {
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  return idx >= 0 && idx < st.ncpus ? st.cpu_cached_bytes[idx] : 0;
}

// Frees held[--*n], on the caller's CPU, until the cache of `idx` is exactly full: until
// one free overflowed it (its cached bytes dropped), then until its cached bytes are
// back at the peak they had before that drop. The caller allocates more blocks than the
// cache holds first. Whether it got there; the blocks not freed stay in held[0, *n).
static inline bool test_fill_cache(struct ccache_heap *h, int idx, void **held, int *n) {
  uint64_t peak = 0;
  bool dropped = false;
  while (*n > 0) {
    uint64_t before = test_cached_bytes(h, idx);
    ccache_free(h, held[--*n]);
    uint64_t after = test_cached_bytes(h, idx);
    if (after < before)
      dropped = true;
    else if (!dropped)
      peak = after;
    if (dropped && after == peak) return true;
  }
  return false;
}

#endif  // CCACHE_ALLOCATOR_TEST_FILL_H_
