// conformance.h: for tests and fuzzers only. One allocation call run on glibc's malloc and on a ccache
// heap with the same arguments, and compared. glibc is the oracle: the two must agree
// on success or failure and, on failure, on errno (on the returned error code for
// posix_memalign, whose errno glibc sets on failure and POSIX says to leave alone). Every block either returns must be usable for the full request (its
// first and last bytes written and read back, and its malloc_usable_size, asked of the
// library that returned it, at least the request), aligned as asked, and zero where calloc
// says so; a realloc must keep the old block's bytes, and leave it intact when it
// fails.
//
// glibc's functions are read from libc.so.6's own symbol table: in a sanitizer build
// that is glibc's malloc, not the sanitizer's, which is the oracle we want.
//
// One rule for what the oracle cannot decide: a request whose footprint (size plus
// alignment) is 1 GiB or more may fail for lack of memory on one side and succeed on
// the other, depending on the machine (overcommit, the heap's reservation). Such a
// pair, one ENOMEM and one success, is counted as "resource-dependent", not as a
// disagreement. Every other pair must agree.
#ifndef CCACHE_ALLOCATOR_CONFORMANCE_H_
#define CCACHE_ALLOCATOR_CONFORMANCE_H_

#include <stdbool.h>
#include <stddef.h>

#include "allocator/ccache.h"

enum conformance_call {
  CONF_MALLOC,         // malloc(a)
  CONF_CALLOC,         // calloc(a, b)
  CONF_REALLOC,        // realloc(a block of 100 bytes, a)
  CONF_REALLOC_NULL,   // realloc(NULL, a)
  CONF_REALLOCARRAY,   // reallocarray(a block of 100 bytes, a, b)
  CONF_ALIGNED_ALLOC,  // aligned_alloc(b, a)
  CONF_POSIX_MEMALIGN, // posix_memalign(&p, b, a)
  CONF_MEMALIGN,       // memalign(b, a)
  CONF_VALLOC,         // valloc(a)
  CONF_PVALLOC,        // pvalloc(a)
  CONF_CALLS,
};

const char *conformance_call_name(enum conformance_call c);

struct conformance_counts {
  unsigned long agreed, resource_dependent, disagreed;
};

// Runs call c with a and b on glibc and on heap; returns true when they agree (or the
// pair is resource-dependent), else false with why filled in (the call, its arguments,
// both results).
bool conformance_check(struct ccache_heap *heap, enum conformance_call c, size_t a, size_t b,
                       struct conformance_counts *counts, char *why, size_t why_size);

// The boundary values: sizes (0, 1, every class boundary +-1, the small/large
// threshold +-1, page multiples +-1, SIZE_MAX - k, ...), pairs whose product overflows
// in every way, and alignments (0, not a power of two, 2^k up to 2^40, ...). Each
// returns how many values it wrote (at most max).
size_t conformance_sizes(size_t *out, size_t max);
size_t conformance_alignments(size_t *out, size_t max);
size_t conformance_factors(size_t *out, size_t max);  // for the n x size products

#endif  // CCACHE_ALLOCATOR_CONFORMANCE_H_
