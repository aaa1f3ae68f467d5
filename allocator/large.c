// large.c: blocks over 256 KiB (or aligned beyond a page) get their own mapping,
// found again by address in an open-addressing hash table. A freed mapping is kept as
// a spare for the next large request (up to LARGE_SPARES, LARGE_SPARE_BYTES in all),
// and realloc between large sizes grows into the rest of its mapping or moves pages
// with mremap instead of copying bytes (not for over-aligned blocks, nor under TSan
// and MSan: see large_resize).
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "allocator/internal.h"
#include "sanitizers/sanitizers.h"

// The smallest mapping a spare can serve: take_spare serves only requests that are not
// over-aligned, and those reach this file only past CCACHE_MAX_SMALL (heap.c), so a
// page more. A smaller mapping (an over-aligned small block's) is unmapped when freed:
// kept, it could never be handed out again, and it took one of the LARGE_SPARES places
// until the idle scan. (Until 2026-12-04 it was kept: in allocator_ops_fuzzer such
// spares filled the list, a spare served 40% of the large requests, and 58% of the large
// frees unmapped a block for want of a place; 76% are served since.)
#define LARGE_SPARE_MIN (CCACHE_MAX_SMALL + OS_PAGE)
#define EMPTY 0
#define TOMB 1

static size_t hash(uintptr_t a, size_t cap) { return (size_t)((a >> 12) * 0x9E3779B97F4A7C15ULL) & (cap - 1); }

int large_init(struct ccache_heap *heap) {
  heap->large_cap = 256;
  heap->large = os_map(heap->large_cap * sizeof *heap->large);
  if (!heap->large) {
    os_count_failure(heap);
    return -1;
  }
  return 0;
}

// A block that reused a bigger spare keeps the spare's pages past it poisoned; munmap
// does not clear the shadow. Only that tail (at most LARGE_SPARE_BYTES): unpoisoning a
// whole mapping would write its shadow, an eighth of its size in resident memory (a
// 1 GiB block: 128 MiB).
static void unpoison_tail(const struct large_entry *e) {
  uintptr_t tail = e->addr + e->size, end = e->map_start + e->map_size;
  if (end > tail && end - tail <= LARGE_SPARE_BYTES) CCACHE_ASAN_UNPOISON((void *)tail, end - tail);
}

void large_destroy(struct ccache_heap *heap) {
  large_release_spares(heap, false);
  if (!heap->large) return;
  for (size_t i = 0; i < heap->large_cap; i++) {
    struct large_entry *e = &heap->large[i];
    if (e->addr > TOMB) {
      unpoison_tail(e);
      os_unmap((void *)e->map_start, e->map_size);
    }
  }
  os_unmap(heap->large, heap->large_cap * sizeof *heap->large);
}

static struct large_entry *find(struct ccache_heap *heap, uintptr_t addr) {
  // EMPTY and TOMB are slot markers, never a block's address: a tombstone keeps its
  // freed block's sizes, and free((void *)1) once found it, and freed that mapping
  // again (until 2026-12-04; found by review).
  if (addr <= TOMB) return NULL;
  for (size_t i = hash(addr, heap->large_cap), n = 0; n < heap->large_cap;
       i = (i + 1) & (heap->large_cap - 1), n++) {
    struct large_entry *e = &heap->large[i];
    if (e->addr == addr) return e;
    if (e->addr == EMPTY) return NULL;
  }
  return NULL;
}

// Returns 1 when the slot it took was a tombstone (the caller counts one less).
static int insert(struct large_entry *table, size_t cap, const struct large_entry *in) {
  for (size_t i = hash(in->addr, cap);; i = (i + 1) & (cap - 1)) {
    if (table[i].addr <= TOMB) {
      int tomb = table[i].addr == TOMB;
      table[i] = *in;
      return tomb;
    }
  }
}

// Called with large_lock held. 0, or -1 when the OS refuses a bigger table.
static int reserve_slot(struct ccache_heap *heap) {
  if ((heap->large_used + heap->large_tombs + 1) * 2 <= heap->large_cap) return 0;
  size_t cap = heap->large_used * 4 > heap->large_cap ? heap->large_cap * 2 : heap->large_cap;
  struct large_entry *t = os_map(cap * sizeof *t);
  if (!t) return -1;
  for (size_t i = 0; i < heap->large_cap; i++)
    if (heap->large[i].addr > TOMB) (void)insert(t, cap, &heap->large[i]);  // no tombs in t
  os_unmap(heap->large, heap->large_cap * sizeof *heap->large);
  heap->large = t;
  heap->large_cap = cap;
  heap->large_tombs = 0;
  return 0;
}

