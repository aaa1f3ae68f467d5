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
//   two page maps, indexed by (addr - base) >> 13, out of band:
//     span_of_page[p]  struct span *   (slow paths: central lists, page heap, checks)
//     class_of_page[p] u64: the span's start offset from base | (class + 1), 0 when
//                      the page holds no small span, or blocks of it not carved yet.
//                      The free fast path needs only this word: the class, and the
//                      block-start check against the span.
//
//   span (class c): pages cut into blocks of class_size(c), nothing else in them:
//   +---------+---------+---------+-- ... --+---------+-------+
//   | block 0 | block 1 | block 2 |         | block n | tail  |
//   +---------+---------+---------+-- ... --+---------+-------+
//
//   a free block (in a CPU cache, the transfer cache or its span's free list):
//   +---------------------------+---------------------------+-- ...
//   | word 0: cookie(address)   | word 1: span free-list link|
//   +---------------------------+---------------------------+-- ...
//   cookie(a) = a ^ heap->cookie_secret (a random per-heap key with bit 63 set, so no
//   cookie is 0 or a user-space pointer). Hand-out clears word 0; free checks it and
//   writes it. Both touch only the block's own first line, which the CPU that frees or
//   allocates the block is about to use anyway: nothing on the fast path is shared
//   between CPUs.
//
//   CPU caches: one region per CPU (cpu_id or mm_cid), each a per-CPU slab
//   RSEQ mode:  rseq/slab.h's layout: | spare | misses | {cur, begin, end} x 96 | slots |
//               regions are RSEQ_SLAB_BYTES apart
//   CAS mode:   | spare | misses | {top 16 B, cap} x 96 | 16-byte slots of class 0 | ...
//               regions are `stride` apart
//
//   large blocks (> 256 KiB, or alignment > 8 KiB): their own mmap, found in a hash
//   table by address.
//
// Where a small block can be
// --------------------------
//   handed out        word 0 is anything but cookie(address) (the user owns the block)
//   in a CPU cache    word 0 == cookie; its address in a slab slot below cur
//                     (or held by a thread between a central batch and a cache push)
//   in central        word 0 == cookie; in its class's transfer cache, or on its
//                     span's free list (span->nfree counts them)
//   not carved yet    a new span's blocks are carved lazily, in address order, when a
//                     refill needs them (block i < span->carve: carved). The first
//                     block taken from a page initializes the page: its blocks get
//                     their cookies and the page its class_of_page word. Pages
//                     further on were never touched and hold anything.
// Every block of a span is in exactly one of these places. The free fast path reads a
// class_of_page word of 0 for pages not initialized and leaves for a slow path that
// reports the pointer; a free of an initialized block never taken finds its cookie and
// is reported as a double free.
//
// The free checks, in order: the page holds a small span (class_of_page), the address
// is a block start in it (offset divisible by the class size, below the last block),
// and word 0 is not the cookie (a double free). Only a user who stores exactly
// cookie(address) at the start of a live block defeats the last check; the key is
// random per heap. Not caught: two threads freeing the same block at the same instant
// (both may read word 0 before either writes it). A double free by one thread, or by
// threads already ordered by the program (the second free happens after the first), is
// always caught, as long as no malloc handed the block out again in between.
//
// Locks (each with its reason at the declaration); order, outermost first:
//   heap->reclaim_lock -> heap->drain_lock -> central_lock[stripe] -> heap->page_lock;
//   heap->reclaim_lock -> large_lock (the scan ages the spares); large_lock nests in
//   no other lock but these two and the fork handlers'; heap->meta_lock is a leaf.
//   fork() takes all of them (atfork handlers).
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

// The OS's page: what mmap aligns to, and large blocks are rounded up to.
#define OS_PAGE 4096
#define PAGE_SHIFT 13
#define PAGE_SIZE ((size_t)1 << PAGE_SHIFT)
// The heap reservation's alignment (init.c): a huge page, a multiple of PAGE_SIZE.
#define HEAP_BASE_ALIGN ((size_t)2 << 20)
#define CHUNK_SIZE ((size_t)2 << 20)  // commit granularity
#define CACHELINE 64

