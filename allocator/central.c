// central.c: the central free lists, one per class, between the CPU caches and spans.
#include <stdlib.h>
#include <string.h>

#include "allocator/internal.h"

void central_init(struct ccache_heap *heap) {
  memset(heap->central, 0, sizeof heap->central);
  for (unsigned s = 0; s < CENTRAL_STRIPES; s++) pthread_mutex_init(&heap->central_lock[s].lock, NULL);
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

// Relaxed: the state byte of a block is only changed by whoever holds the block (the
// central lock holder here), and read by the free path of the block's owner.
static inline void set_state(struct span *s, uint32_t i, uint8_t v) {
  __atomic_store_n(&s->state[i], v, __ATOMIC_RELAXED);
}

// The next BLOCK_CENTRAL block from the span's cursor on (nfree > 0, so there is one).
// Relaxed loads, not memchr: the frees of the span's other blocks flip their bytes
// concurrently, and a plain read of them would be a data race.
static uint32_t find_central(const struct span *s) {
  for (uint32_t k = 0, i = s->cursor; k < s->nobjs; k++, i = i + 1 == s->nobjs ? 0 : i + 1)
    if (__atomic_load_n(&s->state[i], __ATOMIC_RELAXED) == BLOCK_CENTRAL) return i;
  abort();  // nfree said there was one: the heap is corrupt
}

int central_take(struct ccache_heap *heap, unsigned cls, void **out, int n) {
  struct central *c = &heap->central[cls];
  int got = 0;
  pthread_mutex_lock(central_lock_of(heap, cls));
  while (got < n) {
    struct span *s = c->nonempty;
    if (!s) {
      // Grow: a fresh span. page_lock nests inside the central lock (see internal.h).
      s = page_heap_alloc_small(heap, cls);
      if (!s) break;  // the OS refused: return what we have (maybe nothing: ENOMEM)
      c->nspans++;
      c->total_blocks += s->nobjs;
      c->free_blocks += s->nobjs;
      list_push(c, s);
    }
    while (got < n && s->nfree > 0) {
      uint32_t i = find_central(s);
      set_state(s, i, BLOCK_CACHED);
      s->cursor = i + 1 == s->nobjs ? 0 : i + 1;
      s->nfree--;
      c->free_blocks--;
      out[got++] = (void *)(s->start + (uintptr_t)i * s->obj_size);
    }
    if (s->nfree == 0) list_remove(c, s);
  }
  pthread_mutex_unlock(central_lock_of(heap, cls));
  return got;
}

void central_give(struct ccache_heap *heap, unsigned cls, void *const *blocks, int n) {
  struct central *c = &heap->central[cls];
  pthread_mutex_lock(central_lock_of(heap, cls));
  for (int k = 0; k < n; k++) {
    uintptr_t p = (uintptr_t)blocks[k];
    struct span *s = span_of(heap, p);
    uint32_t i = span_index(s, p);
    set_state(s, i, BLOCK_CENTRAL);
    if (s->nfree++ == 0) list_push(c, s);
    c->free_blocks++;
    // An entirely free span goes back to the page heap once the class keeps another
    // span's worth of free blocks: memory then returns to the OS past the threshold.
    if (s->nfree == s->nobjs && c->free_blocks >= 2 * (uint64_t)s->nobjs) {
      list_remove(c, s);
      c->nspans--;
      c->total_blocks -= s->nobjs;
      c->free_blocks -= s->nobjs;
      page_heap_free_small(heap, s);
    }
  }
  pthread_mutex_unlock(central_lock_of(heap, cls));
}
