// os.c: every request to the OS goes through here, so tests can make it fail.
#include <errno.h>
#include <stdatomic.h>
#include <sys/mman.h>

#include "allocator/internal.h"

// Tests: the next n mappings fail. Relaxed: a counter consulted by whoever maps next.
static _Atomic long fail_next;

void ccache_test_fail_next_os_maps(long n) {
  atomic_store_explicit(&fail_next, n, memory_order_relaxed);
}

static bool injected_failure(void) {
  long n = atomic_load_explicit(&fail_next, memory_order_relaxed);
  while (n > 0) {
    if (atomic_compare_exchange_weak_explicit(&fail_next, &n, n - 1, memory_order_relaxed,
                                              memory_order_relaxed)) {
      errno = ENOMEM;
      return true;
    }
  }
  return false;
}

void *os_reserve(size_t bytes) {
  if (injected_failure()) return NULL;
  void *p = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

// Tests: the next aligned reservation starts one OS page past an `align` boundary, as
// a kernel may place it (before 6.7, Linux aligned no anonymous mapping beyond the
// page; 6.7 and later align mappings of 2 MiB multiples to 2 MiB, which hid this).
// Relaxed: a flag consulted by whoever reserves next.
static _Atomic int misalign_next;

void ccache_test_misalign_next_reservation(void) {
  atomic_store_explicit(&misalign_next, 1, memory_order_relaxed);
}

void *os_reserve_aligned(size_t bytes, size_t align) {
  if (injected_failure()) return NULL;
  size_t slack = 2 * align;  // room to round up, after the test's offset too
  if (bytes + slack < bytes) return NULL;
  char *p = mmap(NULL, bytes + slack, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return NULL;
  char *end = p + bytes + slack;
  char *start = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
  if (atomic_exchange_explicit(&misalign_next, 0, memory_order_relaxed)) {
    // The test's kernel: the mapping starts one page past a boundary; the next boundary
    // is the start.
    munmap(p, (size_t)(start - p) + OS_PAGE);
    p = start + OS_PAGE;
    start += align;
  }
  if (start > p) munmap(p, (size_t)(start - p));
  if (end > start + bytes) munmap(start + bytes, (size_t)(end - (start + bytes)));
  return start;
}

int os_commit(void *addr, size_t bytes) {
  if (injected_failure()) return -1;
  return mprotect(addr, bytes, PROT_READ | PROT_WRITE);
}

int os_release(void *addr, size_t bytes) { return madvise(addr, bytes, MADV_DONTNEED); }

void *os_map(size_t bytes) {
  if (injected_failure()) return NULL;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void os_unmap(void *addr, size_t bytes) { munmap(addr, bytes); }

void os_count_failure(struct ccache_heap *heap) {
  atomic_fetch_add_explicit(&heap->os_failures, 1, memory_order_relaxed);
}
