// heap.c: heap instances and the malloc API on them. The fast paths are the first
// functions here: ccache_malloc -> cpu_cache_pop, ccache_free -> cpu_cache_push; all
// else (refill, overflow, large blocks, errors) is named *_slow or lives elsewhere.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "allocator/internal.h"
#include "sanitizers/sanitizers.h"

// ---------------------------------------------------------------------------------
// Errors.

void ccache_report_bad_free(const struct ccache_heap *heap, const void *ptr, const char *what) {
  char msg[256];
  int n = snprintf(msg, sizeof msg, "ccache: %s: %p (heap %p, %s mode)\n", what, ptr,
                   (const void *)heap, rseq_mode_name(heap->mode.mode));
  // write(2), not stdio: this may run inside malloc, with locks held.
  if (n > 0 && write(2, msg, (size_t)n) < 0) {
  }
  abort();
}

// ---------------------------------------------------------------------------------
// The fast paths.

static void *refill_slow(struct ccache_heap *heap, unsigned cls);
static void overflow_slow(struct ccache_heap *heap, unsigned cls, void *block);

static inline void *hand_out(struct ccache_heap *heap, void *p) {
  struct span *s = span_of(heap, (uintptr_t)p);
  // Relaxed: the block is ours alone now; a later free by any thread reads this after
  // the block reached it through the program's own synchronization.
  __atomic_store_n(&s->state[span_index(s, (uintptr_t)p)], BLOCK_ALLOCATED, __ATOMIC_RELAXED);
  CCACHE_ASAN_UNPOISON(p, s->obj_size);
  CCACHE_MSAN_POISON(p, s->obj_size);  // a fresh block is uninitialized to the user
  return p;
}

static inline void *small_alloc(struct ccache_heap *heap, unsigned cls) {
  void *p = cpu_cache_pop(heap, cls);
  if (__builtin_expect(p == NULL, 0)) {
    p = refill_slow(heap, cls);
    if (!p) {
      errno = ENOMEM;
      return NULL;
    }
  }
  return hand_out(heap, p);
}

void *ccache_malloc(struct ccache_heap *heap, size_t size) {
  if (__builtin_expect(size <= CCACHE_MAX_SMALL, 1)) return small_alloc(heap, ccache_size_to_class(size));
  return large_alloc(heap, size, 0);
}

// The span of a small block being freed, after checking that ptr is the start of a
// block of this heap that is handed out; flips its state to BLOCK_CACHED.
static inline struct span *claim_freed_block(struct ccache_heap *heap, void *ptr) {
  uintptr_t a = (uintptr_t)ptr;
  struct span *s = span_of(heap, a);
  if (__builtin_expect(!s || s->kind != SPAN_SMALL, 0))
    ccache_report_bad_free(heap, ptr, "invalid free (no block of this heap there)");
  uint32_t i;
  if (__builtin_expect(!span_block_start(s, a, &i), 0))
    ccache_report_bad_free(heap, ptr, "invalid free (not the start of a block)");
#ifdef CCACHE_NO_FREE_CHECKS
  // Benchmark-only variant (//allocator:libccache_malloc_nocheck.so): the state still
  // moves, unchecked, so the cost of the double-free check can be measured.
  __atomic_store_n(&s->state[i], BLOCK_CACHED, __ATOMIC_RELAXED);
#else
  // Relaxed exchange: atomic, so of two racing frees of one block exactly one sees
  // BLOCK_ALLOCATED; ordering comes from the cache push or the central lock after it.
  uint8_t old = __atomic_exchange_n(&s->state[i], BLOCK_CACHED, __ATOMIC_RELAXED);
  if (__builtin_expect(old != BLOCK_ALLOCATED, 0))
    ccache_report_bad_free(heap, ptr, "double free (or free of a block never handed out)");
#endif
  return s;
}

void ccache_free(struct ccache_heap *heap, void *ptr) {
  if (!ptr) return;
  if (__builtin_expect((uintptr_t)ptr - heap->base < heap->reserve_bytes, 1)) {
    struct span *s = claim_freed_block(heap, ptr);
    CCACHE_ASAN_POISON(ptr, s->obj_size);  // use-after-free of a cached block is caught
    if (__builtin_expect(!cpu_cache_push(heap, s->cls, ptr), 0)) overflow_slow(heap, s->cls, ptr);
    return;
  }
  if (!large_free(heap, ptr))
    ccache_report_bad_free(heap, ptr, "invalid or double free (no live block of this heap there)");
}

