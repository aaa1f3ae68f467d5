// cpu_cache.c: the per-CPU caches ("ccaches"): one region per CPU (or mm_cid), one
// array stack per class. The fast paths (ccache_malloc's pop, ccache_free's push) are
// inlined in heap.c; here are the slow paths that move batches between a CPU cache
// and the central lists (refill and overflow, each one more inlined section), the
// CAS-mode stacks, remote drains and the idle reclaim.
//
// RSEQ mode: rseq/slab.h's sections on the slab layout. CAS mode: the ABA-safe CAS
// stack of rseq/primitives.c. Both modes follow the same policy (capacity, batch,
// order of blocks), so a single-threaded stream gives the same statistics in both.
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allocator/internal.h"
#include "rseq/slab.h"
#include "sanitizers/sanitizers.h"

#define MAX_CAPACITY 128
#define MAX_BATCH 32
// A class's cache holds at most this share of the per-CPU budget (in bytes; between 2
// and MAX_CAPACITY blocks). Programs use a few dozen classes at once: at 1/32 each, a
// CPU's caches stay near the budget. (1/16 held twice the memory for 5% more speed on
// the churn benchmark; 1/64 cost 10% there.)
#define CLASS_SHARE 32

static size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

static inline char *region_of(const struct ccache_heap *heap, int cpu) {
  return heap->regions + (size_t)cpu * heap->stride;
}

int cpu_cache_init(struct ccache_heap *heap, size_t cpu_cache_bytes) {
  bool cas = heap->mode.mode == RSEQ_MODE_CAS;
  size_t total_slots = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    size_t size = ccache_class_size(c);
    size_t cap = cpu_cache_bytes / CLASS_SHARE / size;
    if (cap > MAX_CAPACITY) cap = MAX_CAPACITY;
    if (cap < 2) cap = 2;
    heap->capacity[c] = (uint32_t)cap;
    heap->batch[c] = (uint32_t)(cap / 2 > MAX_BATCH ? MAX_BATCH : cap / 2);
    total_slots += cap;
  }
  if (cas) {
    // Header: a spare word, misses, then per class {top (16 B), cap (8 B), pad}.
    size_t off = round_up(16 + 32 * CCACHE_NUM_CLASSES, CACHELINE);
    for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
      heap->count_off[c] = (long)(16 + 32 * c);
      heap->slots_off[c] = (long)off;
      off += 16 * heap->capacity[c];
    }
    heap->stride = round_up(off, 4096);
  } else {
    // The slab: 8-byte slots after the class headers, each class's stack starting on
    // a cache line of its own.
    size_t word = round_up(RSEQ_SLAB_HEADERS_OFF + 8 * CCACHE_NUM_CLASSES, CACHELINE) / 8;
    for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
      heap->slab_begin[c] = (uint16_t)word;
      word += heap->capacity[c];
      heap->slab_end[c] = (uint16_t)word;
      word = round_up(word, CACHELINE / 8);
    }
    if (word * 8 > RSEQ_SLAB_BYTES) {  // cannot happen with MAX_CAPACITY; checked anyway
      errno = EINVAL;
      return -1;
    }
    heap->stride = RSEQ_SLAB_BYTES;
  }
  (void)total_slots;
  heap->ncpus = rseq_index_count(heap->mode.index);
  heap->rseq_ncpus = cas ? 0 : (uint32_t)heap->ncpus;
  heap->regions_bytes = heap->stride * (size_t)heap->ncpus;
  heap->regions = os_map(heap->regions_bytes);
  heap->reclaim_sig = os_map(sizeof(uint64_t) * (size_t)heap->ncpus);
  if (!heap->regions || !heap->reclaim_sig) {
    os_count_failure(heap);
    errno = ENOMEM;
    return -1;
  }
  for (int cpu = 0; cpu < heap->ncpus; cpu++) {
    char *region = region_of(heap, cpu);
    for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
      if (cas) {
        // The capacity word follows the 16-byte top.
        *(intptr_t *)(region + heap->count_off[c] + 16) = heap->capacity[c];
      } else {
        struct rseq_slab_header *h = rseq_slab_header(region, c);
        h->cur = h->begin = heap->slab_begin[c];
        h->end = heap->slab_end[c];
      }
    }
  }
  return 0;
}

