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
#include "rseq/slab.h"
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
// The fast paths. RSEQ mode: one inlined slab section each (ccache_malloc_pop,
// ccache_free_push), retried in place after an abort. CAS mode and every miss (empty
// or full cache, a stopped region, an index the area does not give yet) leave through
// a call to cpu_cache.c.

RSEQ_SLAB_DEFINE_POP(malloc_pop, ccache_malloc_pop)
RSEQ_SLAB_DEFINE_PUSH(free_push, ccache_free_push)

static inline void *hand_out(struct ccache_heap *heap, void *p, unsigned cls) {
  uint32_t size = heap->classes[cls + 1].size;
  CCACHE_ASAN_UNPOISON(p, size);
  block_set_word(p, 0, 0);  // no longer free: the cookie goes
  CCACHE_MSAN_POISON(p, size);  // a fresh block is uninitialized to the user
  (void)size;
  return p;
}


// The slow paths leave through tail calls, so the fast paths stay leaf functions that
// save no register (and, built with -momit-leaf-frame-pointer, set up no frame). A
// retry after an abort calls the fast path again: each section exists once in the
// binary, at its one call site. malloc's retry asks for the class's own size, which
// maps back to the class: only the class has to survive the section.

// An abort, or an index the inline read could not give (the thread registers on the
// way): again from the start.
__attribute__((noinline)) static void *malloc_retry(struct ccache_heap *heap, unsigned long cls,
                                                    bool aborted) {
  if (aborted) {
    RSEQ_SLAB_COUNT_ABORT(ccache_malloc_pop);
    atomic_fetch_add_explicit(&heap->pop_aborts, 1, memory_order_relaxed);
  } else {
    struct rseq_abi *area;
    cpu_cache_read_index(heap, &area);
  }
  return ccache_malloc_class(heap, cls);
}

// The cache of this class is empty (or stopped by a remote drain), or the heap is in
// CAS mode.
__attribute__((noinline)) static void *malloc_miss(struct ccache_heap *heap, unsigned long cls) {
  void *p = NULL;
  if (heap->mode.mode == RSEQ_MODE_CAS) p = cpu_cache_pop_cas(heap, (unsigned)cls);
  if (!p) p = cpu_cache_refill(heap, (unsigned)cls);
  if (__builtin_expect(p == NULL, 0)) {
    errno = ENOMEM;
    return NULL;
  }
  return hand_out(heap, p, (unsigned)cls);
}

// Off the fast path: CAS mode, or an index the inline read cannot give yet.
__attribute__((noinline)) static void *malloc_no_index(struct ccache_heap *heap,
                                                       unsigned long cls) {
  if (heap->mode.mode == RSEQ_MODE_CAS) return malloc_miss(heap, cls);
  return malloc_retry(heap, cls, false);
}

// A small block of class cls. Not inlined: ccache_malloc_pop must exist once in the
// binary (one call site); every small allocation comes here. Aligned to a cache line
// (CCACHE_HOT_ALIGN), as ccache_free: where the link put them by chance decided up to
// a nanosecond of a malloc+free pair.
__attribute__((noinline)) CCACHE_HOT_ALIGN void *ccache_malloc_class(struct ccache_heap *heap,
                                                                     unsigned long cls) {
  struct rseq_abi *area = rseq_tls_area_;
  if (__builtin_expect(area == NULL, 0)) return malloc_no_index(heap, cls);
  uint32_t *idx = rseq_index_field(area, heap->index_off);
  // Relaxed: the kernel writes the field on return to user space; any current value
  // will do, since the section compares it again.
  uint32_t cpu = __atomic_load_n(idx, __ATOMIC_RELAXED);
  if (__builtin_expect(cpu >= heap->rseq_ncpus, 0)) return malloc_no_index(heap, cls);
  intptr_t item;
  int r = malloc_pop(area, idx, heap->mode.index, (int)cpu,
                     heap->regions + ((size_t)cpu << RSEQ_SLAB_SHIFT), cls, &item);
  if (__builtin_expect(r == RSEQ_ABORT, 0)) return malloc_retry(heap, cls, true);
  if (__builtin_expect(r == RSEQ_CMPFAIL, 0)) return malloc_miss(heap, cls);
  return hand_out(heap, (void *)item, (unsigned)cls);
}