enum span_kind { SPAN_FREE = 0, SPAN_SMALL = 1 };

struct span {
  uintptr_t start;    // first byte
  size_t npages;
  enum span_kind kind;
  bool released;      // SPAN_FREE only: its pages were given back with madvise
  unsigned cls;       // SPAN_SMALL only
  uint32_t obj_size;
  uint32_t nobjs;
  uint32_t nfree;     // blocks on `free`
  // Blocks [0, carve) have been carved (taken out of the span at least once). Only
  // grows; read without the lock by the free slow path (relaxed).
  uint32_t carve;
  // Pages [0, carved_pages) are initialized: every block starting in them has been
  // taken or holds its cookie, and their class_of_page word is set. The rest of the
  // span was never touched.
  uint32_t carved_pages;
  void *free;         // free blocks in this span, linked through their word 1
  struct span *next, *prev;  // central list of its class, or a page-heap free list
  struct span *meta_next;    // the metadata arena's recycle list
};

// What the free fast path needs of a class, indexed by class + 1 (entry 0 belongs to
// no class: every check against it fails). 8 bytes, so that an entry is one scaled
// index away; the divisibility constants are in their own table (class_div_magic).
struct class_info {
  uint32_t blocks_bytes;  // nobjs * size in a span: every block start lies below
  uint32_t size;
};

// The central list of one class. Guarded by heap->central_lock[cls % CENTRAL_STRIPES]:
// refills and drains of many CPUs meet here. Striped, not one lock per class, so that
// fork handlers (and TSan, which tracks at most 64 held locks) hold few locks.
struct central {
  void **transfer;         // whole batches moved between CPU caches, no span touched
  uint32_t ntransfer, transfer_cap;
  struct span *nonempty;   // spans with a free or an uncarved block
  uint64_t free_blocks;    // ntransfer + sum over spans of nfree + (nobjs - carve)
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

// Freed large mappings kept for the next large request (spares), as every general
// allocator keeps some freed pages: at most LARGE_SPARES of them and LARGE_SPARE_BYTES
// in all, so a heap holds at most that much more than its live blocks need. (The byte
// bound is the memory bound; the count only bounds take_spare's scan. It was 8 until
// 2026-12-04: the allocator fuzzers' streams, which free up to tens of large blocks at
// once, then unmapped and mapped them again every stream; 32 made 58% fewer mmaps and
// 65% fewer munmaps over the same inputs.)
#define LARGE_SPARES 32
#define LARGE_SPARE_BYTES ((size_t)16 << 20)
struct large_spare {
  uintptr_t start;
  size_t size;
  uint64_t epoch;  // heap->large_spare_epoch when it was freed (the idle reclaim ages it)
};

// Region header words (both modes): [0] spare, [1] misses (slow-path events, for the
// idle reclaim). Sections never touch them.
#define REGION_MISSES 1

struct ccache_heap {
  // --- read by the fast paths, written only at creation
  struct rseq_percpu_mode mode;
  long index_off;              // byte offset of the index field in an rseq area
  int ncpus;                   // regions (rseq_index_count)
  // ncpus in RSEQ mode, 0 in CAS mode: the fast paths' one range check of the index
  // also sends every CAS-mode call to its slow path.
  uint32_t rseq_ncpus;
  char *regions;               // RSEQ: RSEQ_SLAB_BYTES apart; CAS: `stride` apart
  uintptr_t base;              // the reservation
  size_t reserve_bytes;
  uint64_t *class_of_page;     // [reserve_bytes >> PAGE_SHIFT], relaxed atomic access
  uint64_t cookie_secret;      // bit 63 set
  struct class_info classes[CCACHE_NUM_CLASSES + 1];
  // 1 + UINT64_MAX / size: off % size == 0 iff off * M <= M - 1 (exact for off < 2^32;
  // spans are far smaller). Indexed like classes.
  uint64_t class_div_magic[CCACHE_NUM_CLASSES + 1];