void cpu_cache_destroy(struct ccache_heap *heap) {
  if (heap->regions) os_unmap(heap->regions, heap->regions_bytes);
  if (heap->reclaim_sig) os_unmap(heap->reclaim_sig, sizeof(uint64_t) * (size_t)heap->ncpus);
}

__attribute__((noreturn, cold)) void cpu_cache_bad_index(const struct ccache_heap *heap) {
  fprintf(stderr, "ccache: the %s of this thread is unavailable or >= %d: rseq area broken\n",
          rseq_index_name(heap->mode.index), heap->ncpus);
  abort();
}

int cpu_cache_read_index(const struct ccache_heap *heap, struct rseq_abi **area) {
  // The slow path of the index read: registers the thread, plays fake-CPU migrations.
  int cpu = rseq_current_index(heap->mode.index);
  if (cpu < 0 || cpu >= heap->ncpus) cpu_cache_bad_index(heap);
  *area = rseq_thread_area();
  return cpu;
}

// ---------------------------------------------------------------------------------
// CAS mode.

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

void *cpu_cache_pop_cas(struct ccache_heap *heap, unsigned cls) {
  int cpu = cas_region(heap);
  intptr_t item;
  return rseq_cas_stack_pop(cas_top(heap, cpu, cls), cas_slots(heap, cpu, cls), &item) ==
                 RSEQ_COMMIT
             ? (void *)item
             : NULL;
}

bool cpu_cache_push_cas(struct ccache_heap *heap, unsigned cls, void *block) {
  int cpu = cas_region(heap);
  return rseq_cas_stack_push(cas_top(heap, cpu, cls), cas_slots(heap, cpu, cls),
                             heap->capacity[cls], (intptr_t)block) == RSEQ_COMMIT;
}

// ---------------------------------------------------------------------------------
// RSEQ mode: the batch sections, one call site each.

RSEQ_SLAB_DEFINE_PUSH_BATCH(refill_push, ccache_refill_push)
RSEQ_SLAB_DEFINE_POP_BATCH(overflow_pop, ccache_overflow_pop)

static inline void count_miss(char *region) {
  // Relaxed: an activity hint for the idle reclaim, on this region's own header line.
  __atomic_fetch_add((uint64_t *)region + REGION_MISSES, 1, __ATOMIC_RELAXED);
}

// Push items[0 .. n) into the calling thread's cache, lowest first; returns how many
// went in (the rest did not fit, or the region is stopped). Not inlined: its section
// must exist once (it has two callers).
__attribute__((noinline)) static int push_batch(struct ccache_heap *heap, unsigned cls,
                                                void *const *items, int n) {
  if (n <= 0) return 0;  // the section needs at least one item
  if (heap->mode.mode == RSEQ_MODE_CAS) {
    int k = 0;
    while (k < n && cpu_cache_push_cas(heap, cls, items[k])) k++;
    return k;
  }
  for (;;) {
    struct rseq_abi *area;
    int cpu = cpu_cache_read_index(heap, &area);
    char *region = heap->regions + ((size_t)cpu << RSEQ_SLAB_SHIFT);
    unsigned long pushed;
    int r = refill_push(area, rseq_index_field(area, heap->index_off), heap->mode.index, cpu,
                        region, cls, (const intptr_t *)items, (unsigned long)n, &pushed);
    if (r == RSEQ_COMMIT) {
      count_miss(region);
      return (int)pushed;
    }
    if (r == RSEQ_CMPFAIL) return 0;  // full, or stopped by a remote drain
    RSEQ_SLAB_COUNT_ABORT(ccache_refill_push);
    atomic_fetch_add_explicit(&heap->push_aborts, 1, memory_order_relaxed);
  }
}