// Sizes over 1 KiB: the class by arithmetic, or a large block.
__attribute__((noinline)) void *ccache_malloc_big(struct ccache_heap *heap, size_t size) {
  if (size > CCACHE_MAX_SMALL) return large_alloc(heap, size, 0, false);
  return ccache_malloc_class(heap, ccache_size_to_class(size));
}

void *ccache_malloc(struct ccache_heap *heap, size_t size) {
  if (__builtin_expect(size > 1024, 0)) return ccache_malloc_big(heap, size);
  return ccache_malloc_class(heap, ccache_small_class_table[(size + 15) >> 4]);
}

__attribute__((noinline, cold)) static void free_not_small(struct ccache_heap *heap, void *ptr) {
  if (!ptr) return;
  if ((uintptr_t)ptr - heap->ignore_start < heap->ignore_bytes) return;
  if (!large_free(heap, ptr))
    ccache_report_bad_free(heap, ptr, "invalid or double free (no live block of this heap there)");
}

// An abort, or an index the inline read could not give (the thread registers on the
// way): again from the start. The block is still ours: take the cookie back first, or
// the check would call this a double free.
__attribute__((noinline)) static void free_retry(struct ccache_heap *heap, void *ptr, bool aborted) {
  if (aborted) {
    RSEQ_SLAB_COUNT_ABORT(ccache_free_push);
    atomic_fetch_add_explicit(&heap->push_aborts, 1, memory_order_relaxed);
  } else {
    struct rseq_abi *area;
    cpu_cache_read_index(heap, &area);
  }
  block_set_word(ptr, 0, 0);
  ccache_free(heap, ptr);
}

// The cache of this class is full (or stopped by a remote drain), or the heap is in
// CAS mode.
__attribute__((noinline)) static void free_miss(struct ccache_heap *heap, void *ptr,
                                                unsigned long cls) {
  if (heap->mode.mode == RSEQ_MODE_CAS && cpu_cache_push_cas(heap, (unsigned)cls, ptr)) return;
  cpu_cache_overflow(heap, (unsigned)cls, ptr);
}

// Off the fast path: CAS mode, or an index the inline read cannot give yet.
__attribute__((noinline)) static void free_no_index(struct ccache_heap *heap, void *ptr,
                                                    unsigned long cls) {
  if (heap->mode.mode == RSEQ_MODE_CAS) return free_miss(heap, ptr, cls);
  free_retry(heap, ptr, false);
}

// Inlined into the heap walk's check_free_block, which has no coverage hooks.
__attribute__((always_inline)) static inline int class_carved(const struct ccache_heap *heap,
                                                              uintptr_t off) {
  int c = block_class(heap, off);
  if (c >= 0) return c;
  // The page's word is not set yet: a span still being carved, or no block at all.
  struct span *s = span_of(heap, heap->base + off);
  if (!s || s->kind != SPAN_SMALL) return -1;
  uint64_t rel = heap->base + off - s->start;
  // Relaxed: carve only grows; a block below it was carved before it was handed out.
  uint32_t carved = __atomic_load_n(&s->carve, __ATOMIC_RELAXED);
  if (rel % s->obj_size || rel / s->obj_size >= carved) return -1;
  return (int)s->cls;
}

int block_class_carved(const struct ccache_heap *heap, uintptr_t off) { return class_carved(heap, off); }

// The free of a block whose page's class word is 0: a block of a span still being
// carved (free it, slowly), or not a block of this heap (report it). Not static and
// not noreturn: the fast path reaches it with a tail call and keeps no frame.
__attribute__((noinline, cold)) void ccache_free_slow(struct ccache_heap *heap, void *ptr) {
  uintptr_t off = (uintptr_t)ptr - heap->base;
  int c = block_class_carved(heap, off);
  if (c < 0) {
    const char *what = "invalid free (not the start of a block)";
    struct span *s = span_of(heap, (uintptr_t)ptr);
    if (!s || s->kind != SPAN_SMALL) what = "invalid free (no block of this heap there)";
    else if ((off - (s->start - heap->base)) % s->obj_size == 0)
      what = "invalid free (a block never handed out)";
    ccache_report_bad_free(heap, ptr, what);
  }
  uint64_t cookie = block_cookie(heap, ptr);
#ifndef CCACHE_NO_FREE_CHECKS
  if (block_word(ptr, 0) == cookie)
    ccache_report_bad_free(heap, ptr, "double free (or free of a block never handed out)");
#endif
  block_set_word(ptr, 0, cookie);
  CCACHE_ASAN_POISON(ptr, heap->classes[c + 1].size);
  if (heap->mode.mode == RSEQ_MODE_CAS ? !cpu_cache_push_cas(heap, (unsigned)c, ptr)
                                       : !cpu_cache_push_one(heap, (unsigned)c, ptr))
    cpu_cache_overflow(heap, (unsigned)c, ptr);
}

