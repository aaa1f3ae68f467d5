// conformance_test: every allocation call at every boundary, on glibc's malloc and on
// a ccache heap (allocator/conformance.h): malloc, realloc, realloc(NULL), valloc and
// pvalloc with every boundary size; calloc and reallocarray with every pair of
// overflow-prone factors and every size times 0, 1 and 2; aligned_alloc,
// posix_memalign and memalign with every alignment times a set of sizes. Both modes,
// both indexes. Prints each disagreement (call, arguments, both results) and the
// counts; fails on any disagreement. Every returned block's malloc_usable_size is asked
// of the library that returned it (at least the request). A call that aborts (ccache
// reports a pointer it does not own, say) is named on stderr with its arguments.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "allocator/conformance.h"
#include "rseq/testing.h"

#define MAX 2048

// The call being checked, for the abort handler (write(2) only: a signal handler).
static char current[256];

static void on_abort(int sig) {
  static const char head[] = "conformance_test: aborted during ";
  if (write(2, head, sizeof head - 1) < 0 || write(2, current, strlen(current)) < 0 ||
      write(2, "\n", 1) < 0) {
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  signal(SIGABRT, on_abort);
  static size_t sizes[MAX], aligns[MAX], factors[MAX];
  size_t ns = conformance_sizes(sizes, MAX), na = conformance_alignments(aligns, MAX),
         nf = conformance_factors(factors, MAX);
  CHECK(ns <= MAX && na <= MAX && nf <= MAX);
  // For the aligned calls: the sizes that matter to alignment, not all of them.
  const size_t aligned_sizes[] = {0, 1, 15, 16, 17, 100, 4095, 4096, 4097, 8192, 65536,
                                  (size_t)256 << 10, ((size_t)256 << 10) + 1, (size_t)1 << 20,
                                  SIZE_MAX - 4096, SIZE_MAX - 1, SIZE_MAX};
  size_t nas = sizeof aligned_sizes / sizeof aligned_sizes[0];
  int bad = 0;
  for (int m = 0; m < 2; m++)
    for (int x = 0; x < 2; x++) {
      enum rseq_mode mode = m ? RSEQ_MODE_CAS : RSEQ_MODE_RSEQ;
      enum rseq_index index = x ? RSEQ_INDEX_MM_CID : RSEQ_INDEX_CPU_ID;
      struct rseq_percpu_mode resolved;
      const char *why_not = "";
      if (rseq_resolve_mode(mode, index, &resolved, &why_not) != 0) {
        printf("SKIP: %s mode, %s index: %s\n", rseq_mode_name(mode), rseq_index_name(index),
               why_not);
        continue;
      }
      // The reservation of libccache_malloc.so (CCACHE_RESERVE_GB's default).
      struct ccache_options o = {.mode = mode, .index = index, .reserve_bytes = (size_t)64 << 30};
      struct ccache_heap *h = ccache_heap_create(&o);
      CHECK(h, "heap: errno %d", errno);
      struct conformance_counts counts = {0};
      char why[512];
      int shown = 0;
#define RUN(call, a, b)                                                       \
  do {                                                                        \
    snprintf(current, sizeof current, "%s(a=%zu, b=%zu), %s mode, %s index",  \
             conformance_call_name(call), (size_t)(a), (size_t)(b),          \
             rseq_mode_name(mode), rseq_index_name(index));                   \
    if (!conformance_check(h, call, a, b, &counts, why, sizeof why)) {        \
      if (shown++ < 40) printf("DISAGREE: %s mode, %s index: %s\n",           \
                               rseq_mode_name(mode), rseq_index_name(index), why); \
    }                                                                         \
  } while (0)
      // First, on the fresh heap: a calloc over 1 MiB that takes a large spare whose
      // pages still hold the freed block's bytes (the sampled check reads a resident
      // page; the mutant large-calloc-spare-not-zeroed fails here as well as below).
      const size_t stale[] = {(size_t)2 << 20, ((size_t)4 << 20) + 1, (size_t)8 << 20};
      for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++) {
        unsigned char *old = ccache_malloc(h, stale[i]);
        CHECK(old, "malloc(%zu): errno %d", stale[i], errno);
        memset(old, 0xEE, stale[i]);
        ccache_free(h, old);  // kept as a spare (16 MiB of spares at most: these take 14)
        RUN(CONF_CALLOC, 1, stale[i]);
      }
      const enum conformance_call by_size[] = {CONF_MALLOC, CONF_REALLOC, CONF_REALLOC_NULL,
                                               CONF_VALLOC, CONF_PVALLOC};
      for (size_t c = 0; c < sizeof by_size / sizeof by_size[0]; c++)
        for (size_t i = 0; i < ns; i++) RUN(by_size[c], sizes[i], 0);
      const enum conformance_call by_pair[] = {CONF_CALLOC, CONF_REALLOCARRAY};
      for (size_t c = 0; c < 2; c++) {
        for (size_t i = 0; i < nf; i++)
          for (size_t j = 0; j < nf; j++) RUN(by_pair[c], factors[i], factors[j]);
        for (size_t i = 0; i < ns; i++)
          for (size_t k = 0; k < 3; k++) {
            RUN(by_pair[c], sizes[i], k);
            RUN(by_pair[c], k, sizes[i]);
          }
      }
      const enum conformance_call by_align[] = {CONF_ALIGNED_ALLOC, CONF_POSIX_MEMALIGN,
                                                CONF_MEMALIGN};
      for (size_t c = 0; c < 3; c++)
        for (size_t i = 0; i < na; i++)
          for (size_t j = 0; j < nas; j++) RUN(by_align[c], aligned_sizes[j], aligns[i]);
#undef RUN
      snprintf(current, sizeof current, "the checks after the calls, %s mode, %s index",
               rseq_mode_name(mode), rseq_index_name(index));
      printf("%s mode, %s index: %lu calls agree, %lu resource-dependent (footprint >= 1 GiB, "
             "one side ENOMEM), %lu disagree\n", rseq_mode_name(mode), rseq_index_name(index),
             counts.agreed, counts.resource_dependent, counts.disagreed);
      CHECK(ccache_check_heap(h) == 0);
      struct ccache_stats st;
      ccache_get_stats(h, &st);
      CHECK(st.in_use_bytes == 0, "%lu bytes left in use", (unsigned long)st.in_use_bytes);
      ccache_heap_destroy(h);
      bad += counts.disagreed > 0;
    }
  CHECK(!bad, "ccache disagrees with glibc (above)");
  printf("PASS\n");
  return 0;
}
