// liveness_test: every retry loop of the allocator's RSEQ mode must commit within one
// retry after a permanent migration between its index read and its section. A loop
// that re-uses an index read from before the abort retries for ever (on a real CPU the
// kernel aborts it every time; here the CPU compare does): the test fails at the
// second abort, naming the section, instead of hanging until Bazel's timeout.
//
// The migration is played with fake CPUs (rseq_fake_cpu_enter): the thread reads its
// index (fake CPU 0), and the enter hook of the counting variant, which runs after
// that read and right before the section's asm, moves the thread to fake CPU 1. The
// section's CPU compare sees 1 != 0 and aborts; the retry must read 1 and commit in
// CPU 1's cache. For each of the four sections, through the operation that runs it:
//   ccache_malloc_pop    malloc from a warm cache            (malloc_retry)
//   ccache_free_push     free into a cache with room         (free_retry)
//   ccache_refill_push   malloc from an empty cache: refill  (push_batch's loop)
//   ccache_overflow_pop  free into a full cache: overflow    (pop_batch's loop)
// Checked: exactly one abort; the thread is on CPU 1 after it; the operation's blocks
// moved in CPU 1's cache, not CPU 0's (per-CPU cached bytes); the heap's invariants.
// Both indexes (fake CPUs set cpu_id and mm_cid alike).
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "allocator/ccache.h"
#include "allocator/test_fill.h"
#include "rseq/rseq.h"
#include "rseq/test_liveness.h"
#include "rseq/testing.h"

static int migrate_section = -1;  // the section whose next entry moves the thread
static int migrations;

// Counting variants only: right before the section's asm, after the caller's read.
// Runs in this (the only) thread.
static void enter_hook(int section_id, enum rseq_index index, int cpu) {
  (void)index;
  (void)cpu;
  if (section_id != migrate_section) return;
  migrate_section = -1;  // once: the move is permanent, the retry must follow it
  rseq_fake_cpu_set(1);
  migrations++;
}


static uint64_t cached(struct ccache_heap *h, int cpu) {
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  CHECK(st.ncpus > cpu);
  return st.cpu_cached_bytes[cpu];
}

enum { SIZE = 64, FILL = 400 };  // more blocks than a 4 KiB CPU cache holds of 64 B

// One operation under a migration at `section`'s entry. `op` runs it on CPU 0;
// `expect_cpu1_delta` is the sign of the change CPU 1's cached bytes must show.
static void check_migration(struct ccache_heap *h, enum rseq_index index, const char *section,
                            void (*prepare)(struct ccache_heap *), void (*op)(struct ccache_heap *),
                            int expect_cpu1_delta) {
  test_context("index=%s section=%s (a migration from fake CPU 0 to 1 at the section's entry)",
               rseq_index_name(index), section);
  rseq_fake_cpu_set(0);
  prepare(h);
  rseq_fake_cpu_set(0);
  uint64_t c0 = cached(h, 0), c1 = cached(h, 1);
  migrations = 0;
  migrate_section = test_section_id(section);
  CHECK(migrate_section >= 0, "section %s is not in the registry", section);
  char what[128];
  snprintf(what, sizeof what, "%s after a migration (index %s)", section, rseq_index_name(index));
  // Budget 1: the abort the migration causes. A second one means the retry used the
  // old read: test_liveness fails at once, naming the section and the index now.
  test_liveness_begin(what, 1);
  op(h);
  int aborts = test_liveness_end();
  CHECK_EQ(migrations, 1);  // the operation did enter that section
  CHECK_EQ(aborts, 1);
  CHECK_EQ(rseq_current_index(index), 1);
  uint64_t d0 = cached(h, 0), d1 = cached(h, 1);
  CHECK(d0 == c0, "CPU 0's cache went from %lu to %lu bytes: the retry committed on the CPU it "
        "read first", (unsigned long)c0, (unsigned long)d0);
  CHECK(expect_cpu1_delta > 0 ? d1 > c1 : d1 < c1,
        "CPU 1's cache went from %lu to %lu bytes: the retry did not commit there",
        (unsigned long)c1, (unsigned long)d1);
  CHECK(ccache_check_heap(h) == 0);
  printf("ok: index=%s: %s after a migration: 1 abort, committed on CPU 1 (cache %lu -> %lu bytes)\n",
         rseq_index_name(index), section, (unsigned long)c1, (unsigned long)d1);
}