bool cpu_cache_push_one(struct ccache_heap *heap, unsigned cls, void *block) {
  return push_batch(heap, cls, &block, 1) == 1;
}

// Pop up to n items from the calling thread's cache into out, in the order they lie
// in the stack (the top last); returns how many. Not inlined, as push_batch.
__attribute__((noinline)) static int pop_batch(struct ccache_heap *heap, unsigned cls, void **out,
                                               int n) {
  if (n <= 0) return 0;  // the section needs at least one item
  if (heap->mode.mode == RSEQ_MODE_CAS) {
    int k = 0;
    while (k < n && (out[k] = cpu_cache_pop_cas(heap, cls)) != NULL) k++;
    // Popped top first: reverse, to the order RSEQ mode's one section gives.
    for (int i = 0; i < k / 2; i++) {
      void *t = out[i];
      out[i] = out[k - 1 - i];
      out[k - 1 - i] = t;
    }
    return k;
  }
  for (;;) {
    struct rseq_abi *area;
    int cpu = cpu_cache_read_index(heap, &area);
    char *region = heap->regions + ((size_t)cpu << RSEQ_SLAB_SHIFT);
    unsigned long popped;
    int r = overflow_pop(area, rseq_index_field(area, heap->index_off), heap->mode.index, cpu,
                         region, cls, (intptr_t *)out, (unsigned long)n, &popped);
    if (r == RSEQ_COMMIT) {
      count_miss(region);
      return (int)popped;
    }
    if (r == RSEQ_CMPFAIL) return 0;  // empty, or stopped by a remote drain
    RSEQ_SLAB_COUNT_ABORT(ccache_overflow_pop);
    atomic_fetch_add_explicit(&heap->pop_aborts, 1, memory_order_relaxed);
  }
}

// The CPU cache of this class is empty (or stopped): a batch from the central list;
// one block for the caller, the rest into the cache.
void *cpu_cache_refill(struct ccache_heap *heap, unsigned cls) {
  cpu_cache_maybe_reclaim(heap);
  void *batch[MAX_BATCH + 1];
  int want = (int)heap->batch[cls] + 1;
#if CCACHE_SEEDED_BUG == 3  // test-only variant (ci/fuzz-teeth): CAS mode refills differ
  // One block fewer: each mode stays self-consistent, only the comparison can tell. (One
  // more overran `batch`, and ASan, not the comparison, found it.)
  if (heap->mode.mode == RSEQ_MODE_CAS && want > 2) want--;
#endif
  int n = central_take(heap, cls, batch, want);
  if (n == 0) return NULL;
  atomic_fetch_add_explicit(&heap->refills, 1, memory_order_relaxed);
  int k = n > 1 ? 1 + push_batch(heap, cls, batch + 1, n - 1) : 1;
  if (k < n) central_give(heap, cls, batch + k, n - k);  // full or stopped: back
  return batch[0];
}

// The CPU cache of this class is full (or stopped): move a batch of it, and the block
// being freed, to the central list.
void cpu_cache_overflow(struct ccache_heap *heap, unsigned cls, void *block) {
  cpu_cache_maybe_reclaim(heap);
  void *batch[MAX_BATCH + 1];
  int n = pop_batch(heap, cls, batch, (int)heap->batch[cls]);
  batch[n++] = block;
  central_give(heap, cls, batch, n);
  atomic_fetch_add_explicit(&heap->drains, 1, memory_order_relaxed);
}

CCACHE_NO_COVERAGE uint64_t cpu_cache_count(const struct ccache_heap *heap, int cpu, unsigned cls) {
  if (heap->mode.mode == RSEQ_MODE_CAS) return rseq_cas_stack_count(cas_top(heap, cpu, cls));
  // Relaxed: a statistic; the sections on that CPU may be changing it. The class's
  // begin from the heap, not the header: a drain's stop overwrites that one.
  const struct rseq_slab_header *h = rseq_slab_header(region_of(heap, cpu), cls);
  return (uint64_t)(__atomic_load_n(&h->cur, __ATOMIC_RELAXED) - heap->slab_begin[cls]);
}