  const char *why_cas;
  // Frees of this range are ignored (the malloc replacement's bootstrap memory); set
  // once, right after creation.
  uintptr_t ignore_start;
  size_t ignore_bytes;

  // --- the reservation and the page map
  size_t committed;            // bytes of the reservation committed, from base
  size_t frontier;             // bytes of the reservation ever given to spans (<= committed)
  struct span **span_of_page;  // [reserve_bytes >> PAGE_SHIFT], relaxed atomic access
  size_t pagemap_bytes;        // of each of the two maps

  // --- the page heap. Guards free runs, the committed frontier, span creation and
  // span_of_page's writes: spans of every class come from one address range. (A page's
  // class_of_page word is set under its class's central lock, when the page is
  // initialized, and cleared here when the span goes back.)
  pthread_mutex_t page_lock;
  struct span *free_runs[PAGE_HEAP_BUCKETS];
  uint64_t free_pages;         // in free runs, not released
  uint64_t released_pages;     // in free runs, released
  uint64_t released_total;     // bytes madvised away so far
  size_t release_threshold;

  // --- central lists
  struct central central[CCACHE_NUM_CLASSES];
  void **transfer_mem;
  size_t transfer_bytes;
  // Guards central[c] for every c with c % CENTRAL_STRIPES == stripe (see struct central).
  struct {
    pthread_mutex_t lock;
  } __attribute__((aligned(CACHELINE))) central_lock[CENTRAL_STRIPES];

  // --- CPU caches
  size_t stride;               // bytes per region
  size_t regions_bytes;
  long count_off[CCACHE_NUM_CLASSES];  // CAS: {top(16), cap} offset
  long slots_off[CCACHE_NUM_CLASSES];  // CAS: 16-byte slots
  uint16_t slab_begin[CCACHE_NUM_CLASSES], slab_end[CCACHE_NUM_CLASSES];  // RSEQ
  uint32_t capacity[CCACHE_NUM_CLASSES];
  uint32_t batch[CCACHE_NUM_CLASSES];
  // Serializes remote drains: one drainer owns a stopped region at a time.
  pthread_mutex_t drain_lock;

  // --- idle reclaim: regions whose caches did not change over a whole interval are
  // drained. Guards the signatures and the count: one scanner at a time (the slow
  // paths only try it, and do not wait).
  pthread_mutex_t reclaim_lock;
  uint64_t reclaim_interval_ns;  // 0: only ccache_reclaim_idle() scans
  _Atomic uint64_t next_reclaim_ns;
  uint64_t *reclaim_sig;         // [ncpus] each region's activity signature at the last scan
  uint64_t reclaimed_regions;    // guarded by reclaim_lock

  // --- large blocks. Guards the table: large allocations are rare and slow anyway.
  pthread_mutex_t large_lock;
  struct large_entry *large;
  size_t large_cap, large_used, large_tombs;
  uint64_t large_count, large_bytes, large_mapped;
  struct large_spare large_spares[LARGE_SPARES];  // [0, large_nspares): ASan-poisoned
  unsigned large_nspares;
  uint64_t large_spare_bytes;
  uint64_t large_spare_epoch;  // idle-reclaim scans so far (under large_lock)

  // --- metadata arena (span structs). Guards the bump pointer and the recycle list;
  // a leaf lock.
  pthread_mutex_t meta_lock;
  char *meta_cur, *meta_end;
  char *meta_chunks;           // chain of mapped chunks, for destroy
  uint64_t meta_bytes;
  struct span *meta_free;

  // --- statistics; relaxed atomics, bumped on slow paths only
  _Atomic uint64_t pop_aborts, push_aborts, refills, drains, os_failures;

