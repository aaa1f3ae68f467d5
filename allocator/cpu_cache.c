// cpu_cache.c: the per-CPU caches ("ccaches"): one region per CPU (or mm_cid), one
// array stack per class. RSEQ mode pushes and pops with the rseq per-CPU stack
// sections; CAS mode with the ABA-safe CAS stack (rseq/primitives.c explains how).
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator/internal.h"
#include "sanitizers/sanitizers.h"

#define MAX_CAPACITY 128

static size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

int cpu_cache_init(struct ccache_heap *heap, size_t cpu_cache_bytes) {
  bool cas = heap->mode.mode == RSEQ_MODE_CAS;
  size_t slot = cas ? 16 : 8;
  // Header: the stopped word, then per class {count, cap} (RSEQ) or {top, cap} (CAS).
  size_t per_class = cas ? 32 : 16;
  size_t off = round_up(16 + per_class * CCACHE_NUM_CLASSES, CACHELINE);
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    size_t size = ccache_class_size(c);
    size_t cap = cpu_cache_bytes / 16 / size;
    if (cap > MAX_CAPACITY) cap = MAX_CAPACITY;
    if (cap < 2) cap = 2;
    heap->capacity[c] = (uint32_t)cap;
    heap->batch[c] = (uint32_t)(cap / 2 > 32 ? 32 : cap / 2);
    heap->count_off[c] = (long)(16 + per_class * c);
    heap->slots_off[c] = (long)off;
    off += slot * cap;
  }
  heap->stride = round_up(off, 4096);
  heap->ncpus = rseq_index_count(heap->mode.index);
  heap->regions_bytes = heap->stride * (size_t)heap->ncpus;
  heap->regions = os_map(heap->regions_bytes);
  if (!heap->regions) {
    os_count_failure(heap);
    errno = ENOMEM;
    return -1;
  }
  for (int cpu = 0; cpu < heap->ncpus; cpu++) {
    char *region = heap->regions + (size_t)cpu * heap->stride;
    for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
      // The capacity word follows the count (RSEQ) or the 16-byte top (CAS).
      intptr_t *cap = (intptr_t *)(region + heap->count_off[c] + (cas ? 16 : 8));
      *cap = heap->capacity[c];
    }
  }
  return 0;
}

void cpu_cache_destroy(struct ccache_heap *heap) {
  if (heap->regions) os_unmap(heap->regions, heap->regions_bytes);
}

static inline char *region_of(const struct ccache_heap *heap, int cpu) {
  return heap->regions + (size_t)cpu * heap->stride;
}

__attribute__((noreturn, cold)) static void bad_index(const struct ccache_heap *heap) {
  fprintf(stderr, "ccache: the %s of this thread is unavailable or >= %d: rseq area broken\n",
          rseq_index_name(heap->mode.index), heap->ncpus);
  abort();
}

// The region a CAS-mode operation uses: any is correct; the current CPU is the one
// likely to be warm in this core's cache.
static inline int cas_region(const struct ccache_heap *heap) {
  int cpu = rseq_current_index(heap->mode.index);
  if (cpu < 0) {
    cpu = sched_getcpu();
    if (cpu < 0) cpu = 0;
    cpu %= heap->ncpus;
  }
  return cpu;
}

static inline rseq_u128_t *cas_top(const struct ccache_heap *heap, int cpu, unsigned cls) {
  return (rseq_u128_t *)(region_of(heap, cpu) + heap->count_off[cls]);
}

static inline rseq_u128_t *cas_slots(const struct ccache_heap *heap, int cpu, unsigned cls) {
  return (rseq_u128_t *)(region_of(heap, cpu) + heap->slots_off[cls]);
}

void *cpu_cache_pop(struct ccache_heap *heap, unsigned cls) {
  intptr_t item;
  if (heap->mode.mode == RSEQ_MODE_CAS) {
    int cpu = cas_region(heap);
    return rseq_cas_stack_pop(cas_top(heap, cpu, cls), cas_slots(heap, cpu, cls), &item) ==
                   RSEQ_COMMIT
               ? (void *)item
               : NULL;
  }
  for (;;) {
    int cpu = rseq_current_index(heap->mode.index);
    if (__builtin_expect(cpu < 0, 0)) bad_index(heap);
    int r = rseq_percpu_stack_pop(heap->mode.index, heap->regions, heap->stride,
                                  heap->count_off[cls], heap->slots_off[cls], &item, cpu);
    if (__builtin_expect(r == RSEQ_COMMIT, 1)) return (void *)item;
    if (r == RSEQ_CMPFAIL) return NULL;  // empty, or stopped by a remote drain
    atomic_fetch_add_explicit(&heap->pop_aborts, 1, memory_order_relaxed);
  }
}