// Called with large_lock held: the smallest spare that holds `usable`, taken out of the
// list; 0 when none does. One that would waste more than the block's own size is split
// instead: the block takes its first `usable` bytes (a mapping of its own from then on:
// munmap and mremap take any page range), and the rest stays a spare, poisoned as it
// was. (Until 2026-12-04 such a spare was passed over and the request mapped afresh;
// splitting cut the allocator fuzzers' fresh mappings by 12%.)
static struct large_spare take_spare(struct ccache_heap *heap, size_t usable) {
  unsigned best = LARGE_SPARES;
  for (unsigned i = 0; i < heap->large_nspares; i++) {
    size_t n = heap->large_spares[i].size;
    if (n >= usable && (best == LARGE_SPARES || n < heap->large_spares[best].size)) best = i;
  }
  if (best == LARGE_SPARES) return (struct large_spare){0, 0, 0};
  struct large_spare sp = heap->large_spares[best];
  if (sp.size - usable > usable) {
    heap->large_spares[best].start += usable;
    heap->large_spares[best].size -= usable;
    sp.size = usable;
  } else {
    heap->large_spares[best] = heap->large_spares[--heap->large_nspares];
  }
  heap->large_spare_bytes -= sp.size;
  // A spare is poisoned whole (large_free): the block's pages are unpoisoned, the pages
  // past it stay poisoned, so that an overflow into them is reported where a mapping of
  // the block's own size would have ended. (Unpoisoning the whole spare and poisoning
  // the tail again wrote the tail's shadow twice: under ASan the allocator fuzzers spend
  // a sixth of their time in these shadow writes.)
  CCACHE_ASAN_UNPOISON((void *)sp.start, usable);
  return sp;
}