static void *held[FILL];
static int nheld;

static void release_all(struct ccache_heap *h) {
  while (nheld) ccache_free(h, held[--nheld]);
}

// Both caches warm (blocks in CPU 0's and CPU 1's caches of the class).
static void warm(struct ccache_heap *h) {
  release_all(h);
  for (int cpu = 1; cpu >= 0; cpu--) {
    rseq_fake_cpu_set(cpu);
    for (int k = 0; k < 4; k++) held[nheld++] = ccache_malloc(h, SIZE);
    release_all(h);
  }
}
// Both caches empty: every block back in the central lists.
static void empty(struct ccache_heap *h) {
  release_all(h);
  CHECK(ccache_drain_all(h) == 0);
}
// CPU 0's cache exactly full, CPU 1's warm, one block held for the free. Full: free
// blocks on CPU 0 until one free overflowed (its cached bytes dropped), then until the
// cached bytes are back at the peak they had before that drop.
static void full_on_0(struct ccache_heap *h) {
  empty(h);
  rseq_fake_cpu_set(0);
  void *keep = ccache_malloc(h, SIZE);
  rseq_fake_cpu_set(1);
  for (int k = 0; k < 4; k++) held[nheld++] = ccache_malloc(h, SIZE);
  release_all(h);
  rseq_fake_cpu_set(0);
  for (int k = 0; k < FILL; k++) held[nheld++] = ccache_malloc(h, SIZE);
  CHECK(test_fill_cache(h, 0, held, &nheld), "could not fill CPU 0's cache with %d blocks", FILL);
  held[nheld++] = keep;  // the block the operation will free (the rest stay held)
}

static void *last;
static void op_malloc(struct ccache_heap *h) {
  last = ccache_malloc(h, SIZE);
  CHECK(last != NULL);
  held[nheld++] = last;
}
static void op_free(struct ccache_heap *h) { ccache_free(h, held[--nheld]); }
// warm, then hold one block on CPU 0 so that the free has one to give back
static void warm_holding(struct ccache_heap *h) {
  warm(h);
  held[nheld++] = ccache_malloc(h, SIZE);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  test_watchdog(60);  // a retry loop that never ends is what this test looks for
  if (!rseq_available()) test_skip("fake CPUs need rseq: %s", rseq_unavailable_reason());
  if (!rseq_stats_enabled()) test_skip("needs a counting variant of rseq (the enter hook)");
  CHECK(rseq_set_enter_hook(enter_hook) == 0);
  CHECK(rseq_fake_cpu_enter() == 0);
  for (int index = RSEQ_INDEX_CPU_ID; index <= RSEQ_INDEX_MM_CID; index++) {
    // Small caches (4 KiB per CPU): a few dozen frees fill one.
    struct ccache_options o = {.mode = RSEQ_MODE_RSEQ, .index = (enum rseq_index)index,
                               .cpu_cache_bytes = 4096};
    struct ccache_heap *h = ccache_heap_create(&o);
    CHECK(h != NULL, "heap index=%s", rseq_index_name(index));
    if (ccache_heap_mode(h) != RSEQ_MODE_RSEQ) {
      printf("SKIPPED: index %s: the heap fell back to CAS mode: %s\n", rseq_index_name(index),
             ccache_heap_mode_reason(h));
      ccache_heap_destroy(h);
      continue;
    }
    struct ccache_stats st;
    ccache_get_stats(h, &st);
    if (st.ncpus < 2) test_skip("needs two CPU caches (index %s has %d)", rseq_index_name(index), st.ncpus);
    check_migration(h, (enum rseq_index)index, "ccache_malloc_pop", warm, op_malloc, -1);
    check_migration(h, (enum rseq_index)index, "ccache_free_push", warm_holding, op_free, +1);
    check_migration(h, (enum rseq_index)index, "ccache_refill_push", empty, op_malloc, +1);
    check_migration(h, (enum rseq_index)index, "ccache_overflow_pop", full_on_0, op_free, -1);
    rseq_fake_cpu_set(0);
    release_all(h);
    CHECK(ccache_check_heap(h) == 0);
    ccache_heap_destroy(h);
  }
  printf("PASS\n");
  return 0;
}
