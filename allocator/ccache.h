// ccache.h: the ccache allocator. A malloc whose fast path keeps freed blocks in
// per-CPU caches ("ccaches"), pushed and popped inside rseq critical sections, with a
// CAS mode (atomics only) as the reference. See internal.h for the memory layout.
//
// Heaps are instances: one process can hold an RSEQ heap and a CAS heap side by side.
// The process-wide malloc replacement (libccache_malloc.so for LD_PRELOAD, or the
// static //allocator:malloc_static) is one more heap, configured from the environment:
//   CCACHE_MODE=rseq|cas|auto   (default auto)
//   CCACHE_INDEX=cpu|cid        (default cpu)
//   CCACHE_CPU_CACHE_BYTES=N    (per-CPU cache target, default 1 MiB)
//   CCACHE_RESERVE_GB=N         (address space reserved for small blocks, default 64)
//   CCACHE_RECLAIM_MS=N         (idle CPU caches are drained, and idle large spares
//                                unmapped, after N ms, default 1000;
//                                0 turns the reclaim off)
//
// Errors: an OS refusal returns NULL with errno ENOMEM (the heap keeps working);
// calloc overflow: NULL/ENOMEM; a bad alignment: EINVAL. Freeing a pointer the heap
// never handed out, or freeing it twice, is reported on stderr with the address and
// the process is aborted, in both modes (internal.h says what cannot be caught).
#ifndef CCACHE_ALLOCATOR_CCACHE_H_
#define CCACHE_ALLOCATOR_CCACHE_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "allocator/size_class.h"
#include "rseq/rseq.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ccache_options {
  enum rseq_mode mode;     // RSEQ, CAS or AUTO
  enum rseq_index index;   // cpu_id or mm_cid
  size_t cpu_cache_bytes;  // per-CPU cache target (0: 1 MiB); sets each class's capacity
  size_t reserve_bytes;    // address space for small blocks (0: 8 GiB)
  size_t release_threshold;  // free span bytes kept before madvise (0: 4 MiB)
  // Idle reclaim: a CPU (or mm_cid) cache that has not changed for this long is drained
  // back to the central lists. 0: never on its own (ccache_reclaim_idle() still works;
  // the default for heap instances, whose tests replay exactly); > 0: checked from the
  // slow paths at this interval. The process heap uses CCACHE_RECLAIM_MS (1000).
  long reclaim_ms;
};

struct ccache_heap;

// NULL with errno: EINVAL (bad options), ENOSYS/EOPNOTSUPP (RSEQ requested but not
// available), ENOMEM.
struct ccache_heap *ccache_heap_create(const struct ccache_options *options);
// Returns every byte to the OS. Blocks still allocated from it become invalid.
void ccache_heap_destroy(struct ccache_heap *heap);
enum rseq_mode ccache_heap_mode(const struct ccache_heap *heap);
enum rseq_index ccache_heap_index(const struct ccache_heap *heap);
const char *ccache_heap_mode_reason(const struct ccache_heap *heap);  // why CAS ("" if RSEQ)

void *ccache_malloc(struct ccache_heap *heap, size_t size);
void ccache_free(struct ccache_heap *heap, void *ptr);
// Sized free: `size` must be the size asked for (anything up to the usable size); a
// larger size is reported like an invalid free.
void ccache_free_sized(struct ccache_heap *heap, void *ptr, size_t size);
void *ccache_calloc(struct ccache_heap *heap, size_t n, size_t size);
void *ccache_realloc(struct ccache_heap *heap, void *ptr, size_t size);
// As glibc's memalign and aligned_alloc: alignment up to 16 is malloc's, above
// SIZE_MAX / 2 + 1 EINVAL, any other rounded up to a power of two; size need not be a
// multiple of it.
void *ccache_aligned_alloc(struct ccache_heap *heap, size_t alignment, size_t size);
// 0 or EINVAL (alignment not a power of two multiple of sizeof(void *)) or ENOMEM.
int ccache_posix_memalign(struct ccache_heap *heap, void **out, size_t alignment, size_t size);
void *ccache_memalign(struct ccache_heap *heap, size_t alignment, size_t size);
// reallocarray(3), valloc(3) and pvalloc(3) as glibc has them (pages of 4 KiB).
void *ccache_reallocarray(struct ccache_heap *heap, void *ptr, size_t n, size_t size);
void *ccache_valloc(struct ccache_heap *heap, size_t size);
void *ccache_pvalloc(struct ccache_heap *heap, size_t size);
size_t ccache_malloc_usable_size(struct ccache_heap *heap, const void *ptr);
// True when ptr is a live block of this heap (no report, no abort).
bool ccache_owns(struct ccache_heap *heap, const void *ptr);