// A double free, reported (the process stops). Not static and not noreturn, as above.
__attribute__((noinline, cold)) void ccache_free_rejected(struct ccache_heap *heap, void *ptr,
                                                          const char *what) {
  if (what) ccache_report_bad_free(heap, ptr, what);
}

// Not inlined: ccache_free_push must exist once in the binary (one call site).
__attribute__((noinline)) CCACHE_HOT_ALIGN void ccache_free(struct ccache_heap *heap, void *ptr) {
  uintptr_t off = (uintptr_t)ptr - heap->base;  // NULL and large blocks fall outside
  if (__builtin_expect(off >= heap->reserve_bytes, 0)) return free_not_small(heap, ptr);
  int c = block_class(heap, off);
  if (__builtin_expect(c < 0, 0)) return ccache_free_slow(heap, ptr);
  unsigned long cls = (unsigned)c;
  uint64_t cookie = block_cookie(heap, ptr);
#ifndef CCACHE_NO_FREE_CHECKS
  if (__builtin_expect(block_word(ptr, 0) == cookie, 0))
    return ccache_free_rejected(heap, ptr, "double free (or free of a block never handed out)");
#endif
  block_set_word(ptr, 0, cookie);
  CCACHE_ASAN_POISON(ptr, heap->classes[cls + 1].size);  // use-after-free is caught
  struct rseq_abi *area = rseq_tls_area_;
  if (__builtin_expect(area == NULL, 0)) return free_no_index(heap, ptr, cls);
  uint32_t *idx = rseq_index_field(area, heap->index_off);
  // Relaxed: as in ccache_malloc.
  uint32_t cpu = __atomic_load_n(idx, __ATOMIC_RELAXED);
  if (__builtin_expect(cpu >= heap->rseq_ncpus, 0)) return free_no_index(heap, ptr, cls);
  int r = free_push(area, idx, heap->mode.index, (int)cpu,
                    heap->regions + ((size_t)cpu << RSEQ_SLAB_SHIFT), cls, (intptr_t)ptr);
  if (__builtin_expect(r == RSEQ_ABORT, 0)) return free_retry(heap, ptr, true);
  if (__builtin_expect(r == RSEQ_CMPFAIL, 0)) return free_miss(heap, ptr, cls);
}

void ccache_ignore_frees(struct ccache_heap *heap, const void *start, size_t bytes) {
  heap->ignore_start = (uintptr_t)start;
  heap->ignore_bytes = bytes;
}

extern __typeof(ccache_free) ccache_free_local __attribute__((alias("ccache_free")));

// A small block of this heap that is handed out: its class; else the process stops
// with a report (`what` says which call).
static unsigned live_small_block(struct ccache_heap *heap, const void *ptr, const char *not_ours,
                                 const char *not_allocated) {
  int cls = block_class_carved(heap, (uintptr_t)ptr - heap->base);
  if (cls < 0) ccache_report_bad_free(heap, ptr, not_ours);
  if (block_is_free(heap, ptr)) ccache_report_bad_free(heap, ptr, not_allocated);
  return (unsigned)cls;
}

void ccache_free_sized(struct ccache_heap *heap, void *ptr, size_t size) {
  if (!ptr) return;
  if ((uintptr_t)ptr - heap->base < heap->reserve_bytes) {
    // A block may sit in a larger class than its size maps to (aligned allocations),
    // so the size can only be checked against the block's size.
    int cls = block_class_carved(heap, (uintptr_t)ptr - heap->base);
    if (cls >= 0 && size > heap->classes[cls + 1].size)
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
    unsigned cls = live_small_block(heap, ptr, "malloc_usable_size of a pointer this heap does not own",
                                    "malloc_usable_size of a block that is not allocated");
    return heap->classes[cls + 1].size;
  }
  size_t n = large_usable_size(heap, ptr);
  if (!n) ccache_report_bad_free(heap, ptr, "malloc_usable_size of a pointer this heap does not own");
  return n;
}