  struct ccache_heap *all_next;  // the list of heaps, for fork handlers
};

// ---------------------------------------------------------------------------------
// Words of free blocks. Free blocks are ASan-poisoned and their contents are not the
// user's, so these accessors are not instrumented by ASan or MSan (MSan: word 0 of a
// live block may never have been written by the user; its value is still defined to
// us). Relaxed atomics: a block's words are only written by the thread that owns the
// block (freeing it, handing it out, or holding it under the central lock); TSan sees
// the ordering through the slab's acquire/release edges and the locks.
// Nor coverage: a one-line leaf, called (not inlined: the attributes differ) for every
// block the fuzzers' heap walk visits.
#if defined(__clang__)
#define CCACHE_BLOCK_ACCESS __attribute__((no_sanitize("address", "memory", "coverage")))
#else  // GCC has no MemorySanitizer, and warns about the name
#define CCACHE_BLOCK_ACCESS __attribute__((no_sanitize("address")))
#endif

CCACHE_BLOCK_ACCESS static inline uint64_t block_word(const void *block, int w) {
  return __atomic_load_n((const uint64_t *)block + w, __ATOMIC_RELAXED);
}
CCACHE_BLOCK_ACCESS static inline void block_set_word(void *block, int w, uint64_t v) {
  __atomic_store_n((uint64_t *)block + w, v, __ATOMIC_RELAXED);
}
static inline uint64_t block_cookie(const struct ccache_heap *heap, const void *block) {
  return (uint64_t)(uintptr_t)block ^ heap->cookie_secret;
}
static inline bool block_is_free(const struct ccache_heap *heap, const void *block) {
  return block_word(block, 0) == block_cookie(heap, block);
}

// The class of a small block at `addr` (offset `off` from base) when it is the start
// of a block of a small span; -1 otherwise. Reads one class_of_page word and the
// class table: no span struct, no lock.
// Always inlined: the heap walk's copy (CCACHE_NO_COVERAGE) then has no coverage hooks.
__attribute__((always_inline)) static inline int block_class(const struct ccache_heap *heap,
                                                             uintptr_t off) {
  // Relaxed: a page's word is set (under the class's central lock) before any block of
  // the page is handed out; a caller holding such a block got it through a path that
  // synchronized.
  uint64_t e = __atomic_load_n(&heap->class_of_page[off >> PAGE_SHIFT], __ATOMIC_RELAXED);
  unsigned c1 = (unsigned)(e & 0xff);
  uint64_t rel = off - (e & ~(uint64_t)(PAGE_SIZE - 1));
  uint64_t m = heap->class_div_magic[c1];
  if (__builtin_expect(rel >= heap->classes[c1].blocks_bytes, 0)) return -1;
  if (__builtin_expect(rel * m > m - 1, 0)) return -1;
  // Entry 0 has blocks_bytes 0: no offset passes its check. Telling the compiler saves
  // the fast path a test and a branch.
  if (c1 == 0) __builtin_unreachable();
  return (int)c1 - 1;
}

// os.c
void *os_reserve(size_t bytes);
// A PROT_NONE reservation whose start is a multiple of `align` (a power of two, at
// least 4096): mmap promises only the OS page. NULL when the OS refuses.
void *os_reserve_aligned(size_t bytes, size_t align);
int os_commit(void *addr, size_t bytes);
// madvise(DONTNEED): contents become zero, and 0; -1 when the OS refused (locked pages:
// mlock, mlockall), and the contents are as they were.
int os_release(void *addr, size_t bytes);
void *os_map(size_t bytes);
void os_unmap(void *addr, size_t bytes);
void os_count_failure(struct ccache_heap *heap);

// meta.c (in page_heap.c): metadata arena
struct span *meta_span_alloc(struct ccache_heap *heap);
void meta_span_free(struct ccache_heap *heap, struct span *s);

// page_heap.c
size_t span_pages_for_class(unsigned cls);
void class_info_init(struct ccache_heap *heap);
// A small span of class cls (page_lock taken inside), none of its blocks carved and
// its class_of_page words 0; NULL when the OS refuses.
struct span *page_heap_alloc_small(struct ccache_heap *heap, unsigned cls);
// Give an entirely free small span back (page_lock taken inside).
void page_heap_free_small(struct ccache_heap *heap, struct span *s);
// Every free page not yet given back to the OS is given back now, whatever the
// threshold (page_lock taken inside; page_heap_released_total counts them).
void page_heap_release_all(struct ccache_heap *heap);
// Bytes madvised away so far (page_lock taken inside).
uint64_t page_heap_released_total(struct ccache_heap *heap);
// ccache_check_heap's part, with page_lock held: problems found (each on stderr).
int page_heap_check_runs(struct ccache_heap *heap);
// The class_of_page word of page `page` (span s): set once all its blocks are carved.
void page_heap_set_class_page(struct ccache_heap *heap, const struct span *s, size_t page);
static inline struct span *span_of(const struct ccache_heap *heap, uintptr_t addr) {
  uintptr_t off = addr - heap->base;
  // Relaxed: committed only grows, and an address below it was handed out after it grew.
  if (off >= __atomic_load_n(&heap->committed, __ATOMIC_RELAXED)) return NULL;
  // Relaxed: an entry is set under page_lock before any block of its span is handed
  // out; a reader holding such a block got it through a path that synchronized.
  return __atomic_load_n(&heap->span_of_page[off >> PAGE_SHIFT], __ATOMIC_RELAXED);
}

// central.c
int central_init(struct ccache_heap *heap);
void central_destroy(struct ccache_heap *heap);
// Up to n free blocks of class cls into out; returns how many (0: out of memory).
int central_take(struct ccache_heap *heap, unsigned cls, void **out, int n);
void central_give(struct ccache_heap *heap, unsigned cls, void *const *blocks, int n);
void central_flush_transfer(struct ccache_heap *heap);
// Every entirely free span of every class goes back to the page heap (the class's
// usual reserve of one span's worth of free blocks too).
void central_release_free_spans(struct ccache_heap *heap);

// cpu_cache.c
int cpu_cache_init(struct ccache_heap *heap, size_t cpu_cache_bytes);
void cpu_cache_destroy(struct ccache_heap *heap);
// The slow path of the RSEQ fast paths' index read (registration, fake CPUs); aborts
// the process when the rseq area is broken. Sets *area.
int cpu_cache_read_index(const struct ccache_heap *heap, struct rseq_abi **area);
__attribute__((noreturn, cold)) void cpu_cache_bad_index(const struct ccache_heap *heap);
// CAS mode: one block from / into the calling thread's cache.
void *cpu_cache_pop_cas(struct ccache_heap *heap, unsigned cls);          // NULL: empty
bool cpu_cache_push_cas(struct ccache_heap *heap, unsigned cls, void *block);  // false: full
// Both modes: the cache of cls is empty (refill: a block, or NULL when out of memory)
// or full (overflow: takes `block` too).
void *cpu_cache_refill(struct ccache_heap *heap, unsigned cls);
void cpu_cache_overflow(struct ccache_heap *heap, unsigned cls, void *block);
// One block into the calling thread's cache by the batch section (the free slow path);
// false when the cache is full or stopped.
bool cpu_cache_push_one(struct ccache_heap *heap, unsigned cls, void *block);
uint64_t cpu_cache_count(const struct ccache_heap *heap, int cpu, unsigned cls);
// Blocks in region `cpu`, all classes (a racy snapshot: the sections there may be
// changing it).
uint64_t cpu_cache_region_count(const struct ccache_heap *heap, int cpu);
int cpu_cache_items(const struct ccache_heap *heap, int cpu, unsigned cls, void **out);
int cpu_cache_drain(struct ccache_heap *heap, int cpu);
void cpu_cache_maybe_reclaim(struct ccache_heap *heap);

// large.c
int large_init(struct ccache_heap *heap);
void large_destroy(struct ccache_heap *heap);
// `zeroed`: the block must read as zeros (calloc); a fresh mapping does, a spare is
// given back to the OS first.
void *large_alloc(struct ccache_heap *heap, size_t size, size_t alignment, bool zeroed);
// realloc of a large block to a large size by moving its pages (mremap), not its bytes:
// 1 with *out the block (or NULL, errno ENOMEM, the old block untouched); 0 when ptr
// is not a large block that can move so (the caller copies).
int large_resize(struct ccache_heap *heap, void *ptr, size_t size, void **out);
// Frees ptr when it is a large block of this heap: 1; 0 when it is not one.
int large_free(struct ccache_heap *heap, void *ptr);
size_t large_usable_size(struct ccache_heap *heap, const void *ptr);  // 0: not large
// Unmaps the spares: all of them, or (`idle_only`, the idle reclaim's scan) those freed
// before the previous scan and not reused since. Returns the bytes unmapped.
size_t large_release_spares(struct ccache_heap *heap, bool idle_only);
// ccache_check_heap's part for large blocks: every live block lies within its mapping,
// and the table's and the spares' counts and byte totals match what they hold. 0 when
// they do, else -1 and a message on stderr. Needs quiescence.
int large_check(struct ccache_heap *heap);

// ccache_check_heap and its parts: report one broken invariant (a line on stderr) and
// set the checker's local `rc` to -1.
#define FAIL_CHECK(...)                                 \
  do {                                                  \
    fprintf(stderr, "ccache_check_heap: " __VA_ARGS__); \
    fputc('\n', stderr);                                \
    rc = -1;                                            \
  } while (0)

static inline pthread_mutex_t *central_lock_of(struct ccache_heap *heap, unsigned cls) {
  return &heap->central_lock[cls % CENTRAL_STRIPES].lock;
}

// heap.c
// The class of a block that starts at `off` in a small span and was carved, whatever
// its page's class_of_page word says yet; -1 otherwise. Slow paths only.
int block_class_carved(const struct ccache_heap *heap, uintptr_t off);
__attribute__((noreturn, cold)) void ccache_report_bad_free(const struct ccache_heap *heap,
                                                            const void *ptr, const char *what);
void ccache_free_rejected(struct ccache_heap *heap, void *ptr, const char *what)
    __attribute__((visibility("hidden")));
void ccache_free_slow(struct ccache_heap *heap, void *ptr) __attribute__((visibility("hidden")));
// ccache_free under a name the malloc replacement (preload.c) calls directly, not
// through the PLT of libccache_malloc.so.
void ccache_free_local(struct ccache_heap *heap, void *ptr) __attribute__((visibility("hidden")));

// The fast path's functions (malloc, free, ccache_malloc_class, ccache_free) start on a
// cache line: each then spans as few lines (and 32-byte fetch blocks) as its length
// allows, wherever the link puts it. Measured 2026-12-04: relinking the library with a
// version script moved ccache_malloc_class from a 128-byte boundary to one of 32 bytes
// (three lines instead of two), and the 32 B malloc+free pair's fastest run went from
// 7.0 to 8.2 ns.
#define CCACHE_HOT_ALIGN __attribute__((aligned(64)))
// ccache_malloc's two halves: a block of class cls (where the malloc section is), and
// sizes over 1 KiB. The malloc replacement looks the small classes up itself.
void *ccache_malloc_class(struct ccache_heap *heap, unsigned long cls)
    __attribute__((visibility("hidden")));
void *ccache_malloc_big(struct ccache_heap *heap, size_t size) __attribute__((visibility("hidden")));
// The malloc replacement: frees of [start, start + bytes) are ignored, not reported.
void ccache_ignore_frees(struct ccache_heap *heap, const void *start, size_t bytes);

// TEST ONLY: the lock of the process's list of heaps (init.c), so that
// fork_locks_test can hold it across a fork like every other lock.
pthread_mutex_t *ccache_debug_heaps_lock(void);

#endif  // CCACHE_ALLOCATOR_INTERNAL_H_
