// internal.h: the ccache allocator's data structures and their invariants. Read this
// before any other file of allocator/.
//
// Memory layout of one heap
// -------------------------
//
//   reservation (reserve_bytes of address space, PROT_NONE until committed)
//   +--------+--------+--------+--------+-----------------------------------+
//   | span A | span B | free   | span C |   not yet committed ...           |
//   +--------+--------+--------+--------+-----------------------------------+
//   ^ base   pages of 8 KiB; committed in 2 MiB chunks from the front
//
//   page map: span_of_page[(addr - base) >> 13] -> struct span * (out of band)
//
//   span (class c): pages cut into blocks of class_size(c), nothing else in them:
//   +---------+---------+---------+-- ... --+---------+-------+
//   | block 0 | block 1 | block 2 |         | block n | tail  |
//   +---------+---------+---------+-- ... --+---------+-------+
//   span metadata (out of band, in the metadata arena):
//     state[n]    one byte per block: BLOCK_ALLOCATED, BLOCK_CACHED or BLOCK_CENTRAL
//
//   CPU caches: one region per CPU (cpu_id or mm_cid), stride bytes apart
//   RSEQ mode:  | stopped | {count, cap} x 96 classes | slots of class 0 | class 1 | ...
//   CAS mode:   | stopped | {top 16 B, cap} x 96      | 16-byte slots of class 0 | ...
//
//   large blocks (> 256 KiB, or alignment > 8 KiB): their own mmap, found in a hash
//   table by address.
//
// Where a block can be
// --------------------
//   handed out     state[i] == BLOCK_ALLOCATED
//   in a CPU cache state[i] == BLOCK_CACHED, its address in a slot below a count
//                  (or taken by a thread between a central batch and a cache push)
//   in central     state[i] == BLOCK_CENTRAL (span->nfree counts them)
// Every block of a span is in exactly one of these places. A free checks and flips
// the state byte first (an atomic exchange ALLOCATED -> CACHED), so a double free or
// the free of an interior or foreign pointer is reported before it reaches any list.
//
// Locks (each with its reason at the declaration); order, outermost first:
//   heap->drain_lock -> central_lock[stripe] -> heap->page_lock ; large_lock alone;
//   heap->meta_lock is a leaf. fork() takes all of them (atfork handlers).
#ifndef CCACHE_ALLOCATOR_INTERNAL_H_
#define CCACHE_ALLOCATOR_INTERNAL_H_

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "allocator/ccache.h"
#include "allocator/size_class.h"
#include "rseq/rseq.h"

#define PAGE_SHIFT 13
#define PAGE_SIZE ((size_t)1 << PAGE_SHIFT)
#define CHUNK_SIZE ((size_t)2 << 20)  // commit granularity
#define CACHELINE 64

// A block's state byte: where it is (see "Where a block can be").
enum { BLOCK_CENTRAL = 0, BLOCK_ALLOCATED = 1, BLOCK_CACHED = 2 };
enum span_kind { SPAN_FREE = 0, SPAN_SMALL = 1 };

struct span {
  uintptr_t start;    // first byte
  size_t npages;
  enum span_kind kind;
  bool released;      // SPAN_FREE only: its pages were given back with madvise
  unsigned cls;       // SPAN_SMALL only
  uint32_t obj_size;
  uint32_t nobjs;
  uint64_t magic;     // ceil(2^40 / obj_size): index = (offset * magic) >> 40, exact here
  uint32_t nfree;     // blocks in BLOCK_CENTRAL state
  uint32_t cursor;    // where the next central scan for a BLOCK_CENTRAL byte starts
  uint8_t *state;     // [nobjs], BLOCK_*; written with relaxed atomics
  struct span *next, *prev;  // central list of its class, or a page-heap free list
  struct span *meta_next;    // the metadata arena's recycle list
};

// The central list of one class. Guarded by heap->central_lock[cls % CENTRAL_STRIPES]:
// refills and drains of many CPUs meet here. Striped, not one lock per class, so that
// fork handlers (and TSan, which tracks at most 64 held locks) hold few locks.
struct central {
  struct span *nonempty;  // spans with nfree > 0
  uint64_t free_blocks;   // sum of nfree
  uint64_t nspans, total_blocks;
};

#define CENTRAL_STRIPES 8

#define PAGE_HEAP_BUCKETS 64  // free runs of 1..63 pages by size; larger ones in [0]

struct large_entry {
  uintptr_t addr;  // 0: empty, 1: tombstone
  size_t size;     // usable bytes
  size_t map_size; // bytes mapped
  uintptr_t map_start;
};

struct ccache_heap {
  struct rseq_percpu_mode mode;
  const char *why_cas;

  // --- the reservation and the page map
  uintptr_t base;
  size_t reserve_bytes;
  size_t committed;            // bytes of the reservation committed, from base
  size_t frontier;             // bytes of the reservation ever given to spans (<= committed)
  struct span **span_of_page;  // [reserve_bytes >> PAGE_SHIFT], relaxed atomic access
  size_t pagemap_bytes;

  // --- the page heap. Guards free runs, the committed frontier, span creation and
  // the page map's writes: spans of every class come from one address range.
  pthread_mutex_t page_lock;
  struct span *free_runs[PAGE_HEAP_BUCKETS];
  uint64_t free_pages;         // in free runs, not released
  uint64_t released_pages;     // in free runs, released
  uint64_t released_total;     // bytes madvised away so far
  size_t release_threshold;