// ---------------------------------------------------------------------------------
// Slow paths.

// The CPU cache of this class is empty (or stopped): a batch from the central list;
// one block for the caller, the rest into the cache.
static void *refill_slow(struct ccache_heap *heap, unsigned cls) {
  void *batch[128];
  int want = (int)heap->batch[cls] + 1;
#if CCACHE_SEEDED_BUG == 3  // test-only variant (ci/fuzz-teeth): CAS mode refills differ
  if (heap->mode.mode == RSEQ_MODE_CAS) want++;
#endif
  int n = central_take(heap, cls, batch, want);
  if (n == 0) return NULL;
  atomic_fetch_add_explicit(&heap->refills, 1, memory_order_relaxed);
  int k = 1;
  while (k < n && cpu_cache_push(heap, cls, batch[k])) k++;
  if (k < n) central_give(heap, cls, batch + k, n - k);  // full or stopped: back
  return batch[0];
}

// The CPU cache of this class is full (or stopped): move a batch of it, and the block
// being freed, to the central list.
static void overflow_slow(struct ccache_heap *heap, unsigned cls, void *block) {
  void *batch[129];
  int n = cpu_cache_pop_batch(heap, cls, batch, (int)heap->batch[cls]);
  batch[n++] = block;
  central_give(heap, cls, batch, n);
  atomic_fetch_add_explicit(&heap->drains, 1, memory_order_relaxed);
}

void ccache_free_sized(struct ccache_heap *heap, void *ptr, size_t size) {
  if (!ptr) return;
  if ((uintptr_t)ptr - heap->base < heap->reserve_bytes) {
    // A block may sit in a larger class than its size maps to (aligned allocations),
    // so the size can only be checked against the block's size.
    struct span *s = span_of(heap, (uintptr_t)ptr);
    if (s && s->kind == SPAN_SMALL && size > s->obj_size)
      ccache_report_bad_free(heap, ptr, "sized free with a size larger than the block");
  } else if (large_usable_size(heap, ptr) < size) {
    ccache_report_bad_free(heap, ptr, "sized free with a size larger than the block");
  }
  ccache_free(heap, ptr);
}

size_t ccache_malloc_usable_size(struct ccache_heap *heap, const void *ptr) {
  if (!ptr) return 0;
  uintptr_t a = (uintptr_t)ptr;
  if (a - heap->base < heap->reserve_bytes) {
    struct span *s = span_of(heap, a);
    if (!s || s->kind != SPAN_SMALL)
      ccache_report_bad_free(heap, ptr, "malloc_usable_size of a pointer this heap does not own");
    uint32_t i;
    if (!span_block_start(s, a, &i) ||
        __atomic_load_n(&s->state[i], __ATOMIC_RELAXED) != BLOCK_ALLOCATED)
      ccache_report_bad_free(heap, ptr, "malloc_usable_size of a block that is not allocated");
    return s->obj_size;
  }
  size_t n = large_usable_size(heap, ptr);
  if (!n) ccache_report_bad_free(heap, ptr, "malloc_usable_size of a pointer this heap does not own");
  return n;
}

bool ccache_owns(struct ccache_heap *heap, const void *ptr) {
  uintptr_t a = (uintptr_t)ptr;
  if (a - heap->base < heap->reserve_bytes) {
    struct span *s = span_of(heap, a);
    if (!s || s->kind != SPAN_SMALL) return false;
    uint32_t i;
    return span_block_start(s, a, &i) &&
           __atomic_load_n(&s->state[i], __ATOMIC_RELAXED) == BLOCK_ALLOCATED;
  }
  return ptr && large_usable_size(heap, ptr) != 0;
}

void *ccache_calloc(struct ccache_heap *heap, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = ccache_malloc(heap, total);
  if (!p) return NULL;
  if (total <= CCACHE_MAX_SMALL) memset(p, 0, total);  // large blocks are fresh, zero maps
  CCACHE_MSAN_UNPOISON(p, total);
  return p;
}

