// drain_fence_test: a remote drain must fence the CPU it drains, and a section must read
// the bounds a drain stops it with before it reads cur. Thread A, pinned to CPU a,
// mallocs and frees in a loop with a ~1 ms delay loop inside every push and pop
// section, at injection point --point (1: after the section has checked its bounds,
// before it stores; 3: between its load of the bound and its load of cur). The main
// thread, pinned to CPU b, drains a's cache ROUNDS times at random moments, so nearly
// every drain lands while one of A's sections is inside its delay.
//   point 1: the drain's fence (membarrier) aborts that section, which retries and sees
//            the stopped cache. A drain without the fence lets the old section commit
//            into the cache it just emptied.
//   point 3: the retried section, starting right after the fence, waits between its
//            two loads while the drain puts cur back and then the bounds. Reading the
//            bound first, it sees the class stopped (or cur reset); reading cur first,
//            it would see the old cur and the restored bound, and pop a block that the
//            drain already gave to the central lists.
// Either bug puts a block in two places, which ccache_check_heap (or a double-free
// report) catches. A runs SCHED_FIFO when it may, so that ordinary preemption rarely
// aborts its sections first. Needs two CPUs and RSEQ mode; skips with the reason
// otherwise. With --index cid the cache is A's mm_cid (which A publishes as it runs:
// a cid is not a CPU and may change), and a drain fences every CPU.
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"

#define ROUNDS 100
#define DELAY_LOOPS 3000000u  // ~1 ms of register-only loop inside each section

static struct ccache_heap *heap;
static int cpu_a, cpu_b;
static _Atomic int running, stop;  // relaxed flags: A started / main is done
static bool realtime;              // A runs SCHED_FIFO (written by A before `running`)
static long cycles;                // A's malloc+free pairs (read after the join)
static enum rseq_index index_kind = RSEQ_INDEX_CPU_ID;
static _Atomic int a_cache;  // the cache A uses now (relaxed: a hint for the drainer)

static void *thread_a(void *arg) {
  (void)arg;
  CHECK(test_pin(cpu_a) == 0, "pin to cpu %d", cpu_a);
  struct sched_param sp = {.sched_priority = 1};
  realtime = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0;
  // Release: `realtime` is written before main reads it (after the acquire below).
  atomic_store_explicit(&running, 1, memory_order_release);
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    atomic_store_explicit(&a_cache, rseq_current_index(index_kind), memory_order_relaxed);
    void *p = ccache_malloc(heap, 64);
    CHECK(p != NULL, "malloc(64), cycle %ld", cycles);
    ccache_free(heap, p);
    cycles++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  int point = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--point")) point = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--index")) index_kind = (enum rseq_index)rseq_index_parse(argv[i + 1]);
  }
  if (index_kind == RSEQ_INDEX_MM_CID && !rseq_mm_cid_available())
    test_skip("the mm_cid index is not available on this kernel");
  int cpus[1024];
  int n = test_allowed_cpus(cpus, 1024);
  if (n < 2) test_skip("needs two allowed CPUs, has %d", n);
  if (!rseq_inject_enabled()) test_skip("needs the inject variant of rseq");
  cpu_a = cpus[0];
  cpu_b = cpus[1];
  struct ccache_options o = {.mode = RSEQ_MODE_RSEQ, .index = index_kind};
  heap = ccache_heap_create(&o);
  if (!heap) test_skip("no RSEQ-mode heap: %s", rseq_unavailable_reason());
  uint64_t seed = test_seed(1), rng = seed;
  test_context("point=%d index=%s cpu_a=%d cpu_b=%d fence=%s seed=%lu", point,
               rseq_index_name(index_kind), cpu_a, cpu_b, rseq_fence_method(),
               (unsigned long)seed);
  CHECK(test_pin(cpu_b) == 0, "pin to cpu %d", cpu_b);
  CHECK(rseq_inject_set_loops(point, DELAY_LOOPS) == 0, "--point %d", point);  // main runs no
                                                                             // section until reset
  pthread_t t;
  CHECK(pthread_create(&t, NULL, thread_a, NULL) == 0);
  while (!atomic_load_explicit(&running, memory_order_acquire)) sched_yield();
  for (int round = 0; round < ROUNDS; round++) {
    long us = 200 + (long)(test_rand(&rng) % 2000);
    nanosleep(&(struct timespec){0, us * 1000}, NULL);
    int target = index_kind == RSEQ_INDEX_CPU_ID
                     ? cpu_a
                     : atomic_load_explicit(&a_cache, memory_order_relaxed);
    CHECK(ccache_drain_cpu(heap, target) == 0, "drain %d of cache %d: errno %d", round, target,
          errno);
  }
  atomic_store_explicit(&stop, 1, memory_order_relaxed);
  pthread_join(t, NULL);
  rseq_inject_set_loops(point, 0);
  CHECK(ccache_check_heap(heap) == 0,
        "the heap is inconsistent after drains raced push/pop sections delayed at point %d (see "
        "stderr): a drain did not fence cpu %d, or a section read cur before its bound", point,
        cpu_a);
  struct ccache_stats st;
  ccache_get_stats(heap, &st);
  CHECK_EQ(st.in_use_bytes, 0);  // every block was freed
  printf("ok: %d drains of %s %d during %ld malloc/free pairs on it; A %s; %lu pop and %lu "
         "push aborts\nPASS\n",
         ROUNDS, index_kind == RSEQ_INDEX_CPU_ID ? "cpu" : "A's cid, last",
         index_kind == RSEQ_INDEX_CPU_ID ? cpu_a : atomic_load(&a_cache), cycles,
         realtime ? "ran SCHED_FIFO" : "could not run SCHED_FIFO (not root?), so preemption may "
                                        "abort its sections before a drain does",
         (unsigned long)st.pop_aborts, (unsigned long)st.push_aborts);
  ccache_heap_destroy(heap);
  return 0;
}