// The cached blocks of region `cpu`, class `cls`, bottom first, into out; for
// ccache_check_heap (quiescent heap only).
CCACHE_NO_COVERAGE int cpu_cache_items(const struct ccache_heap *heap, int cpu, unsigned cls, void **out) {
  char *region = region_of(heap, cpu);
  if (heap->mode.mode == RSEQ_MODE_CAS) {
    uint64_t n = rseq_cas_stack_count(cas_top(heap, cpu, cls));
    const rseq_u128_t *top = cas_top(heap, cpu, cls), *slots = cas_slots(heap, cpu, cls);
    for (uint64_t k = 0; k + 1 < n; k++) out[k] = (void *)(uintptr_t)(uint64_t)slots[k];
    if (n) out[n - 1] = (void *)(uintptr_t)(uint64_t)(*top >> 64);  // the top lives in top
    return (int)n;
  }
  const struct rseq_slab_header *h = rseq_slab_header(region, cls);
  const intptr_t *slots = (const intptr_t *)region;
  int n = 0;
  for (unsigned k = h->begin; k < h->cur; k++) out[n++] = (void *)slots[k];
  return n;
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
    // Counted as RSEQ mode counts a remote drain: the differential check compares it.
    atomic_fetch_add_explicit(&heap->drains, 1, memory_order_relaxed);
    return 0;
  }
  // One remote drainer at a time owns a stopped region.
  pthread_mutex_lock(&heap->drain_lock);
  char *region = region_of(heap, cpu);
  // Stop every class: its sections fail from now on without a store (rseq/slab.h).
  // Seq_cst: the stores must be globally visible before the fence below returns, so
  // every section that starts after the fence sees them and backs off.
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++)
    __atomic_store_n(rseq_slab_bounds(rseq_slab_header(region, c)), RSEQ_SLAB_STOPPED,
                     __ATOMIC_SEQ_CST);
  // After the fence no section that read the old bounds on that CPU is still running:
  // the region is ours. With the mm_cid index a cid can run on any CPU: fence all.
  int rc = heap->mode.index == RSEQ_INDEX_MM_CID ? rseq_fence_all() : rseq_fence_cpu(cpu);
  int err = rc ? errno : 0;
  const intptr_t *slots = (const intptr_t *)region;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    struct rseq_slab_header *h = rseq_slab_header(region, c);
    uint16_t begin = heap->slab_begin[c];
    if (rc == 0) {
      CCACHE_TSAN_ACQUIRE(h);  // the sections' stores are invisible to TSan (see rseq)
      // Relaxed: the fence ordered the sections' stores before these loads.
      uint32_t cur = __atomic_load_n(&h->cur, __ATOMIC_RELAXED);
      int n = 0;
      for (uint32_t k = begin; k < cur; k++)
        batch[n++] = (void *)__atomic_load_n(&slots[k], __ATOMIC_RELAXED);
      // Relaxed: no section stores cur while the class is stopped; the release below
      // publishes it.
      __atomic_store_n(&h->cur, begin, __ATOMIC_RELAXED);
      CCACHE_TSAN_RELEASE(h);
      if (n) central_give(heap, c, batch, n);
    }
    // Release: cur (and the emptied stack) is visible before the bounds let sections
    // run here again. (A failed fence leaves the stack as it was: only the bounds are
    // put back.)
    __atomic_store_n(rseq_slab_bounds(h), (uint32_t)begin | (uint32_t)heap->slab_end[c] << 16,
                     __ATOMIC_RELEASE);
  }
  if (rc == 0) atomic_fetch_add_explicit(&heap->drains, 1, memory_order_relaxed);
  pthread_mutex_unlock(&heap->drain_lock);
  if (rc) errno = err;
  return rc;
}