  // --- central lists
  struct central central[CCACHE_NUM_CLASSES];
  // Guards central[c] for every c with c % CENTRAL_STRIPES == stripe (see struct central).
  struct {
    pthread_mutex_t lock;
  } __attribute__((aligned(CACHELINE))) central_lock[CENTRAL_STRIPES];

  // --- CPU caches
  int ncpus;                   // regions (rseq_index_count)
  size_t stride;               // bytes per region
  char *regions;
  size_t regions_bytes;
  long count_off[CCACHE_NUM_CLASSES];  // RSEQ: {count, cap}; CAS: {top(16), cap} offset
  long slots_off[CCACHE_NUM_CLASSES];
  uint32_t capacity[CCACHE_NUM_CLASSES];
  uint32_t batch[CCACHE_NUM_CLASSES];
  // Serializes remote drains: one drainer owns a stopped region at a time.
  pthread_mutex_t drain_lock;

  // --- large blocks. Guards the table: large allocations are rare and slow anyway.
  pthread_mutex_t large_lock;
  struct large_entry *large;
  size_t large_cap, large_used, large_tombs;
  uint64_t large_count, large_bytes, large_mapped;

  // --- metadata arena (span structs and their arrays). Guards the bump pointer and
  // the recycle lists; a leaf lock.
  pthread_mutex_t meta_lock;
  char *meta_cur, *meta_end;
  char *meta_chunks;           // chain of mapped chunks, for destroy
  uint64_t meta_bytes;
  struct span *meta_free[CCACHE_NUM_CLASSES + 1];  // [cls] small spans, [NUM] free-run spans

  // --- statistics; relaxed atomics, bumped on slow paths only
  _Atomic uint64_t pop_aborts, push_aborts, refills, drains, os_failures;

  struct ccache_heap *all_next;  // the list of heaps, for fork handlers
};

// os.c
void *os_reserve(size_t bytes);
int os_commit(void *addr, size_t bytes);
void os_release(void *addr, size_t bytes);  // madvise(DONTNEED): contents become zero
void *os_map(size_t bytes);
void os_unmap(void *addr, size_t bytes);
void os_count_failure(struct ccache_heap *heap);

// meta.c (in page_heap.c): metadata arena
struct span *meta_span_alloc(struct ccache_heap *heap, unsigned cls, uint32_t nobjs);
void meta_span_free(struct ccache_heap *heap, struct span *s);

// page_heap.c
size_t span_pages_for_class(unsigned cls);
// A small span of class cls (page_lock taken inside); NULL when the OS refuses.
struct span *page_heap_alloc_small(struct ccache_heap *heap, unsigned cls);
// Give an entirely free small span back (page_lock taken inside).
void page_heap_free_small(struct ccache_heap *heap, struct span *s);
static inline struct span *span_of(const struct ccache_heap *heap, uintptr_t addr) {
  uintptr_t off = addr - heap->base;
  // Relaxed: committed only grows, and an address below it was handed out after it grew.
  if (off >= __atomic_load_n(&heap->committed, __ATOMIC_RELAXED)) return NULL;
  // Relaxed: an entry is set under page_lock before any block of its span is handed
  // out; a reader holding such a block got it through a path that synchronized.
  return __atomic_load_n(&heap->span_of_page[off >> PAGE_SHIFT], __ATOMIC_RELAXED);
}
static inline uint32_t span_index(const struct span *s, uintptr_t addr) {
  return (uint32_t)(((uint64_t)(addr - s->start) * s->magic) >> 40);
}
// True when addr is the first byte of a block of small span s; *index is that block.
static inline bool span_block_start(const struct span *s, uintptr_t addr, uint32_t *index) {
  uint32_t i = span_index(s, addr);
  *index = i;
  return i < s->nobjs && s->start + (uintptr_t)i * s->obj_size == addr;
}

// central.c
void central_init(struct ccache_heap *heap);
// Up to n free blocks of class cls into out; returns how many (0: out of memory).
int central_take(struct ccache_heap *heap, unsigned cls, void **out, int n);
void central_give(struct ccache_heap *heap, unsigned cls, void *const *blocks, int n);

// cpu_cache.c
int cpu_cache_init(struct ccache_heap *heap, size_t cpu_cache_bytes);
void cpu_cache_destroy(struct ccache_heap *heap);
void *cpu_cache_pop(struct ccache_heap *heap, unsigned cls);   // NULL: empty or stopped
bool cpu_cache_push(struct ccache_heap *heap, unsigned cls, void *block);  // false: full
uint64_t cpu_cache_count(const struct ccache_heap *heap, int cpu, unsigned cls);
int cpu_cache_drain(struct ccache_heap *heap, int cpu);
// Up to n blocks of class cls from the calling thread's own cache; returns how many.
int cpu_cache_pop_batch(struct ccache_heap *heap, unsigned cls, void **out, int n);

// large.c
int large_init(struct ccache_heap *heap);
void large_destroy(struct ccache_heap *heap);
void *large_alloc(struct ccache_heap *heap, size_t size, size_t alignment);
// Frees ptr when it is a large block of this heap: 1; 0 when it is not one.
int large_free(struct ccache_heap *heap, void *ptr);
size_t large_usable_size(struct ccache_heap *heap, const void *ptr);  // 0: not large

static inline pthread_mutex_t *central_lock_of(struct ccache_heap *heap, unsigned cls) {
  return &heap->central_lock[cls % CENTRAL_STRIPES].lock;
}

// heap.c
__attribute__((noreturn, cold)) void ccache_report_bad_free(const struct ccache_heap *heap,
                                                            const void *ptr, const char *what);

#endif  // CCACHE_ALLOCATOR_INTERNAL_H_
