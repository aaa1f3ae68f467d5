// page_heap.c: spans carved from the heap's reservation, the page map, the metadata
// arena, and the return of free pages to the OS.
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "allocator/internal.h"
#include "sanitizers/sanitizers.h"

// ---------------------------------------------------------------------------------
// Metadata arena: span structs, out of band (free blocks carry their own links).

#define META_CHUNK ((size_t)1 << 20)

static void *meta_bump(struct ccache_heap *heap, size_t bytes) {
  if (!heap->meta_cur || (size_t)(heap->meta_end - heap->meta_cur) < bytes) {
    size_t chunk = bytes + 16 > META_CHUNK ? bytes + 16 : META_CHUNK;
    char *c = os_map(chunk);
    if (!c) return NULL;
    // Each chunk starts with {previous chunk, its size}: heap_destroy unmaps them all.
    ((void **)c)[0] = heap->meta_chunks;
    ((size_t *)c)[1] = chunk;
    heap->meta_chunks = c;
    heap->meta_bytes += chunk;
    heap->meta_cur = c + 16;
    heap->meta_end = c + chunk;
  }
  void *p = heap->meta_cur;
  heap->meta_cur += bytes;
  return p;
}

// A zeroed span struct (small spans and free runs alike).
struct span *meta_span_alloc(struct ccache_heap *heap) {
  // Guards the bump pointer and the recycle list (a leaf lock).
  pthread_mutex_lock(&heap->meta_lock);
  struct span *s = heap->meta_free;
  if (s)
    heap->meta_free = s->meta_next;
  else
    s = meta_bump(heap, (sizeof(struct span) + 15) & ~(size_t)15);
  pthread_mutex_unlock(&heap->meta_lock);
  if (s) memset(s, 0, sizeof *s);
  return s;
}

void meta_span_free(struct ccache_heap *heap, struct span *s) {
  pthread_mutex_lock(&heap->meta_lock);
  s->meta_next = heap->meta_free;
  heap->meta_free = s;
  pthread_mutex_unlock(&heap->meta_lock);
}

// ---------------------------------------------------------------------------------
// Spans.

// At least 8 blocks (4 from 64 KiB up) and one page. Pages are initialized as blocks
// are taken from them, so a span's untouched tail costs address space, not memory.
// (Spans of one or two big blocks were tried: they come and go with every few frees,
// and the page heap's free pages then held more memory than the spans did.)
size_t span_pages_for_class(unsigned cls) {
  size_t size = ccache_class_size(cls);
  size_t bytes = size >= 64 * 1024 ? 4 * size : 8 * size;
  if (bytes < PAGE_SIZE) bytes = PAGE_SIZE;
  return (bytes + PAGE_SIZE - 1) >> PAGE_SHIFT;
}

void class_info_init(struct ccache_heap *heap) {
  memset(&heap->classes[0], 0, sizeof heap->classes[0]);  // no class: every check fails
  heap->class_div_magic[0] = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    struct class_info *ci = &heap->classes[c + 1];
    uint32_t size = (uint32_t)ccache_class_size(c);
    uint32_t nobjs = (uint32_t)((span_pages_for_class(c) << PAGE_SHIFT) / size);
    ci->size = size;
    ci->blocks_bytes = nobjs * size;
    heap->class_div_magic[c + 1] = UINT64_MAX / size + 1;
  }
}

static inline void set_class_page(struct ccache_heap *heap, size_t page, uint64_t v) {
  // Relaxed: a reader that needs the word frees a block it got through a synchronizing
  // path after the block was carved; one that reads a stale 0 takes the slow path.
  __atomic_store_n(&heap->class_of_page[page], v, __ATOMIC_RELAXED);
}


static inline size_t page_of(const struct ccache_heap *heap, uintptr_t addr) {
  return (addr - heap->base) >> PAGE_SHIFT;
}

void page_heap_set_class_page(struct ccache_heap *heap, const struct span *s, size_t page) {
  set_class_page(heap, page_of(heap, s->start) + page,
                 (uint64_t)(s->start - heap->base) | (s->cls + 1));
}

static inline void set_page(struct ccache_heap *heap, size_t page, struct span *s) {
  // Relaxed: readers that need the entry got their block through a synchronizing path.
  __atomic_store_n(&heap->span_of_page[page], s, __ATOMIC_RELAXED);
}