// ---------------------------------------------------------------------------------
// Idle reclaim (tcmalloc reclaims idle per-CPU caches the same way): a region whose
// stacks and slow-path count did not change between two scans, and that holds blocks,
// is drained. With the mm_cid index this returns the caches of cids that no live
// thread uses any more; with cpu_id, those of CPUs the process left.

static uint64_t region_signature(const struct ccache_heap *heap, int cpu, uint64_t *cached) {
  char *region = region_of(heap, cpu);
  // Relaxed: a heuristic; a stale value only delays or hastens one reclaim.
  uint64_t sig = __atomic_load_n((uint64_t *)region + REGION_MISSES, __ATOMIC_RELAXED);
  uint64_t n = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    uint64_t w;
    if (heap->mode.mode == RSEQ_MODE_CAS) {
      // The top's low word holds the count and the op counter: it moves on every op.
      w = __atomic_load_n((uint64_t *)cas_top(heap, cpu, c), __ATOMIC_RELAXED);
      n += w & 0xffff;
    } else {
      const struct rseq_slab_header *h = rseq_slab_header(region, c);
      w = __atomic_load_n(&h->cur, __ATOMIC_RELAXED);
      n += w - heap->slab_begin[c];  // not h->begin: a drain's stop overwrites it
    }
    sig = (sig ^ w) * 0x100000001b3ULL;
  }
  *cached = n;
  return sig;
}

uint64_t cpu_cache_region_count(const struct ccache_heap *heap, int cpu) {
  uint64_t cached;
  region_signature(heap, cpu, &cached);
  return cached;
}

// One scan; reclaim_lock held.
static int reclaim_scan(struct ccache_heap *heap) {
  int drained = 0;
  for (int cpu = 0; cpu < heap->ncpus; cpu++) {
    uint64_t cached;
    uint64_t sig = region_signature(heap, cpu, &cached);
    if (cached && sig == heap->reclaim_sig[cpu] && cpu_cache_drain(heap, cpu) == 0) {
      drained++;
      heap->reclaimed_regions++;
      sig = region_signature(heap, cpu, &cached);
    }
    heap->reclaim_sig[cpu] = sig;
  }
  // What came back from the caches goes on to the spans, so that whole spans (and
  // then pages, past the page heap's threshold) can go back too.
  if (drained) central_flush_transfer(heap);
  // Large spares age the same way: one freed before the previous scan and not reused
  // since is unmapped.
  large_release_spares(heap, true);
  return drained;
}

int ccache_reclaim_idle(struct ccache_heap *heap) {
  // Guards the signatures and the count: one scanner at a time.
  pthread_mutex_lock(&heap->reclaim_lock);
  int drained = reclaim_scan(heap);
  pthread_mutex_unlock(&heap->reclaim_lock);
  return drained;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void cpu_cache_maybe_reclaim(struct ccache_heap *heap) {
  if (!heap->reclaim_interval_ns) return;
  uint64_t t = now_ns();
  // Relaxed: a schedule, checked again under the lock below.
  if (t < atomic_load_explicit(&heap->next_reclaim_ns, memory_order_relaxed)) return;
  // Never waits: a thread that finds another scanning goes on with its malloc or free.
  if (pthread_mutex_trylock(&heap->reclaim_lock) != 0) return;
  // Under the lock: a scan that just ended has moved the schedule on, and a second one
  // now would call idle every cache untouched for the last few microseconds.
  if (t >= atomic_load_explicit(&heap->next_reclaim_ns, memory_order_relaxed)) {
    // Relaxed: read and written under reclaim_lock; the loads outside are hints.
    atomic_store_explicit(&heap->next_reclaim_ns, t + heap->reclaim_interval_ns,
                          memory_order_relaxed);
    reclaim_scan(heap);
  }
  pthread_mutex_unlock(&heap->reclaim_lock);
}