bool ccache_owns(struct ccache_heap *heap, const void *ptr) {
  uintptr_t a = (uintptr_t)ptr;
  if (a - heap->base < heap->reserve_bytes)
    return block_class_carved(heap, a - heap->base) >= 0 && !block_is_free(heap, ptr);
  return ptr && large_usable_size(heap, ptr) != 0;
}

void *ccache_calloc(struct ccache_heap *heap, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  if (total > CCACHE_MAX_SMALL) {
    void *p = large_alloc(heap, total, 0, true);  // zeros from the OS, not a memset
    if (p) CCACHE_MSAN_UNPOISON(p, total);
    return p;
  }
  void *p = ccache_malloc(heap, total);
  if (!p) return NULL;
  memset(p, 0, total);
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
  void *q;
  if (!small && large_resize(heap, ptr, size, &q)) return q;  // NULL: errno ENOMEM, old intact
  q = ccache_malloc(heap, size);
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

// As glibc 2.36's memalign, which its aligned_alloc is (the oracle of
// allocator/conformance_test): an alignment up to 16 is malloc's; one above
// SIZE_MAX / 2 + 1 is EINVAL; any other that is not a power of two is rounded up to one.
void *ccache_aligned_alloc(struct ccache_heap *heap, size_t alignment, size_t size) {
  if (alignment <= CCACHE_MIN_ALIGN) return ccache_malloc(heap, size);
  if (alignment > SIZE_MAX / 2 + 1) {
    errno = EINVAL;
    return NULL;
  }
  if (!power_of_two(alignment)) alignment = (size_t)1 << (64 - __builtin_clzll(alignment));
  // A power-of-two class is aligned to its size (up to the 8 KiB page its span starts
  // on): round the request up to one that is at least the alignment.
  // (Only for a small size: rounding SIZE_MAX - 1 up to a power of two shifted by 64,
  // and handed out a 1-byte block; allocator/conformance_test found it.)
  if (alignment <= PAGE_SIZE && size <= CCACHE_MAX_SMALL) {
    size_t want = size > alignment ? size : alignment;
    size_t p2 = want <= 1 ? 1 : (size_t)1 << (64 - __builtin_clzll((unsigned long long)want - 1));
    if (p2 <= CCACHE_MAX_SMALL) return ccache_malloc(heap, p2);  // a power-of-two class
  }
  return large_alloc(heap, size, alignment, false);
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

void *ccache_reallocarray(struct ccache_heap *heap, void *ptr, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return ccache_realloc(heap, ptr, total);
}

// glibc's page: 4 KiB on x86-64 (our own spans use 8 KiB pages; this is the user's).
#define USER_PAGE ((size_t)4096)

void *ccache_valloc(struct ccache_heap *heap, size_t size) {
  return ccache_aligned_alloc(heap, USER_PAGE, size);
}

void *ccache_pvalloc(struct ccache_heap *heap, size_t size) {
  size_t rounded;
  if (__builtin_add_overflow(size, USER_PAGE - 1, &rounded)) {
    errno = ENOMEM;
    return NULL;
  }
  rounded &= ~(USER_PAGE - 1);
  return ccache_aligned_alloc(heap, USER_PAGE, rounded ? rounded : USER_PAGE);
}

// ---------------------------------------------------------------------------------
// Drains, stats, invariants.

int ccache_drain_cpu(struct ccache_heap *heap, int cpu) { return cpu_cache_drain(heap, cpu); }

int ccache_drain_all(struct ccache_heap *heap) {
  for (int cpu = 0; cpu < heap->ncpus; cpu++)
    if (cpu_cache_drain(heap, cpu) != 0) return -1;
  return 0;
}

size_t ccache_trim(struct ccache_heap *heap) {
  // What goes back: the spares, and every page madvised meanwhile (spans that come back
  // past the release threshold are released as they come, the rest at the end).
  uint64_t released_before = page_heap_released_total(heap);
  // Every cache that holds blocks, even when one CPU's fence fails (its blocks then stay
  // where they are). An empty one is skipped: in RSEQ mode its drain would cost a fence
  // (with the mm_cid index, one on every CPU) for nothing. A block cached there after
  // the look stays cached, as one cached after its drain would.
  for (int cpu = 0; cpu < heap->ncpus; cpu++)
    if (cpu_cache_region_count(heap, cpu)) cpu_cache_drain(heap, cpu);
  central_flush_transfer(heap);
  central_release_free_spans(heap);
  size_t bytes = large_release_spares(heap, false);
  page_heap_release_all(heap);
  return bytes + (size_t)(page_heap_released_total(heap) - released_before);
}

enum rseq_mode ccache_heap_mode(const struct ccache_heap *heap) { return heap->mode.mode; }
enum rseq_index ccache_heap_index(const struct ccache_heap *heap) { return heap->mode.index; }
const char *ccache_heap_mode_reason(const struct ccache_heap *heap) { return heap->why_cas; }

CCACHE_NO_COVERAGE void ccache_get_stats(struct ccache_heap *heap, struct ccache_stats *out) {
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
  uint64_t large_mapped = heap->large_mapped, large_spare = heap->large_spare_bytes;
  out->large_spares = heap->large_nspares;
  out->large_spare_bytes = large_spare;
  pthread_mutex_unlock(&heap->large_lock);
  pthread_mutex_lock(&heap->meta_lock);
  uint64_t meta = heap->meta_bytes;
  pthread_mutex_unlock(&heap->meta_lock);
  out->in_use_bytes += out->large_bytes;
  out->os_bytes = committed + large_mapped + large_spare + meta + heap->regions_bytes +
                  heap->transfer_bytes;
  pthread_mutex_lock(&heap->reclaim_lock);  // reclaimed_regions is written under it
  out->reclaimed_regions = heap->reclaimed_regions;
  pthread_mutex_unlock(&heap->reclaim_lock);
  out->pop_aborts = atomic_load_explicit(&heap->pop_aborts, memory_order_relaxed);
  out->push_aborts = atomic_load_explicit(&heap->push_aborts, memory_order_relaxed);
  out->refills = atomic_load_explicit(&heap->refills, memory_order_relaxed);
  out->drains = atomic_load_explicit(&heap->drains, memory_order_relaxed);
  out->os_failures = atomic_load_explicit(&heap->os_failures, memory_order_relaxed);
}

// A free-marked block seen in a list must be a block start of class cls.
CCACHE_NO_COVERAGE static void check_free_block(struct ccache_heap *heap, unsigned cls, const void *b,
                             const char *where, int *rc) {
  uintptr_t off = (uintptr_t)b - heap->base;
  int c = off < heap->reserve_bytes ? class_carved(heap, off) : -1;
  if (c != (int)cls) {
    fprintf(stderr, "ccache_check_heap: %s of class %u holds %p, a block of class %d\n", where, cls, b, c);
    *rc = -1;
  } else if (!block_is_free(heap, b)) {
    fprintf(stderr, "ccache_check_heap: %s of class %u holds %p without its free cookie\n", where, cls, b);
    *rc = -1;
  }
}

CCACHE_NO_COVERAGE int ccache_check_heap(struct ccache_heap *heap) {
  int rc = 0;
  uint64_t marked[CCACHE_NUM_CLASSES] = {0}, on_spans[CCACHE_NUM_CLASSES] = {0};
  uint64_t spans_seen[CCACHE_NUM_CLASSES] = {0}, uncarved[CCACHE_NUM_CLASSES] = {0};
  void *items[256];  // a class's capacity is at most 128
  // Every central list and the page heap held (lock order): the check needs them still.
  for (unsigned s = 0; s < CENTRAL_STRIPES; s++) pthread_mutex_lock(&heap->central_lock[s].lock);
  pthread_mutex_lock(&heap->page_lock);
  size_t pages = heap->frontier >> PAGE_SHIFT;
  for (size_t pg = 0; pg < pages;) {
    struct span *s = heap->span_of_page[pg];
    if (!s || s->kind != SPAN_SMALL) {
      if (heap->class_of_page[pg] != 0) FAIL_CHECK("page %zu: no small span, class word %#lx", pg, (unsigned long)heap->class_of_page[pg]);
      pg++;
      continue;
    }
    if (s->start != heap->base + (pg << PAGE_SHIFT)) {
      FAIL_CHECK("page %zu maps to span %p starting at %#lx", pg, (void *)s, (unsigned long)s->start);
      pg++;
      continue;
    }
    uint64_t word = (uint64_t)(s->start - heap->base) | (s->cls + 1);
    for (size_t k = 0; k < s->npages; k++) {
      if (heap->span_of_page[pg + k] != s) FAIL_CHECK("span %p: page %zu unmapped", (void *)s, k);
      // Set exactly for the initialized pages.
      uint64_t want = k < s->carved_pages ? word : 0;
      if (heap->class_of_page[pg + k] != want) FAIL_CHECK("span %p: page %zu class word %#lx, want %#lx (carved %u of %u blocks)", (void *)s, k, (unsigned long)heap->class_of_page[pg + k], (unsigned long)want, s->carve, s->nobjs);
    }
    // Blocks that start in an initialized page: taken ones (below carve) and the rest,
    // which carry their cookie until taken.
    uint32_t inited = (uint32_t)(((uintptr_t)s->carved_pages * PAGE_SIZE + s->obj_size - 1) / s->obj_size);
    if (inited > s->nobjs) inited = s->nobjs;
    if (s->carve > inited) FAIL_CHECK("span %p: %u blocks taken, %u initialized", (void *)s, s->carve, inited);
    uint32_t free_marked = 0;
    for (uint32_t i = 0; i < inited; i++)
      free_marked += block_is_free(heap, (void *)(s->start + (uintptr_t)i * s->obj_size));
    if (s->carve <= inited && free_marked >= inited - s->carve)
      free_marked -= inited - s->carve;  // the carved ones only
    else
      FAIL_CHECK("span %p: %u blocks initialized and never taken, only %u marked free", (void *)s, inited - s->carve, free_marked);
    uint32_t listed = 0;
    for (void *b = s->free; b && listed <= s->nobjs; b = (void *)(uintptr_t)block_word(b, 1)) {
      if ((uintptr_t)b < s->start || (uintptr_t)b >= s->start + (s->npages << PAGE_SHIFT)) {
        FAIL_CHECK("span %p: free list holds %p, outside the span", (void *)s, b);
        break;
      }
      check_free_block(heap, s->cls, b, "a span free list", &rc);
      listed++;
    }
    if (listed != s->nfree) FAIL_CHECK("span %p class %u: nfree %u, %u blocks on its free list", (void *)s, s->cls, s->nfree, listed);
    marked[s->cls] += free_marked;
    on_spans[s->cls] += s->nfree + (s->nobjs - s->carve);
    uncarved[s->cls] += s->nobjs - s->carve;
    spans_seen[s->cls]++;
    pg += s->npages;
  }
  if (page_heap_check_runs(heap)) rc = -1;
  pthread_mutex_unlock(&heap->page_lock);
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    struct central *ce = &heap->central[c];
    for (uint32_t k = 0; k < ce->ntransfer; k++) check_free_block(heap, c, ce->transfer[k], "the transfer cache", &rc);
    if (ce->free_blocks != ce->ntransfer + on_spans[c]) FAIL_CHECK("class %u: central count %lu, %u in the transfer cache + %lu free or uncarved in spans", c, (unsigned long)ce->free_blocks, ce->ntransfer, (unsigned long)on_spans[c]);
    if (ce->nspans != spans_seen[c]) FAIL_CHECK("class %u: %lu spans counted, %lu found", c, (unsigned long)ce->nspans, (unsigned long)spans_seen[c]);
    uint64_t in_caches = 0;
    for (int cpu = 0; cpu < heap->ncpus; cpu++) {
      int n = cpu_cache_items(heap, cpu, c, items);
      for (int k = 0; k < n; k++) check_free_block(heap, c, items[k], "a CPU cache", &rc);
      in_caches += (uint64_t)n;
    }
    // Every free-marked block is in exactly one place: a CPU cache, the transfer cache
    // or its span's free list.
    uint64_t listed_free = on_spans[c] - uncarved[c];
    if (marked[c] != in_caches + ce->ntransfer + listed_free) FAIL_CHECK("class %u: %lu carved blocks marked free, %lu in CPU caches + %u transfer + %lu on span lists", c, (unsigned long)marked[c], (unsigned long)in_caches, ce->ntransfer, (unsigned long)listed_free);
  }
  for (unsigned s = CENTRAL_STRIPES; s-- > 0;) pthread_mutex_unlock(&heap->central_lock[s].lock);
  if (large_check(heap)) rc = -1;
  return rc;
}