void *ccache_realloc(struct ccache_heap *heap, void *ptr, size_t size) {
  if (!ptr) return ccache_malloc(heap, size);
  if (size == 0) {  // as glibc: free and return NULL
    ccache_free(heap, ptr);
    return NULL;
  }
  size_t usable = ccache_malloc_usable_size(heap, ptr);  // reports a foreign pointer
  bool small = (uintptr_t)ptr - heap->base < heap->reserve_bytes;
  // Stay in place when the new size maps to the same class, or for a large block
  // when it still fits and wastes under half.
  if (small ? size <= CCACHE_MAX_SMALL && ccache_class_size(ccache_size_to_class(size)) == usable
            : size <= usable && size > usable / 2)
    return ptr;
  void *q = ccache_malloc(heap, size);
  if (!q) return NULL;  // errno ENOMEM; the old block is untouched
  size_t copy = size < usable ? size : usable;
#if CCACHE_SEEDED_BUG == 2  // test-only variant (ci/fuzz-teeth): realloc copies too little
  if (copy > 2048) copy--;
#endif
  memcpy(q, ptr, copy);
  ccache_free(heap, ptr);
  return q;
}

static bool power_of_two(size_t x) { return x && !(x & (x - 1)); }

void *ccache_aligned_alloc(struct ccache_heap *heap, size_t alignment, size_t size) {
  if (!power_of_two(alignment)) {
    errno = EINVAL;
    return NULL;
  }
  if (alignment <= CCACHE_MIN_ALIGN) return ccache_malloc(heap, size);
  // A power-of-two class is aligned to its size (up to the 8 KiB page its span starts
  // on): round the request up to one that is at least the alignment.
  if (alignment <= PAGE_SIZE) {
    size_t want = size > alignment ? size : alignment;
    size_t p2 = (size_t)1 << (64 - __builtin_clzll((unsigned long long)want - 1));
    if (want == 1) p2 = 1;
    if (p2 <= CCACHE_MAX_SMALL) return small_alloc(heap, ccache_size_to_class(p2));
  }
  return large_alloc(heap, size, alignment);
}

int ccache_posix_memalign(struct ccache_heap *heap, void **out, size_t alignment, size_t size) {
  if (!power_of_two(alignment) || alignment % sizeof(void *) != 0) return EINVAL;
  int saved = errno;
  void *p = ccache_aligned_alloc(heap, alignment, size);
  if (!p) {
    errno = saved;  // posix_memalign reports through its result, not errno
    return ENOMEM;
  }
  *out = p;
  return 0;
}

void *ccache_memalign(struct ccache_heap *heap, size_t alignment, size_t size) {
  return ccache_aligned_alloc(heap, alignment, size);
}

// ---------------------------------------------------------------------------------
// Drains, stats, invariants.

int ccache_drain_cpu(struct ccache_heap *heap, int cpu) { return cpu_cache_drain(heap, cpu); }

int ccache_drain_all(struct ccache_heap *heap) {
  for (int cpu = 0; cpu < heap->ncpus; cpu++)
    if (cpu_cache_drain(heap, cpu) != 0) return -1;
  return 0;
}

enum rseq_mode ccache_heap_mode(const struct ccache_heap *heap) { return heap->mode.mode; }
enum rseq_index ccache_heap_index(const struct ccache_heap *heap) { return heap->mode.index; }
const char *ccache_heap_mode_reason(const struct ccache_heap *heap) { return heap->why_cas; }

void ccache_get_stats(struct ccache_heap *heap, struct ccache_stats *out) {
  memset(out, 0, sizeof *out);
  out->mode = heap->mode.mode;
  out->index = heap->mode.index;
  out->ncpus = heap->ncpus < 1024 ? heap->ncpus : 1024;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    struct ccache_class_stats *cs = &out->classes[c];
    struct central *ce = &heap->central[c];
    cs->size = ccache_class_size(c);
    pthread_mutex_lock(central_lock_of(heap, c));
    cs->central = ce->free_blocks;
    cs->spans = ce->nspans;
    uint64_t total = ce->total_blocks;
    pthread_mutex_unlock(central_lock_of(heap, c));
    cs->span_bytes = cs->spans * (span_pages_for_class(c) << PAGE_SHIFT);
    for (int cpu = 0; cpu < heap->ncpus; cpu++) {
      uint64_t n = cpu_cache_count(heap, cpu, c);
      cs->cached_cpu += n;
      if (cpu < 1024) out->cpu_cached_bytes[cpu] += n * cs->size;
    }
    cs->in_use = total >= cs->central + cs->cached_cpu ? total - cs->central - cs->cached_cpu : 0;
    out->in_use_bytes += cs->in_use * cs->size;
    out->cached_bytes += cs->cached_cpu * cs->size;
    out->central_bytes += cs->central * cs->size;
    out->span_bytes += cs->span_bytes;
  }
  pthread_mutex_lock(&heap->page_lock);
  out->page_heap_free_bytes = heap->free_pages << PAGE_SHIFT;
  out->released_bytes = heap->released_total;
  uint64_t committed = heap->committed - (heap->released_pages << PAGE_SHIFT);
  pthread_mutex_unlock(&heap->page_lock);
  pthread_mutex_lock(&heap->large_lock);
  out->large_count = heap->large_count;
  out->large_bytes = heap->large_bytes;
  uint64_t large_mapped = heap->large_mapped;
  pthread_mutex_unlock(&heap->large_lock);
  pthread_mutex_lock(&heap->meta_lock);
  uint64_t meta = heap->meta_bytes;
  pthread_mutex_unlock(&heap->meta_lock);
  out->in_use_bytes += out->large_bytes;
  out->os_bytes = committed + large_mapped + meta + heap->regions_bytes;
  out->pop_aborts = atomic_load_explicit(&heap->pop_aborts, memory_order_relaxed);
  out->push_aborts = atomic_load_explicit(&heap->push_aborts, memory_order_relaxed);
  out->refills = atomic_load_explicit(&heap->refills, memory_order_relaxed);
  out->drains = atomic_load_explicit(&heap->drains, memory_order_relaxed);
  out->os_failures = atomic_load_explicit(&heap->os_failures, memory_order_relaxed);
}

