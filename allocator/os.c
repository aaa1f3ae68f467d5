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

int os_commit(void *addr, size_t bytes) {
  if (injected_failure()) return -1;
  return mprotect(addr, bytes, PROT_READ | PROT_WRITE);
}

void os_release(void *addr, size_t bytes) { madvise(addr, bytes, MADV_DONTNEED); }

void *os_map(size_t bytes) {
  if (injected_failure()) return NULL;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void os_unmap(void *addr, size_t bytes) { munmap(addr, bytes); }

void os_count_failure(struct ccache_heap *heap) {
  atomic_fetch_add_explicit(&heap->os_failures, 1, memory_order_relaxed);
}
