// central.c: the central free lists, one per class, between the CPU caches and spans.
// A class's free blocks are in its transfer cache (whole batches that move between CPU
// caches with one copy, no span touched) or on the free list of their span. Refills
// take from the transfer cache first, then from spans; overflows give to the transfer
// cache while it has room, then back to the spans, which go back to the page heap
// once entirely free.
#include <stdlib.h>
#include <string.h>

#include "allocator/internal.h"
#include "sanitizers/sanitizers.h"

// Transfer cache capacity per class: up to TRANSFER_BATCHES batches, and at most
// TRANSFER_CLASS_BYTES of blocks (two batches at least). A batch given back by one CPU
// is taken by another with one copy, under the lock, touching no block; past the
// capacity every block given back is linked into its span, a cache miss per block
// under the class's lock. With two batches, on a 16-CPU machine (README, "On a 16-CPU
// machine"), xfree at T = 16 ran 35 Mblocks/s, with 8 batches 79 and with 32 91, RSS
// unchanged; larson at T = 128 452 -> 575 Mops/s. On 2 CPUs the difference was lost in
// the noise.
#define TRANSFER_BATCHES 32
#define TRANSFER_CLASS_BYTES (256u << 10)

int central_init(struct ccache_heap *heap) {
  memset(heap->central, 0, sizeof heap->central);
  for (unsigned s = 0; s < CENTRAL_STRIPES; s++) pthread_mutex_init(&heap->central_lock[s].lock, NULL);
  size_t total = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    uint32_t cap = TRANSFER_BATCHES * heap->batch[c];
    uint32_t by_bytes = TRANSFER_CLASS_BYTES / (uint32_t)ccache_class_size(c);
    if (cap > by_bytes) cap = by_bytes;
    if (cap < 2 * heap->batch[c]) cap = 2 * heap->batch[c];
    heap->central[c].transfer_cap = cap;
    total += heap->central[c].transfer_cap;
  }
  heap->transfer_bytes = total * sizeof(void *);
  heap->transfer_mem = os_map(heap->transfer_bytes);
  if (!heap->transfer_mem) {
    os_count_failure(heap);
    return -1;
  }
  void **p = heap->transfer_mem;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    heap->central[c].transfer = p;
    p += heap->central[c].transfer_cap;
  }
  return 0;
}

void central_destroy(struct ccache_heap *heap) {
  if (heap->transfer_mem) os_unmap(heap->transfer_mem, heap->transfer_bytes);
}

static void list_push(struct central *c, struct span *s) {
  s->prev = NULL;
  s->next = c->nonempty;
  if (s->next) s->next->prev = s;
  c->nonempty = s;
}

static void list_remove(struct central *c, struct span *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    c->nonempty = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
}

// A new span: nothing carved yet (its memory is not touched until a refill needs its
// blocks).
static struct span *grow(struct ccache_heap *heap, unsigned cls) {
  struct span *s = page_heap_alloc_small(heap, cls);
  if (!s) return NULL;
  s->free = NULL;
  s->nfree = s->carve = s->carved_pages = 0;
  return s;
}

// Carve the span's next block. The first block taken from a page initializes the
// whole page first: every block that starts in it gets its cookie (free), and the
// page gets its class_of_page word, so frees of its blocks take the fast path and a
// free of one never taken is caught as a double free. Later pages stay untouched.
static void *carve(struct ccache_heap *heap, struct span *s) {
  uint32_t i = s->carve, size = s->obj_size;
  size_t page = ((uintptr_t)i * size) >> PAGE_SHIFT;
  while (s->carved_pages <= page) {
    uintptr_t lo = (uintptr_t)s->carved_pages << PAGE_SHIFT, hi = lo + PAGE_SIZE;
    for (uintptr_t k = (lo + size - 1) / size; k < s->nobjs && k * size < hi; k++) {
      void *b = (void *)(s->start + k * size);
      block_set_word(b, 0, block_cookie(heap, b));
    }
    page_heap_set_class_page(heap, s, s->carved_pages++);
  }
  // Relaxed: the free slow path reads carve without the lock; it only grows.
  __atomic_store_n(&s->carve, i + 1, __ATOMIC_RELAXED);
  return (void *)(s->start + (uintptr_t)i * size);
}