// Take back CPU `cpu`'s cache (every class) into the central lists. RSEQ mode fences
// that CPU (membarrier RSEQ) before touching its cache (all CPUs for the mm_cid index).
// 0, or -1 with errno EINVAL (cpu out of range) or the fence's errno.
int ccache_drain_cpu(struct ccache_heap *heap, int cpu);
int ccache_drain_all(struct ccache_heap *heap);
// One idle-reclaim scan: drains every CPU (or mm_cid) cache that holds blocks and has
// not changed since the previous scan (a pop, push or miss there changes it), and
// unmaps every large spare freed before the previous scan and not reused since. Returns
// how many caches were drained. The first scan only records what it sees.
int ccache_reclaim_idle(struct ccache_heap *heap);
// Gives back to the OS what the heap holds free, as glibc's malloc_trim does: drains
// every CPU cache and the transfer caches, returns every entirely free span to the
// page heap, unmaps the large spares and releases every free page (madvise), whatever
// release_threshold says. Blocks in use are not touched. Returns the bytes given back
// (0: nothing was free). The next allocations fault their pages in again.
size_t ccache_trim(struct ccache_heap *heap);

struct ccache_class_stats {
  size_t size;          // block size
  uint64_t in_use;      // blocks handed out and not freed
  uint64_t cached_cpu;  // blocks in CPU caches, all CPUs
  uint64_t central;     // free blocks in the central lists
  uint64_t spans;       // spans of this class
  uint64_t span_bytes;  // bytes in those spans
};

struct ccache_stats {
  enum rseq_mode mode;
  enum rseq_index index;
  struct ccache_class_stats classes[CCACHE_NUM_CLASSES];
  int ncpus;                  // entries in cpu_cached_bytes (at most 1024 reported)
  uint64_t cpu_cached_bytes[1024];
  uint64_t in_use_bytes;      // small blocks handed out (class sizes) + large blocks
  uint64_t cached_bytes;      // in CPU caches
  uint64_t central_bytes;     // in central lists
  uint64_t span_bytes;        // in spans of every class
  uint64_t page_heap_free_bytes;  // committed, free pages not yet released
  uint64_t os_bytes;          // committed from the OS now (spans, free pages, large, metadata)
  uint64_t released_bytes;    // returned to the OS with madvise, total so far
  uint64_t large_count, large_bytes;
  uint64_t large_spares, large_spare_bytes;  // freed large mappings kept for reuse (in os_bytes)
  // The fast-path sections of this heap: how often they aborted and fell through.
  uint64_t pop_aborts, push_aborts;
  uint64_t refills, drains;   // batches moved between CPU caches and central lists
  uint64_t os_failures;       // OS mappings refused (ENOMEM returned)
  uint64_t reclaimed_regions; // idle CPU caches drained by the reclaim
};

// The free-page bytes kept before the page heap gives pages back with madvise (the
// release_threshold option, which this replaces; here 0 means give back every free run
// at once). mallopt(M_TRIM_THRESHOLD) of the malloc replacement sets it.
void ccache_set_release_threshold(struct ccache_heap *heap, size_t bytes);

// A consistent snapshot needs quiescence; concurrent use gives approximate numbers.
void ccache_get_stats(struct ccache_heap *heap, struct ccache_stats *out);
// Checks the heap's internal invariants (counts, span states, page map); 0 when they
// hold, else -1 and a message on stderr. Needs quiescence. For tests and fuzzers.
int ccache_check_heap(struct ccache_heap *heap);

// Tests: make the next n OS mappings (commits, large blocks, metadata) fail as if
// the OS refused memory. Process-wide.
void ccache_test_fail_next_os_maps(long n);
// Tests: the next heap's reservation starts one 4 KiB page past a 2 MiB boundary before
// the heap aligns it, as kernels before 6.7 could place it. Process-wide, one use.
void ccache_test_misalign_next_reservation(void);

// The process-wide heap (the malloc replacement's), created on first use.
struct ccache_heap *ccache_process_heap(void);

#ifdef __cplusplus
}
#endif

#endif  // CCACHE_ALLOCATOR_CCACHE_H_