static inline struct span *get_page(const struct ccache_heap *heap, size_t page) {
  return __atomic_load_n(&heap->span_of_page[page], __ATOMIC_RELAXED);
}

static unsigned bucket_of(size_t npages) { return npages < PAGE_HEAP_BUCKETS ? (unsigned)npages : 0; }

static void run_insert(struct ccache_heap *heap, struct span *run) {
  unsigned b = bucket_of(run->npages);
  run->prev = NULL;
  run->next = heap->free_runs[b];
  if (run->next) run->next->prev = run;
  heap->free_runs[b] = run;
  size_t first = page_of(heap, run->start);
  set_page(heap, first, run);
  set_page(heap, first + run->npages - 1, run);
  if (run->released)
    heap->released_pages += run->npages;
  else
    heap->free_pages += run->npages;
}

static void run_remove(struct ccache_heap *heap, struct span *run) {
  if (run->prev)
    run->prev->next = run->next;
  else
    heap->free_runs[bucket_of(run->npages)] = run->next;
  if (run->next) run->next->prev = run->prev;
  if (run->released)
    heap->released_pages -= run->npages;
  else
    heap->free_pages -= run->npages;
}

// A run of at least n pages from the free lists, or from the uncommitted frontier.
static struct span *take_run(struct ccache_heap *heap, size_t n) {
  for (unsigned b = n < PAGE_HEAP_BUCKETS ? (unsigned)n : PAGE_HEAP_BUCKETS; b < PAGE_HEAP_BUCKETS; b++) {
    if (heap->free_runs[b]) {
      struct span *r = heap->free_runs[b];
      run_remove(heap, r);
      return r;
    }
  }
  for (struct span *r = heap->free_runs[0]; r; r = r->next) {
    if (r->npages >= n) {
      run_remove(heap, r);
      return r;
    }
  }
  // The frontier: commit whole chunks as needed.
  size_t bytes = n << PAGE_SHIFT;
  if (heap->frontier + bytes > heap->reserve_bytes) {
    errno = ENOMEM;
    return NULL;
  }
  if (heap->frontier + bytes > heap->committed) {
    size_t want = (heap->frontier + bytes - heap->committed + CHUNK_SIZE - 1) & ~(CHUNK_SIZE - 1);
    if (heap->committed + want > heap->reserve_bytes) want = heap->reserve_bytes - heap->committed;
    if (os_commit((void *)(heap->base + heap->committed), want) != 0) {
      os_count_failure(heap);
      errno = ENOMEM;
      return NULL;
    }
    // Release: pairs with nothing today (span_of() reads `committed` relaxed, as a bound
    // only); kept so that a reader that ever needs the committed pages can acquire it.
    __atomic_store_n(&heap->committed, heap->committed + want, __ATOMIC_RELEASE);
  }
  struct span *r = meta_span_alloc(heap);
  if (!r) {
    os_count_failure(heap);
    errno = ENOMEM;
    return NULL;
  }
  r->kind = SPAN_FREE;
  r->start = heap->base + heap->frontier;
  r->npages = n;
  heap->frontier += bytes;
  return r;
}

struct span *page_heap_alloc_small(struct ccache_heap *heap, unsigned cls) {
  size_t n = span_pages_for_class(cls);
  uint32_t size = (uint32_t)ccache_class_size(cls);
  uint32_t nobjs = (uint32_t)((n << PAGE_SHIFT) / size);
  struct span *s = meta_span_alloc(heap);
  if (!s) {
    os_count_failure(heap);
    errno = ENOMEM;
    return NULL;
  }
  pthread_mutex_lock(&heap->page_lock);
  struct span *run = take_run(heap, n);
  if (!run) {
    pthread_mutex_unlock(&heap->page_lock);
    meta_span_free(heap, s);
    return NULL;
  }
  if (run->npages > n) {  // split: the tail goes back
    struct span *rest = meta_span_alloc(heap);
    if (!rest) {
      run_insert(heap, run);
      pthread_mutex_unlock(&heap->page_lock);
      meta_span_free(heap, s);
      os_count_failure(heap);
      errno = ENOMEM;
      return NULL;
    }
    rest->kind = SPAN_FREE;
    rest->released = run->released;
    rest->start = run->start + (n << PAGE_SHIFT);
    rest->npages = run->npages - n;
    run_insert(heap, rest);
  }
  s->kind = SPAN_SMALL;
  s->cls = cls;
  s->start = run->start;
  s->npages = n;
  s->obj_size = size;
  s->nobjs = nobjs;
  size_t first = page_of(heap, s->start);
  // class_of_page stays 0 (as a free run left it) until the page's blocks are carved.
  for (size_t i = 0; i < n; i++) set_page(heap, first + i, s);
  pthread_mutex_unlock(&heap->page_lock);
  meta_span_free(heap, run);
  // Free and uncarved blocks are poisoned until handed out (ASan); the span may hold
  // old data.
  CCACHE_ASAN_POISON((void *)s->start, n << PAGE_SHIFT);
  return s;
}