int central_take(struct ccache_heap *heap, unsigned cls, void **out, int n) {
  struct central *c = &heap->central[cls];
  int got = 0;
  // Guards this class's central list (see struct central).
  pthread_mutex_lock(central_lock_of(heap, cls));
  // The transfer cache first: the most recently given blocks, as a stack.
  int k = (int)c->ntransfer < n ? (int)c->ntransfer : n;
  c->ntransfer -= (uint32_t)k;
  memcpy(out, c->transfer + c->ntransfer, sizeof(void *) * (size_t)k);
  got = k;
  c->free_blocks -= (uint64_t)k;
  while (got < n) {
    struct span *s = c->nonempty;
    if (!s) {
      // Grow: a fresh span. page_lock nests inside the central lock (see internal.h).
      s = grow(heap, cls);
      if (!s) break;  // the OS refused: return what we have (maybe nothing: ENOMEM)
      c->nspans++;
      c->total_blocks += s->nobjs;
      c->free_blocks += s->nobjs;
      list_push(c, s);
    }
    while (got < n && s->free) {
      void *b = s->free;
      s->free = (void *)(uintptr_t)block_word(b, 1);
      s->nfree--;
      c->free_blocks--;
      out[got++] = b;
    }
    while (got < n && s->carve < s->nobjs) {
      out[got++] = carve(heap, s);
      c->free_blocks--;
    }
    if (s->nfree == 0 && s->carve == s->nobjs) list_remove(c, s);
  }
  pthread_mutex_unlock(central_lock_of(heap, cls));
  return got;
}

// Back to its span's free list; an entirely free span goes back to the page heap once
// the class keeps another span's worth of free blocks (memory then returns to the OS
// past the page heap's threshold).
static void give_to_span(struct ccache_heap *heap, struct central *c, void *b) {
  struct span *s = span_of(heap, (uintptr_t)b);
  block_set_word(b, 1, (uint64_t)(uintptr_t)s->free);
  s->free = b;
  if (s->nfree++ == 0 && s->carve == s->nobjs) list_push(c, s);  // else already listed
  c->free_blocks++;
  // Entirely free: every carved block is back on the span's list.
  if (s->nfree == s->carve && c->free_blocks >= 2 * (uint64_t)s->nobjs) {
    list_remove(c, s);
    c->nspans--;
    c->total_blocks -= s->nobjs;
    c->free_blocks -= s->nobjs;
    page_heap_free_small(heap, s);
  }
}

void central_give(struct ccache_heap *heap, unsigned cls, void *const *blocks, int n) {
  struct central *c = &heap->central[cls];
  // Guards this class's central list (see struct central).
  pthread_mutex_lock(central_lock_of(heap, cls));
  int k = (int)(c->transfer_cap - c->ntransfer);
  if (k > n) k = n;
  memcpy(c->transfer + c->ntransfer, blocks, sizeof(void *) * (size_t)k);
  c->ntransfer += (uint32_t)k;
  c->free_blocks += (uint64_t)k;
  for (int i = k; i < n; i++) give_to_span(heap, c, blocks[i]);
  pthread_mutex_unlock(central_lock_of(heap, cls));
}

// Empty the transfer caches into the spans (so that entirely free spans can go back):
// ccache_trim and the idle reclaim.
void central_flush_transfer(struct ccache_heap *heap) {
  for (unsigned cls = 0; cls < CCACHE_NUM_CLASSES; cls++) {
    struct central *c = &heap->central[cls];
    pthread_mutex_lock(central_lock_of(heap, cls));
    while (c->ntransfer) {
      void *b = c->transfer[--c->ntransfer];
      c->free_blocks--;
      give_to_span(heap, c, b);
    }
    pthread_mutex_unlock(central_lock_of(heap, cls));
  }
}

void central_release_free_spans(struct ccache_heap *heap) {
  for (unsigned cls = 0; cls < CCACHE_NUM_CLASSES; cls++) {
    struct central *c = &heap->central[cls];
    // Guards this class's central list; page_lock nests inside (page_heap_free_small).
    pthread_mutex_lock(central_lock_of(heap, cls));
    for (struct span *s = c->nonempty, *next; s; s = next) {
      next = s->next;
      if (s->nfree != s->carve) continue;  // a carved block is out (in use or cached)
      list_remove(c, s);
      c->nspans--;
      c->total_blocks -= s->nobjs;
      c->free_blocks -= s->nobjs;  // its free and its uncarved blocks
      page_heap_free_small(heap, s);
    }
    pthread_mutex_unlock(central_lock_of(heap, cls));
  }
}