bool cpu_cache_push(struct ccache_heap *heap, unsigned cls, void *block) {
  if (heap->mode.mode == RSEQ_MODE_CAS) {
    int cpu = cas_region(heap);
    return rseq_cas_stack_push(cas_top(heap, cpu, cls), cas_slots(heap, cpu, cls),
                               heap->capacity[cls], (intptr_t)block) == RSEQ_COMMIT;
  }
  for (;;) {
    int cpu = rseq_current_index(heap->mode.index);
    if (__builtin_expect(cpu < 0, 0)) bad_index(heap);
    int r = rseq_percpu_stack_push(heap->mode.index, heap->regions, heap->stride,
                                   heap->count_off[cls], heap->slots_off[cls], (intptr_t)block,
                                   cpu);
    if (__builtin_expect(r == RSEQ_COMMIT, 1)) return true;
    if (r == RSEQ_CMPFAIL) return false;  // full, or stopped by a remote drain
    atomic_fetch_add_explicit(&heap->push_aborts, 1, memory_order_relaxed);
  }
}

int cpu_cache_pop_batch(struct ccache_heap *heap, unsigned cls, void **out, int n) {
  int got = 0;
  while (got < n) {
    void *b = cpu_cache_pop(heap, cls);
    if (!b) break;
    out[got++] = b;
  }
  return got;
}

uint64_t cpu_cache_count(const struct ccache_heap *heap, int cpu, unsigned cls) {
  if (heap->mode.mode == RSEQ_MODE_CAS) return rseq_cas_stack_count(cas_top(heap, cpu, cls));
  // Relaxed: a statistic; the sections on that CPU may be changing it.
  return (uint64_t)__atomic_load_n((intptr_t *)(region_of(heap, cpu) + heap->count_off[cls]),
                                   __ATOMIC_RELAXED);
}

// Take CPU `cpu`'s whole cache back into the central lists.
int cpu_cache_drain(struct ccache_heap *heap, int cpu) {
  if (cpu < 0 || cpu >= heap->ncpus) {
    errno = EINVAL;
    return -1;
  }
  void *batch[MAX_CAPACITY];
  if (heap->mode.mode == RSEQ_MODE_CAS) {
    // CAS stacks may be popped by anyone at any time: no fence is needed.
    for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
      int n = 0;
      intptr_t item;
      while (rseq_cas_stack_pop(cas_top(heap, cpu, c), cas_slots(heap, cpu, c), &item) ==
             RSEQ_COMMIT)
        batch[n++] = (void *)item;
      // Give them back bottom of the stack first, as RSEQ mode does: the order decides
      // when a span becomes free and goes back, and both modes must agree on that.
      for (int k = 0; k < n / 2; k++) {
        void *t = batch[k];
        batch[k] = batch[n - 1 - k];
        batch[n - 1 - k] = t;
      }
      if (n) central_give(heap, c, batch, n);
    }
    return 0;
  }
  // One remote drainer at a time owns a stopped region.
  pthread_mutex_lock(&heap->drain_lock);
  char *region = region_of(heap, cpu);
  intptr_t *stopped = (intptr_t *)region;
  // Seq_cst: the store must be globally visible before the fence below returns, so
  // every section that starts after the fence sees it and backs off.
  __atomic_store_n(stopped, 1, __ATOMIC_SEQ_CST);
  // After the fence no section that read stopped == 0 on that CPU is still running:
  // the region is ours. With the mm_cid index a cid can run on any CPU: fence all.
  int rc = heap->mode.index == RSEQ_INDEX_MM_CID ? rseq_fence_all() : rseq_fence_cpu(cpu);
  if (rc != 0) {
    int err = errno;
    __atomic_store_n(stopped, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&heap->drain_lock);
    errno = err;
    return -1;
  }
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    intptr_t *count = (intptr_t *)(region + heap->count_off[c]);
    intptr_t *slots = (intptr_t *)(region + heap->slots_off[c]);
    CCACHE_TSAN_ACQUIRE(count);  // the sections' stores are invisible to TSan (see rseq)
    // Relaxed: the fence ordered the sections' stores before these loads.
    intptr_t n = __atomic_load_n(count, __ATOMIC_RELAXED);
    for (intptr_t k = 0; k < n; k++) batch[k] = (void *)__atomic_load_n(&slots[k], __ATOMIC_RELAXED);
    __atomic_store_n(count, 0, __ATOMIC_RELAXED);
    CCACHE_TSAN_RELEASE(count);
    if (n) central_give(heap, c, batch, (int)n);
  }
  // Release: the emptied counts are visible before sections may run here again.
  __atomic_store_n(stopped, 0, __ATOMIC_RELEASE);
  atomic_fetch_add_explicit(&heap->drains, 1, memory_order_relaxed);
  pthread_mutex_unlock(&heap->drain_lock);
  return 0;
}