// Gives committed free pages back to the OS (page_lock held).
static void release_pages(struct ccache_heap *heap, uintptr_t start, size_t npages) {
  size_t bytes = npages << PAGE_SHIFT;
  // Poisoned while free; madvise does not care, but the shadow must say so again.
  CCACHE_ASAN_UNPOISON((void *)start, bytes);
  os_release((void *)start, bytes);
  CCACHE_ASAN_POISON((void *)start, bytes);
  heap->released_total += bytes;
}

// Merges into `run` (in no list) the free runs next to it, and the ones next to those:
// committed ones when `take_committed`, released ones when `take_released`, which also
// releases the committed ones taken (the merged run is then released). page_lock held.
// Every page that stops being a boundary is cleared in the page map, the run's own
// included: an inner page must not name a run (until 2026-12-04 the run's old
// boundaries kept naming it, and its freed metadata once it merged into another: a
// second ccache_trim made ccache_check_heap fail, "inner page maps to"; found by review).
static void coalesce(struct ccache_heap *heap, struct span *run, bool take_committed,
                     bool take_released) {
  for (;;) {  // the runs to the left
    size_t f = page_of(heap, run->start);
    struct span *left = f > 0 ? get_page(heap, f - 1) : NULL;
    if (!left || left->kind != SPAN_FREE || !(left->released ? take_released : take_committed))
      break;
    run_remove(heap, left);
    set_page(heap, f - 1, NULL);
    set_page(heap, page_of(heap, left->start), NULL);
    set_page(heap, f, NULL);  // run's old first page: an inner page from now on
    if (take_released && !left->released) release_pages(heap, left->start, left->npages);
    run->start = left->start;
    run->npages += left->npages;
    meta_span_free(heap, left);  // meta_lock: a leaf
  }
  for (;;) {  // the runs to the right
    size_t last = page_of(heap, run->start) + run->npages - 1;
    struct span *right =
        (last + 1) << PAGE_SHIFT < heap->frontier ? get_page(heap, last + 1) : NULL;
    if (!right || right->kind != SPAN_FREE ||
        !(right->released ? take_released : take_committed))
      break;
    run_remove(heap, right);
    set_page(heap, last + 1, NULL);
    set_page(heap, page_of(heap, right->start) + right->npages - 1, NULL);
    set_page(heap, last, NULL);  // run's old last page: an inner page from now on
    if (take_released && !right->released) release_pages(heap, right->start, right->npages);
    run->npages += right->npages;
    meta_span_free(heap, right);
  }
}

void page_heap_free_small(struct ccache_heap *heap, struct span *s) {
  struct span *run = meta_span_alloc(heap);
  pthread_mutex_lock(&heap->page_lock);
  size_t first = page_of(heap, s->start), n = s->npages;
  for (size_t i = 0; i < n; i++) {
    set_page(heap, first + i, NULL);
    set_class_page(heap, first + i, 0);
  }
  if (!run) {
    // No metadata for a free run: keep the pages out of use (leaked to the heap, still
    // returned at destroy). No run holds them, so no count does either.
    pthread_mutex_unlock(&heap->page_lock);
    meta_span_free(heap, s);
    return;
  }
  run->kind = SPAN_FREE;
  run->start = s->start;
  run->npages = n;
  // Past the threshold of committed free pages, the span goes back to the OS, and it
  // coalesces with every free run next to it (the committed ones go back too). Below
  // it, it coalesces with committed runs only. So a run is all committed or all
  // released, and runs next to each other are in different states: a release never
  // madvises pages that were given back already. (Merging a released neighbour into a
  // committed run counted it committed, and every later release there gave back the
  // whole run again: gigabytes of madvise over a 40 MB workload, all counted in
  // released_bytes.) Runs alternate at most: merging one committed neighbour can
  // bring a released one next, which a release merges too.
  bool release = (heap->free_pages + n) << PAGE_SHIFT > heap->release_threshold;
  coalesce(heap, run, true, release);
  if (release) release_pages(heap, s->start, n);
  run->released = release;
  run_insert(heap, run);
  pthread_mutex_unlock(&heap->page_lock);
  meta_span_free(heap, s);
}