#define FAIL_CHECK(...)                    \
  do {                                     \
    fprintf(stderr, "ccache_check_heap: " __VA_ARGS__); \
    fputc('\n', stderr);                   \
    rc = -1;                               \
  } while (0)

int ccache_check_heap(struct ccache_heap *heap) {
  int rc = 0;
  uint64_t central_seen[CCACHE_NUM_CLASSES] = {0}, cached_seen[CCACHE_NUM_CLASSES] = {0};
  uint64_t spans_seen[CCACHE_NUM_CLASSES] = {0};
  for (unsigned s = 0; s < CENTRAL_STRIPES; s++) pthread_mutex_lock(&heap->central_lock[s].lock);
  pthread_mutex_lock(&heap->page_lock);
  size_t pages = heap->frontier >> PAGE_SHIFT;
  for (size_t pg = 0; pg < pages;) {
    struct span *s = heap->span_of_page[pg];
    if (!s) {
      pg++;
      continue;
    }
    if (s->start != heap->base + (pg << PAGE_SHIFT)) {
      FAIL_CHECK("page %zu maps to span %p starting at %#lx", pg, (void *)s, (unsigned long)s->start);
      pg++;
      continue;
    }
    if (s->kind == SPAN_SMALL) {
      for (size_t k = 1; k < s->npages; k++)
        if (heap->span_of_page[pg + k] != s) FAIL_CHECK("span %p: page %zu unmapped", (void *)s, k);
      uint32_t central = 0, cached = 0;
      for (uint32_t i = 0; i < s->nobjs; i++) {
        uint8_t st = __atomic_load_n(&s->state[i], __ATOMIC_RELAXED);
        if (st == BLOCK_CENTRAL) central++;
        else if (st == BLOCK_CACHED) cached++;
        else if (st != BLOCK_ALLOCATED) FAIL_CHECK("span %p block %u: state %u", (void *)s, i, st);
      }
      if (central != s->nfree) FAIL_CHECK("span %p class %u: nfree %u, %u blocks central", (void *)s, s->cls, s->nfree, central);
      central_seen[s->cls] += central;
      cached_seen[s->cls] += cached;
      spans_seen[s->cls]++;
    }
    pg += s->npages;
  }
  pthread_mutex_unlock(&heap->page_lock);
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    struct central *ce = &heap->central[c];
    if (ce->free_blocks != central_seen[c]) FAIL_CHECK("class %u: central count %lu, %lu blocks central", c, (unsigned long)ce->free_blocks, (unsigned long)central_seen[c]);
    if (ce->nspans != spans_seen[c]) FAIL_CHECK("class %u: %lu spans counted, %lu found", c, (unsigned long)ce->nspans, (unsigned long)spans_seen[c]);
    uint64_t in_caches = 0;
    for (int cpu = 0; cpu < heap->ncpus; cpu++) in_caches += cpu_cache_count(heap, cpu, c);
    if (in_caches != cached_seen[c]) FAIL_CHECK("class %u: %lu blocks in CPU caches, %lu marked cached", c, (unsigned long)in_caches, (unsigned long)cached_seen[c]);
  }
  for (unsigned s = CENTRAL_STRIPES; s-- > 0;) pthread_mutex_unlock(&heap->central_lock[s].lock);
  return rc;
}