void *large_alloc(struct ccache_heap *heap, size_t size, size_t alignment, bool zeroed) {
  size_t usable = (size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  if (usable < size) {  // overflow
    errno = ENOMEM;
    return NULL;
  }
  // A request of 0 (aligned beyond a page) still gets a page: an entry of size 0 was
  // taken for no block at all (usable size and realloc aborted on it as not ours).
  if (usable == 0) usable = OS_PAGE;
  size_t extra = alignment > OS_PAGE ? alignment : 0;
  size_t map_size = usable + extra;
  if (map_size < usable) {
    errno = ENOMEM;
    return NULL;
  }
  void *m = NULL;
  if (!extra) {  // large_lock: the spare list is shared by every thread
    pthread_mutex_lock(&heap->large_lock);
    struct large_spare sp = take_spare(heap, usable);
    pthread_mutex_unlock(&heap->large_lock);
    if (sp.start) {
      m = (void *)sp.start;
      map_size = sp.size;
      // The OS gives the pages back as zeros; locked pages (mlock) it refuses to, and
      // then they are cleared here (until 2026-12-04 calloc returned the old bytes;
      // found by review).
      if (zeroed && os_release(m, map_size) != 0) memset(m, 0, usable);
      CCACHE_MSAN_POISON(m, map_size);      // a fresh block's bytes are undefined
    }
  }
  if (!m) m = os_map(map_size);
  if (!m) {
    os_count_failure(heap);
    errno = ENOMEM;
    return NULL;
  }
  uintptr_t addr = ((uintptr_t)m + (alignment > OS_PAGE ? alignment - 1 : 0)) &
                   ~(uintptr_t)(alignment > OS_PAGE ? alignment - 1 : 0);
  if (extra && addr == (uintptr_t)m) {
    // The mapping happens to be aligned already: its slack goes back, so that a block at
    // the start of its mapping always has every page past it poisoned (large_free).
    os_unmap((char *)m + usable, extra);
    map_size = usable;
  }
  struct large_entry e = {addr, usable, map_size, (uintptr_t)m};
  pthread_mutex_lock(&heap->large_lock);
  if (reserve_slot(heap) != 0) {
    pthread_mutex_unlock(&heap->large_lock);
    // A spare taken whole keeps its poisoned tail; munmap does not clear the shadow.
    if (map_size > usable) CCACHE_ASAN_UNPOISON((char *)m + usable, map_size - usable);
    os_unmap(m, map_size);
    os_count_failure(heap);
    errno = ENOMEM;
    return NULL;
  }
  heap->large_tombs -= (size_t)insert(heap->large, heap->large_cap, &e);
  heap->large_used++;
  heap->large_count++;
  heap->large_bytes += usable;
  heap->large_mapped += map_size;
  pthread_mutex_unlock(&heap->large_lock);
  return (void *)addr;
}

int large_free(struct ccache_heap *heap, void *ptr) {
  pthread_mutex_lock(&heap->large_lock);
  struct large_entry *e = find(heap, (uintptr_t)ptr);
  if (!e) {
    pthread_mutex_unlock(&heap->large_lock);
    return 0;
  }
  struct large_entry copy = *e;
  e->addr = TOMB;
  heap->large_used--;
  heap->large_tombs++;
  heap->large_count--;
  heap->large_bytes -= copy.size;
  heap->large_mapped -= copy.map_size;
  if (copy.map_size >= LARGE_SPARE_MIN && heap->large_nspares < LARGE_SPARES &&
      heap->large_spare_bytes + copy.map_size <= LARGE_SPARE_BYTES) {
    // Kept as a spare. Poisoned before it is in the list, under the lock: once listed,
    // another thread may take it and unpoison it. A block at the start of its mapping
    // has every page past it poisoned already (the tail of the spare it came from, or
    // none: mremap and fresh mappings hold just the block, see large_alloc); an
    // over-aligned block's margins were never poisoned.
    if (copy.addr == copy.map_start)
      CCACHE_ASAN_POISON((void *)copy.map_start, copy.size);
    else
      CCACHE_ASAN_POISON((void *)copy.map_start, copy.map_size);
    heap->large_spares[heap->large_nspares++] =
        (struct large_spare){copy.map_start, copy.map_size, heap->large_spare_epoch};
    heap->large_spare_bytes += copy.map_size;
    pthread_mutex_unlock(&heap->large_lock);
  } else {
    pthread_mutex_unlock(&heap->large_lock);
    unpoison_tail(&copy);
    os_unmap((void *)copy.map_start, copy.map_size);
  }
  // A program that frees only large blocks still has its idle spares (and caches)
  // reclaimed. Not under large_lock: the scan takes it.
  cpu_cache_maybe_reclaim(heap);
  return 1;
}

size_t large_release_spares(struct ccache_heap *heap, bool idle_only) {
  struct large_spare out[LARGE_SPARES];
  unsigned n = 0;
  // large_lock: the spare list is shared by every thread.
  pthread_mutex_lock(&heap->large_lock);
  for (unsigned i = 0; i < heap->large_nspares;) {
    struct large_spare *sp = &heap->large_spares[i];
    if (idle_only && sp->epoch == heap->large_spare_epoch) {  // freed since the last scan
      i++;
      continue;
    }
    out[n++] = *sp;
    heap->large_spare_bytes -= sp->size;
    *sp = heap->large_spares[--heap->large_nspares];
  }
  if (idle_only) heap->large_spare_epoch++;
  pthread_mutex_unlock(&heap->large_lock);
  size_t bytes = 0;
  for (unsigned i = 0; i < n; i++) {
    // Poisoned while spare; munmap does not clear the shadow (see ccache_heap_destroy).
    CCACHE_ASAN_UNPOISON((void *)out[i].start, out[i].size);
    os_unmap((void *)out[i].start, out[i].size);
    bytes += out[i].size;
  }
  return bytes;
}

int large_resize(struct ccache_heap *heap, void *ptr, size_t size, void **out) {
#if CCACHE_HAVE_TSAN || CCACHE_HAVE_MSAN
  // Their shadow does not move with the pages: the moved block would carry the
  // history (TSan) or definedness (MSan) of whatever was mapped at its new address.
  (void)heap, (void)ptr, (void)size, (void)out;
  return 0;
#else
  size_t usable = (size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
  if (usable < size || size <= CCACHE_MAX_SMALL) return 0;  // the caller's path decides
  pthread_mutex_lock(&heap->large_lock);
  struct large_entry *e = find(heap, (uintptr_t)ptr);
  // Only a block at the start of its mapping: an over-aligned one would lose its
  // alignment. (A block that reused a bigger spare qualifies: its mapping moves whole.)
  if (!e || e->map_start != e->addr) {
    pthread_mutex_unlock(&heap->large_lock);
    return 0;
  }
  struct large_entry old = *e;
  if (usable > old.size && usable <= old.map_size) {
    // Growth that the mapping (a spare bigger than the block) already holds: no
    // syscall. The pages that join the block were the spare's poisoned tail. (Shrinking
    // goes through mremap: ccache_realloc keeps a block that wastes under half.)
    CCACHE_ASAN_UNPOISON((void *)(old.addr + old.size), usable - old.size);
    e->size = usable;
    heap->large_bytes += usable - old.size;
    pthread_mutex_unlock(&heap->large_lock);
    *out = ptr;
    return 1;
  }
  // The table slot for the moved block, before the move: after it, nothing may fail.
  // (The lock is held across the syscall: large blocks are rare and already serialised.)
  if (reserve_slot(heap) != 0) {
    pthread_mutex_unlock(&heap->large_lock);
    os_count_failure(heap);
    errno = ENOMEM;
    *out = NULL;
    return 1;
  }
  // A spare's tail is poisoned, and the shadow stays where the pages were: clean it
  // before they move or go (poisoned again if the OS refuses).
  unpoison_tail(&old);
  void *m = mremap((void *)old.map_start, old.map_size, usable, MREMAP_MAYMOVE);
  if (m == MAP_FAILED) {
    if (old.map_size > old.size)
      CCACHE_ASAN_POISON((void *)(old.addr + old.size), old.map_size - old.size);
    pthread_mutex_unlock(&heap->large_lock);
    os_count_failure(heap);
    errno = ENOMEM;
    *out = NULL;
    return 1;
  }
  find(heap, old.addr)->addr = TOMB;  // reserve_slot may have moved the table
  heap->large_tombs++;
  struct large_entry moved = {(uintptr_t)m, usable, usable, (uintptr_t)m};
  heap->large_tombs -= (size_t)insert(heap->large, heap->large_cap, &moved);
  heap->large_bytes += usable - old.size;
  heap->large_mapped += usable - old.map_size;
  pthread_mutex_unlock(&heap->large_lock);
  *out = m;
  return 1;
#endif
}

size_t large_usable_size(struct ccache_heap *heap, const void *ptr) {
  pthread_mutex_lock(&heap->large_lock);
  struct large_entry *e = find(heap, (uintptr_t)ptr);
  size_t n = e ? e->size : 0;
  pthread_mutex_unlock(&heap->large_lock);
  return n;
}

CCACHE_NO_COVERAGE int large_check(struct ccache_heap *heap) {
  int rc = 0;
  size_t live = 0, tombs = 0;
  uint64_t bytes = 0, mapped = 0, spare_bytes = 0;
  // large_lock: the table and the spares change under it.
  pthread_mutex_lock(&heap->large_lock);
  for (size_t i = 0; i < heap->large_cap; i++) {
    const struct large_entry *e = &heap->large[i];
    if (e->addr == TOMB) tombs++;
    if (e->addr <= TOMB) continue;
    live++;
    bytes += e->size;
    mapped += e->map_size;
    if (!e->size || e->size % OS_PAGE || e->map_start % OS_PAGE || e->addr < e->map_start ||
        e->map_size < e->size || e->addr - e->map_start > e->map_size - e->size)
      FAIL_CHECK("large block %#lx+%zu lies outside its mapping %#lx+%zu", (unsigned long)e->addr,
                 e->size, (unsigned long)e->map_start, e->map_size);
    if (find(heap, e->addr) != e)
      FAIL_CHECK("large block %#lx is not found by its address", (unsigned long)e->addr);
  }
  if (live != heap->large_used || live != heap->large_count || tombs != heap->large_tombs ||
      bytes != heap->large_bytes || mapped != heap->large_mapped)
    FAIL_CHECK("large table: %zu blocks, %zu tombstones, %lu B in %lu B of mappings; counted "
               "%zu used, %lu count, %zu tombstones, %lu B, %lu B", live, tombs,
               (unsigned long)bytes, (unsigned long)mapped, heap->large_used,
               (unsigned long)heap->large_count, heap->large_tombs,
               (unsigned long)heap->large_bytes, (unsigned long)heap->large_mapped);
  if (heap->large_nspares > LARGE_SPARES)
    FAIL_CHECK("%u large spares (at most %d)", heap->large_nspares, LARGE_SPARES);
  for (unsigned i = 0; i < heap->large_nspares && i < LARGE_SPARES; i++) {
    const struct large_spare *sp = &heap->large_spares[i];
    if (!sp->start || sp->start % OS_PAGE || !sp->size || sp->size % OS_PAGE)
      FAIL_CHECK("large spare %u: %#lx+%zu", i, (unsigned long)sp->start, sp->size);
    spare_bytes += sp->size;
  }
  if (spare_bytes != heap->large_spare_bytes || spare_bytes > LARGE_SPARE_BYTES)
    FAIL_CHECK("large spares hold %lu B, counted %lu B (at most %zu)", (unsigned long)spare_bytes,
               (unsigned long)heap->large_spare_bytes, (size_t)LARGE_SPARE_BYTES);
  pthread_mutex_unlock(&heap->large_lock);
  return rc;
}