void page_heap_release_all(struct ccache_heap *heap) {
  // Guards the free runs and their counts (see struct ccache_heap).
  pthread_mutex_lock(&heap->page_lock);
  // The committed runs, chained through meta_next (free for a run in the lists). No two
  // of them are next to each other, so merging one never takes another: each is
  // released, then merged with the released runs around it (a committed run not
  // handled yet is not taken; it merges when its turn comes).
  struct span *todo = NULL;
  for (unsigned b = 0; b < PAGE_HEAP_BUCKETS; b++)
    for (struct span *run = heap->free_runs[b]; run; run = run->next)
      if (!run->released) {
        run->meta_next = todo;
        todo = run;
      }
  for (struct span *run = todo, *next; run; run = next) {
    next = run->meta_next;
    run_remove(heap, run);
    release_pages(heap, run->start, run->npages);
    run->released = true;
    coalesce(heap, run, false, true);
    run_insert(heap, run);
  }
  pthread_mutex_unlock(&heap->page_lock);
}

uint64_t page_heap_released_total(struct ccache_heap *heap) {
  pthread_mutex_lock(&heap->page_lock);  // released_total is written under it
  uint64_t n = heap->released_total;
  pthread_mutex_unlock(&heap->page_lock);
  return n;
}

// Called with page_lock held (ccache_check_heap). The free runs: each in the bucket of
// its size, its first and last pages mapped to it and the pages between unmapped, the
// counts of committed and released pages exact, and no two adjacent runs in the same
// state (they would have merged). Returns the number of problems, each on stderr.
CCACHE_NO_COVERAGE int page_heap_check_runs(struct ccache_heap *heap) {
  int bad = 0;
  uint64_t committed = 0, released = 0;
  size_t pages = heap->frontier >> PAGE_SHIFT;
  for (unsigned b = 0; b < PAGE_HEAP_BUCKETS; b++)
    for (struct span *run = heap->free_runs[b]; run; run = run->next) {
      size_t first = page_of(heap, run->start), last = first + run->npages - 1;
      if (run->kind != SPAN_FREE || run->npages == 0 || bucket_of(run->npages) != b ||
          last >= pages || get_page(heap, first) != run || get_page(heap, last) != run) {
        fprintf(stderr, "ccache_check_heap: free run %p (pages %zu..%zu, kind %d) in bucket %u: "
                        "not where its size and the page map say (frontier %zu pages)\n",
                (void *)run, first, last, (int)run->kind, b, pages);
        bad++;
        continue;
      }
      for (size_t k = first + 1; k < last; k++)
        if (get_page(heap, k) != NULL) {
          fprintf(stderr, "ccache_check_heap: free run %p: inner page %zu maps to %p\n",
                  (void *)run, k, (void *)get_page(heap, k));
          bad++;
          break;
        }
      if (run->released)
        released += run->npages;
      else
        committed += run->npages;
      struct span *right = last + 1 < pages ? get_page(heap, last + 1) : NULL;
      if (right && right->kind == SPAN_FREE && right->released == run->released) {
        fprintf(stderr, "ccache_check_heap: free runs at pages %zu and %zu are adjacent and both "
                        "%s: they should have merged\n",
                first, last + 1, run->released ? "released" : "committed");
        bad++;
      }
    }
  if (committed != heap->free_pages || released != heap->released_pages) {
    fprintf(stderr, "ccache_check_heap: free runs hold %lu committed and %lu released pages; "
                    "the counts say %lu and %lu\n",
            (unsigned long)committed, (unsigned long)released, (unsigned long)heap->free_pages,
            (unsigned long)heap->released_pages);
    bad++;
  }
  return bad;
}

void ccache_set_release_threshold(struct ccache_heap *heap, size_t bytes) {
  // page_lock: page_heap_free_small reads the threshold under it.
  pthread_mutex_lock(&heap->page_lock);
  heap->release_threshold = bytes;
  pthread_mutex_unlock(&heap->page_lock);
}
