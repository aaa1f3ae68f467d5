// init.c: heap creation and destruction, and the fork handlers of every heap.
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "allocator/internal.h"
#include "sanitizers/sanitizers.h"

// Guards the list of live heaps: heap_create/destroy and the fork handlers walk it.
static pthread_mutex_t heaps_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ccache_heap *heaps;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

// fork() while another thread holds one of our locks would leave the child with a lock
// nobody will release: take them all (in lock order) before fork, release after.
static void lock_all(struct ccache_heap *h) {
  pthread_mutex_lock(&h->reclaim_lock);
  pthread_mutex_lock(&h->drain_lock);
  for (unsigned s = 0; s < CENTRAL_STRIPES; s++) pthread_mutex_lock(&h->central_lock[s].lock);
  pthread_mutex_lock(&h->page_lock);
  pthread_mutex_lock(&h->large_lock);
  pthread_mutex_lock(&h->meta_lock);
}

static void unlock_all(struct ccache_heap *h) {
  pthread_mutex_unlock(&h->meta_lock);
  pthread_mutex_unlock(&h->large_lock);
  pthread_mutex_unlock(&h->page_lock);
  for (unsigned s = CENTRAL_STRIPES; s-- > 0;) pthread_mutex_unlock(&h->central_lock[s].lock);
  pthread_mutex_unlock(&h->drain_lock);
  pthread_mutex_unlock(&h->reclaim_lock);
}

static void before_fork(void) {
  pthread_mutex_lock(&heaps_lock);
  for (struct ccache_heap *h = heaps; h; h = h->all_next) lock_all(h);
}

static void after_fork(void) {
  for (struct ccache_heap *h = heaps; h; h = h->all_next) unlock_all(h);
  pthread_mutex_unlock(&heaps_lock);
}

pthread_mutex_t *ccache_debug_heaps_lock(void) { return &heaps_lock; }

static void install_atfork(void) { pthread_atfork(before_fork, after_fork, after_fork); }

// The key of the free cookies: random, with bit 63 set so that no cookie is 0 (the
// word a handed-out block starts with) or a user-space pointer.
static uint64_t cookie_secret(const void *heap) {
  uint64_t k = 0;
  if (getrandom(&k, sizeof k, GRND_NONBLOCK) != (ssize_t)sizeof k) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    k = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)heap ^
        ((uint64_t)getpid() << 17);
    k *= 0x9E3779B97F4A7C15ULL;
  }
  return k | (1ULL << 63);
}

struct ccache_heap *ccache_heap_create(const struct ccache_options *options) {
  struct ccache_options o = {RSEQ_MODE_AUTO, RSEQ_INDEX_CPU_ID, 0, 0, 0, 0};
  if (options) o = *options;
  if ((unsigned)o.mode > RSEQ_MODE_CAS || (unsigned)o.index > RSEQ_INDEX_MM_CID) {
    errno = EINVAL;
    return NULL;
  }
  if (o.cpu_cache_bytes == 0) o.cpu_cache_bytes = (size_t)1 << 20;
  if (o.reserve_bytes == 0) o.reserve_bytes = (size_t)8 << 30;
  if (o.release_threshold == 0) o.release_threshold = (size_t)4 << 20;
  o.reserve_bytes = (o.reserve_bytes + CHUNK_SIZE - 1) & ~(CHUNK_SIZE - 1);
  if (o.reserve_bytes < CHUNK_SIZE || o.reserve_bytes > ((size_t)1 << 46) || o.reclaim_ms < 0) {
    errno = EINVAL;
    return NULL;
  }
  struct rseq_percpu_mode mode;
  const char *why = "";
  if (rseq_resolve_mode(o.mode, o.index, &mode, &why) != 0) return NULL;

  struct ccache_heap *heap = os_map(sizeof *heap);
  if (!heap) {
    errno = ENOMEM;
    return NULL;
  }
  memset(heap, 0, sizeof *heap);
  heap->mode = mode;
  heap->index_off = rseq_index_offset(mode.index);
  heap->why_cas = mode.mode == RSEQ_MODE_CAS ? why : "";
  heap->release_threshold = o.release_threshold;
  heap->reclaim_interval_ns = (uint64_t)o.reclaim_ms * 1000000u;
  heap->cookie_secret = cookie_secret(heap);
  class_info_init(heap);
  pthread_mutex_init(&heap->page_lock, NULL);
  pthread_mutex_init(&heap->drain_lock, NULL);
  pthread_mutex_init(&heap->reclaim_lock, NULL);
  pthread_mutex_init(&heap->large_lock, NULL);
  pthread_mutex_init(&heap->meta_lock, NULL);
  heap->reserve_bytes = o.reserve_bytes;
  heap->pagemap_bytes = (o.reserve_bytes >> PAGE_SHIFT) * sizeof(struct span *);
  // The span pages, and the power-of-two classes aligned to their size within them,
  // are aligned only as far as the base is: a base on a 2 MiB boundary (what 6.7 and
  // later kernels gave on their own; older ones gave any 4 KiB page, and
  // aligned_alloc(8192) then returned blocks 4 KiB off, until 2026-12-04: found by
  // review), which also keeps huge pages possible.
  void *base = os_reserve_aligned(o.reserve_bytes, HEAP_BASE_ALIGN);
  // The page maps: read-write, untouched pages cost nothing.
  void *pagemap = base ? os_reserve(2 * heap->pagemap_bytes) : NULL;
  if (!base || !pagemap || os_commit(pagemap, 2 * heap->pagemap_bytes) != 0) {
    if (base) os_unmap(base, o.reserve_bytes);
    if (pagemap) os_unmap(pagemap, 2 * heap->pagemap_bytes);
    os_unmap(heap, sizeof *heap);
    errno = ENOMEM;
    return NULL;
  }
  heap->base = (uintptr_t)base;
  heap->span_of_page = pagemap;
  heap->class_of_page = (uint64_t *)((char *)pagemap + heap->pagemap_bytes);
  // The CPU caches first: the transfer caches are sized by their batches.
  if (cpu_cache_init(heap, o.cpu_cache_bytes) != 0 || central_init(heap) != 0 ||
      large_init(heap) != 0) {
    ccache_heap_destroy(heap);
    errno = ENOMEM;
    return NULL;
  }
  pthread_once(&atfork_once, install_atfork);
  pthread_mutex_lock(&heaps_lock);
  heap->all_next = heaps;
  heaps = heap;
  pthread_mutex_unlock(&heaps_lock);
  return heap;
}

void ccache_heap_destroy(struct ccache_heap *heap) {
  if (!heap) return;
  pthread_mutex_lock(&heaps_lock);
  for (struct ccache_heap **p = &heaps; *p; p = &(*p)->all_next) {
    if (*p == heap) {
      *p = heap->all_next;
      break;
    }
  }
  pthread_mutex_unlock(&heaps_lock);
  cpu_cache_destroy(heap);
  central_destroy(heap);
  large_destroy(heap);
  if (heap->span_of_page) os_unmap(heap->span_of_page, 2 * heap->pagemap_bytes);
  if (heap->base) {
    // Blocks in caches and central lists are ASan-poisoned; munmap does not clear that
    // shadow, and the next mapping there (a thread stack, say) would inherit it.
    CCACHE_ASAN_UNPOISON((void *)heap->base, heap->committed);
    os_unmap((void *)heap->base, heap->reserve_bytes);
  }
  for (char *c = heap->meta_chunks; c;) {
    char *prev = ((char **)c)[0];
    os_unmap(c, ((size_t *)c)[1]);
    c = prev;
  }
  os_unmap(heap, sizeof *heap);
}
