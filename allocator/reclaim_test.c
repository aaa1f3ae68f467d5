// reclaim_test: idle CPU caches go back to the central lists. Threads running at the
// same time fill the caches of their CPUs (or mm_cids: concurrently running threads hold
// distinct cids) and exit. The first scan only records each cache's signature; the
// second drains every cache that did not change in between, and a cache whose thread
// kept missing between the scans is left alone. Then the automatic reclaim: a heap with
// reclaim_ms set drains the dead threads' caches from a later slow path, by itself.
// Needs two CPUs (a busy cache and an idle one); skips with the reason otherwise.
// Flags: --mode rseq|cas --index cpu|cid
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"

static struct {
  enum rseq_mode mode;
  enum rseq_index index;
} opt = {RSEQ_MODE_RSEQ, RSEQ_INDEX_MM_CID};

static struct ccache_heap *heap;
static pthread_barrier_t all_running, all_filled;

#define BLOCKS 200

static int cpus[1024], ncpus;

static void *filler(void *arg) {
  // Each on a CPU of its own (cpu_id: a cache each; mm_cid: a cid each anyway).
  CHECK(test_pin(cpus[(long)arg % ncpus]) == 0);
  void *b[BLOCKS];
  // Everyone alive at once: with mm_cid, each thread then holds a cid of its own.
  pthread_barrier_wait(&all_running);
  for (int i = 0; i < BLOCKS; i++) CHECK((b[i] = ccache_malloc(heap, 64)) != NULL);
  for (int i = 0; i < BLOCKS; i++) ccache_free(heap, b[i]);
  pthread_barrier_wait(&all_filled);
  return NULL;
}

static uint64_t cached_bytes(void) {
  static struct ccache_stats st;
  ccache_get_stats(heap, &st);
  return st.cached_bytes;
}

// Misses on the calling thread's cache (a refill and an overflow of class 512 B).
static void miss_here(void) {
  void *b[100];
  for (int i = 0; i < 100; i++) CHECK((b[i] = ccache_malloc(heap, 512)) != NULL);
  for (int i = 0; i < 100; i++) ccache_free(heap, b[i]);
}

static int fill_from_threads(int n) {
  pthread_t t[64];
  CHECK(pthread_barrier_init(&all_running, NULL, (unsigned)n) == 0);
  CHECK(pthread_barrier_init(&all_filled, NULL, (unsigned)n) == 0);
  for (long i = 0; i < n; i++) CHECK(pthread_create(&t[i], NULL, filler, (void *)i) == 0);
  for (int i = 0; i < n; i++) CHECK(pthread_join(t[i], NULL) == 0);
  pthread_barrier_destroy(&all_running);
  pthread_barrier_destroy(&all_filled);
  return n;
}

static void manual_scans(int nthreads) {
  struct ccache_options o = {.mode = opt.mode, .index = opt.index};
  CHECK((heap = ccache_heap_create(&o)) != NULL, "errno %d", errno);
  fill_from_threads(nthreads);
  uint64_t before = cached_bytes();
  printf("after %d threads: %lu bytes in CPU caches\n", nthreads, (unsigned long)before);
  CHECK(before >= 64, "the threads left nothing in the CPU caches");
  CHECK_EQ(ccache_reclaim_idle(heap), 0);  // the first scan only records
  CHECK_EQ(cached_bytes(), before);
  int drained = ccache_reclaim_idle(heap);
  printf("second scan: %d caches drained, %lu bytes left\n", drained, (unsigned long)cached_bytes());
  CHECK(drained >= 1);
  CHECK_EQ(cached_bytes(), 0);
  static struct ccache_stats st;
  ccache_get_stats(heap, &st);
  CHECK_EQ(st.reclaimed_regions, (uint64_t)drained);
  CHECK_EQ(st.in_use_bytes, 0);

  // A cache that keeps missing between two scans is not idle.
  miss_here();
  CHECK(cached_bytes() > 0);
  ccache_reclaim_idle(heap);
  miss_here();
  uint64_t busy = cached_bytes();
  ccache_reclaim_idle(heap);
  CHECK(cached_bytes() > 0, "a cache that missed between the scans was drained (%lu bytes before)",
        (unsigned long)busy);
  CHECK_EQ(ccache_check_heap(heap), 0);
  ccache_heap_destroy(heap);
}

static void automatic(int nthreads) {
  struct ccache_options o = {.mode = opt.mode, .index = opt.index, .reclaim_ms = 50};
  CHECK((heap = ccache_heap_create(&o)) != NULL, "errno %d", errno);
  fill_from_threads(nthreads);
  CHECK(cached_bytes() >= 64);
  // The reclaim runs from slow paths, at most every 50 ms, and drains what stayed put
  // over one interval. Keep missing on one cache until the others are gone. Pinned:
  // an unpinned thread moves between CPUs, and with mm_cid its cid moves with it (on
  // two CPUs it would keep both caches busy).
  CHECK(test_pin(cpus[0]) == 0);
  double end = test_now_s() + 10;
  static struct ccache_stats st;
  for (;;) {
    miss_here();
    ccache_get_stats(heap, &st);
    if (st.reclaimed_regions >= 1) break;
    CHECK(test_now_s() < end, "no idle cache was reclaimed within 10 s (reclaim_ms 50)");
    nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
  }
  CHECK(test_unpin(cpus, ncpus) == 0);
  printf("automatic: %lu caches reclaimed, %lu bytes left in CPU caches\n",
         (unsigned long)st.reclaimed_regions, (unsigned long)st.cached_bytes);
  CHECK_EQ(ccache_check_heap(heap), 0);
  ccache_heap_destroy(heap);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--mode")) opt.mode = (enum rseq_mode)rseq_mode_parse(argv[i + 1]);
    else if (!strcmp(argv[i], "--index")) opt.index = (enum rseq_index)rseq_index_parse(argv[i + 1]);
  }
  test_context("mode=%s index=%s", rseq_mode_name(opt.mode), rseq_index_name(opt.index));
  if (opt.mode == RSEQ_MODE_RSEQ && !rseq_available())
    test_skip("rseq mode: %s", rseq_unavailable_reason());
  if (opt.index == RSEQ_INDEX_MM_CID && opt.mode == RSEQ_MODE_RSEQ && !rseq_mm_cid_available())
    test_skip("the kernel does not maintain mm_cid (AT_RSEQ_FEATURE_SIZE < 28)");
  ncpus = test_allowed_cpus(cpus, 1024);
  if (ncpus < 2) test_skip("needs two allowed CPUs, has %d", ncpus);
  int n = ncpus > 8 ? 8 : ncpus;
  manual_scans(n);
  automatic(n);
  printf("PASS\n");
  return 0;
}
