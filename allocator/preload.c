// preload.c: the process-wide malloc replacement. Built into libccache_malloc.so (for
// LD_PRELOAD) and into //allocator:malloc_static (linked into a binary, it replaces
// the whole malloc family). Options, read once from the environment (see ccache.h):
//   CCACHE_MODE=rseq|cas|auto  CCACHE_INDEX=cpu|cid  CCACHE_CPU_CACHE_BYTES=N
//   CCACHE_RESERVE_GB=N        CCACHE_RECLAIM_MS=N (idle caches drained after N ms)
//   CCACHE_RELEASE_BYTES=N (free pages kept before they go back to the OS)
//   CCACHE_STATS=1 (print the heap's stats at exit)
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "allocator/ccache.h"
#include "allocator/internal.h"

// Acquire/release: the heap is fully built before another thread can see the pointer.
static struct ccache_heap *_Atomic process_heap;
// Guards the one-time creation of the process heap.
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int in_init;  // creation may call malloc (e.g. pthread_atfork)

// Allocations made while the heap is being created come from here; they are never
// freed (free() recognizes and ignores them). Each is preceded by its size.
static _Alignas(16) char bootstrap[256 * 1024];
static size_t bootstrap_used;  // guarded by init_lock (only the creating thread gets here)

static inline bool in_bootstrap(const void *p) {
  return (uintptr_t)p - (uintptr_t)bootstrap < sizeof bootstrap;
}

static void *bootstrap_alloc(size_t size) {
  size_t need = (size + 16 + 15) & ~(size_t)15;
  if (size > sizeof bootstrap || bootstrap_used + need > sizeof bootstrap) {
    errno = ENOMEM;
    return NULL;
  }
  char *p = bootstrap + bootstrap_used;
  bootstrap_used += need;
  *(size_t *)p = size;
  return p + 16;
}

extern char **environ;

// getenv, also before libc has set up environ (a sanitizer runtime or an ELF
// constructor may call malloc that early): then from /proc/self/environ, read into a
// static buffer, without allocating.
static const char *env_get(const char *name) {
  if (environ) return getenv(name);
  static char buf[32768];
  static ssize_t len = -1;
  if (len < 0) {
    int fd = open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
    len = fd >= 0 ? read(fd, buf, sizeof buf - 1) : 0;
    if (len < 0) len = 0;
    buf[len] = 0;
    if (fd >= 0) close(fd);
  }
  size_t n = strlen(name);
  for (char *p = buf; p < buf + len; p += strlen(p) + 1)
    if (!strncmp(p, name, n) && p[n] == '=') return p + n + 1;
  return NULL;
}

static size_t env_size(const char *name, size_t fallback) {
  const char *v = env_get(name);
  if (!v || !*v) return fallback;
  char *end;
  unsigned long long n = strtoull(v, &end, 0);
  return *end ? fallback : (size_t)n;
}

// A copy of stderr taken at start: programs such as sort(1) close fd 2 before exit.
static int stats_fd = -1;

static void print_stats_at_exit(void) {
  struct ccache_heap *h = atomic_load_explicit(&process_heap, memory_order_acquire);
  if (!h) return;
  static struct ccache_stats st;  // large: not on the stack of an exiting thread
  ccache_get_stats(h, &st);
  char msg[512];
  int n = snprintf(msg, sizeof msg,
                   "ccache: process heap (%s mode, %s index): in use %lu B, CPU caches %lu B, "
                   "central %lu B, OS %lu B, released %lu B, large %lu; aborts pop %lu push %lu; "
                   "refills %lu drains %lu; idle caches reclaimed %lu\n",
                   rseq_mode_name(st.mode), rseq_index_name(st.index),
                   (unsigned long)st.in_use_bytes, (unsigned long)st.cached_bytes,
                   (unsigned long)st.central_bytes, (unsigned long)st.os_bytes,
                   (unsigned long)st.released_bytes, (unsigned long)st.large_count,
                   (unsigned long)st.pop_aborts, (unsigned long)st.push_aborts,
                   (unsigned long)st.refills, (unsigned long)st.drains,
                   (unsigned long)st.reclaimed_regions);
  if (n > 0 && write(stats_fd, msg, (size_t)n) < 0) {
  }
}

static struct ccache_heap *create_process_heap(void) {
  struct ccache_options o = {0};
  const char *mode_env = env_get("CCACHE_MODE"), *index_env = env_get("CCACHE_INDEX");
  int mode = rseq_mode_parse(mode_env ? mode_env : "auto");
  int index = rseq_index_parse(index_env ? index_env : "cpu");
  o.mode = mode < 0 ? RSEQ_MODE_AUTO : (enum rseq_mode)mode;
  o.index = index < 0 ? RSEQ_INDEX_CPU_ID : (enum rseq_index)index;
  o.cpu_cache_bytes = env_size("CCACHE_CPU_CACHE_BYTES", 0);
  o.reserve_bytes = env_size("CCACHE_RESERVE_GB", 64) << 30;
  o.reclaim_ms = (long)env_size("CCACHE_RECLAIM_MS", 1000);
  o.release_threshold = env_size("CCACHE_RELEASE_BYTES", 0);
  struct ccache_heap *h = ccache_heap_create(&o);
  if (!h && o.mode == RSEQ_MODE_RSEQ) {
    // Explicit rseq that this machine cannot give: say so once, and run in CAS mode
    // rather than fail every allocation of the program.
    static const char msg[] = "ccache: CCACHE_MODE=rseq but rseq is unavailable; using CAS mode\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    o.mode = RSEQ_MODE_CAS;
    h = ccache_heap_create(&o);
  }
  if (!h) {
    static const char msg[] = "ccache: cannot create the process heap (out of address space?)\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    abort();
  }
  const char *stats = env_get("CCACHE_STATS");
  if (stats && *stats == '1') {
    stats_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
    atexit(print_stats_at_exit);
  }
  return h;
}

static struct ccache_heap *heap_slow(void) {
  if (in_init) return NULL;  // a malloc from inside the creation: bootstrap memory
  pthread_mutex_lock(&init_lock);
  struct ccache_heap *h = atomic_load_explicit(&process_heap, memory_order_acquire);
  if (!h) {
    in_init = 1;
    h = create_process_heap();
    ccache_ignore_frees(h, bootstrap, sizeof bootstrap);
    in_init = 0;
    atomic_store_explicit(&process_heap, h, memory_order_release);
  }
  pthread_mutex_unlock(&init_lock);
  return h;
}

static inline struct ccache_heap *heap(void) {
  struct ccache_heap *h = atomic_load_explicit(&process_heap, memory_order_acquire);
  return __builtin_expect(h != NULL, 1) ? h : heap_slow();
}

struct ccache_heap *ccache_process_heap(void) { return heap(); }

// --- the malloc family

// The first calls, before the heap exists (or from inside its creation).
__attribute__((noinline)) static void *malloc_first(size_t size) {
  struct ccache_heap *h = heap_slow();
  return h ? ccache_malloc(h, size) : bootstrap_alloc(size);
}

__attribute__((noinline)) static void free_first(void *ptr) {
  // No heap yet: nothing but bootstrap memory (ignored) or NULL can be freed.
  if (ptr && !in_bootstrap(ptr)) ccache_free(heap(), ptr);
}

// Both leave with a tail call: no frame, no saved register on the way to the heap.
CCACHE_HOT_ALIGN void *malloc(size_t size) {
  struct ccache_heap *h = atomic_load_explicit(&process_heap, memory_order_acquire);
  if (__builtin_expect(h == NULL, 0)) return malloc_first(size);
  if (__builtin_expect(size > 1024, 0)) return ccache_malloc_big(h, size);
  return ccache_malloc_class(h, ccache_small_class_table[(size + 15) >> 4]);
}

CCACHE_HOT_ALIGN void free(void *ptr) {
  // Bootstrap memory and NULL fall outside the heap's reservation: ccache_free sends
  // them off its fast path, and ignores them (ccache_ignore_frees).
  struct ccache_heap *h = atomic_load_explicit(&process_heap, memory_order_acquire);
  if (__builtin_expect(h == NULL, 0)) return free_first(ptr);
  ccache_free_local(h, ptr);
}

void free_sized(void *ptr, size_t size) {
  if (!ptr || in_bootstrap(ptr)) return;
  ccache_free_sized(heap(), ptr, size);
}

void free_aligned_sized(void *ptr, size_t alignment, size_t size) {
  (void)alignment;
  free_sized(ptr, size);
}

void *calloc(size_t n, size_t size) {
  struct ccache_heap *h = heap();
  if (h) return ccache_calloc(h, n, size);
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return bootstrap_alloc(total);  // static memory: already zero
}

void *realloc(void *ptr, size_t size) {
  if (ptr && in_bootstrap(ptr)) {
    void *q = malloc(size);
    size_t old = *(size_t *)((char *)ptr - 16);
    if (q) memcpy(q, ptr, old < size ? old : size);
    return q;
  }
  struct ccache_heap *h = heap();
  return h ? ccache_realloc(h, ptr, size) : bootstrap_alloc(size);
}

void *reallocarray(void *ptr, size_t n, size_t size) {
  struct ccache_heap *h = heap();
  if (h && !(ptr && in_bootstrap(ptr))) return ccache_reallocarray(h, ptr, n, size);
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(ptr, total);
}

void *aligned_alloc(size_t alignment, size_t size) {
  struct ccache_heap *h = heap();
  return h ? ccache_aligned_alloc(h, alignment, size) : bootstrap_alloc(size);
}

void *memalign(size_t alignment, size_t size) { return aligned_alloc(alignment, size); }

int posix_memalign(void **out, size_t alignment, size_t size) {
  struct ccache_heap *h = heap();
  if (h) return ccache_posix_memalign(h, out, alignment, size);
  void *p = bootstrap_alloc(size);  // 16-byte aligned: enough this early
  if (!p || alignment > 16) return ENOMEM;
  *out = p;
  return 0;
}

// Page-aligned requests from inside the heap's creation cannot be served from the
// (16-byte aligned) bootstrap memory: ENOMEM.
void *valloc(size_t size) {
  struct ccache_heap *h = heap();
  if (h) return ccache_valloc(h, size);
  errno = ENOMEM;
  return NULL;
}

void *pvalloc(size_t size) {
  struct ccache_heap *h = heap();
  if (h) return ccache_pvalloc(h, size);
  errno = ENOMEM;
  return NULL;
}

// glibc's malloc_trim: 1 when memory went back to the OS. `pad` (glibc: bytes to leave
// at the top of the main arena) has no meaning here: ccache gives back all it can.
int malloc_trim(size_t pad) {
  (void)pad;
  struct ccache_heap *h = atomic_load_explicit(&process_heap, memory_order_acquire);
  return h && ccache_trim(h) > 0;
}

size_t malloc_usable_size(void *ptr) {
  if (!ptr) return 0;
  if (in_bootstrap(ptr)) return *(size_t *)((char *)ptr - 16);
  return ccache_malloc_usable_size(heap(), ptr);
}

// ---------------------------------------------------------------------------------
// glibc's malloc introspection and tuning, answered for the ccache heap (a program
// that asked glibc's arenas would read near-zero numbers about an allocator that does
// not serve it). The fields keep glibc's meanings where ccache has the thing:
//   arena     bytes committed from the OS other than large blocks' mappings
//   ordblks   free blocks: in CPU caches and central lists, plus large spares
//   hblks     large blocks (each its own mapping), hblkhd their bytes
//   uordblks  small blocks in use (class sizes); large ones are in hblkhd only
//   fordblks  bytes free in CPU caches, central lists and committed free pages
//   keepcost  what malloc_trim could give back at least: free pages and large spares
// smblks, usmblks and fsmblks are 0 (no fastbins; glibc too keeps usmblks 0).
static struct mallinfo2 info_of(const struct ccache_stats *st) {
  struct mallinfo2 m = {0};
  uint64_t free_blocks = st->large_spares;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++)
    free_blocks += st->classes[c].cached_cpu + st->classes[c].central;
  uint64_t large = st->large_bytes + st->large_spare_bytes;
  m.arena = st->os_bytes > large ? st->os_bytes - large : 0;
  m.ordblks = free_blocks;
  m.hblks = st->large_count;
  m.hblkhd = st->large_bytes;
  m.uordblks = st->in_use_bytes - st->large_bytes;
  m.fordblks = st->cached_bytes + st->central_bytes + st->page_heap_free_bytes;
  m.keepcost = st->page_heap_free_bytes + st->large_spare_bytes;
  return m;
}

// A snapshot of the heap's statistics in pages of its own (they are ~9 KiB: too big for
// a small thread stack; from the heap they would count themselves; a static buffer
// would need a lock, and a lock held by another thread at fork would hang the child's
// call). NULL when there is no heap yet or no memory; release with stats_put.
static struct ccache_stats *stats_get(void) {
  struct ccache_heap *h = heap();
  if (!h) return NULL;
  struct ccache_stats *st =
      mmap(NULL, sizeof *st, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (st == MAP_FAILED) return NULL;
  ccache_get_stats(h, st);
  return st;
}

static void stats_put(struct ccache_stats *st) { munmap(st, sizeof *st); }

// Each of these called from inside the heap's creation (no heap yet), or when the
// snapshot's pages are refused, answers as an empty heap, or fails with ENOMEM.
struct mallinfo2 mallinfo2(void) {
  struct ccache_stats *st = stats_get();
  if (!st) return (struct mallinfo2){0};
  struct mallinfo2 m = info_of(st);
  stats_put(st);
  return m;
}

// The old interface, with glibc's int fields (truncated as glibc truncates them).
struct mallinfo mallinfo(void) {
  struct mallinfo2 m2 = mallinfo2();
  struct mallinfo m = {(int)m2.arena,   (int)m2.ordblks,  (int)m2.smblks,   (int)m2.hblks,
                       (int)m2.hblkhd,  (int)m2.usmblks,  (int)m2.fsmblks,  (int)m2.uordblks,
                       (int)m2.fordblks, (int)m2.keepcost};
  return m;
}

// glibc prints its arenas to stderr; this prints the heap, with glibc's two headline
// lines ("system bytes", "in use bytes") first.
void malloc_stats(void) {
  struct ccache_stats *st = stats_get();
  if (!st) return;
  fprintf(stderr,
          "ccache heap (%s mode, %s index):\n"
          "system bytes     = %10lu\n"
          "in use bytes     = %10lu\n"
          "CPU cache bytes  = %10lu\n"
          "central bytes    = %10lu\n"
          "free page bytes  = %10lu\n"
          "released bytes   = %10lu (total so far)\n"
          "large blocks     = %10lu (%lu B; %lu spares, %lu B)\n",
          rseq_mode_name(st->mode), rseq_index_name(st->index), (unsigned long)st->os_bytes,
          (unsigned long)st->in_use_bytes, (unsigned long)st->cached_bytes,
          (unsigned long)st->central_bytes, (unsigned long)st->page_heap_free_bytes,
          (unsigned long)st->released_bytes, (unsigned long)st->large_count,
          (unsigned long)st->large_bytes, (unsigned long)st->large_spares,
          (unsigned long)st->large_spare_bytes);
  stats_put(st);
}

// As glibc's: options must be 0 (else EINVAL); XML on fp, one <size> per class.
int malloc_info(int options, FILE *fp) {
  if (options != 0 || !fp) {
    errno = EINVAL;
    return -1;
  }
  struct ccache_stats *st = stats_get();
  if (!st) {
    errno = ENOMEM;
    return -1;
  }
  fprintf(fp, "<malloc version=\"ccache-1\">\n<heap mode=\"%s\" index=\"%s\">\n<sizes>\n",
          rseq_mode_name(st->mode), rseq_index_name(st->index));
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    const struct ccache_class_stats *cs = &st->classes[c];
    if (!cs->in_use && !cs->cached_cpu && !cs->central && !cs->spans) continue;
    fprintf(fp, "  <size class=\"%u\" bytes=\"%zu\" in_use=\"%lu\" cached=\"%lu\" "
                "central=\"%lu\" spans=\"%lu\"/>\n", c, cs->size, (unsigned long)cs->in_use,
            (unsigned long)cs->cached_cpu, (unsigned long)cs->central, (unsigned long)cs->spans);
  }
  fprintf(fp,
          "</sizes>\n<total type=\"in_use\" count=\"-\" size=\"%lu\"/>\n"
          "<total type=\"cpu_cache\" size=\"%lu\"/>\n<total type=\"central\" size=\"%lu\"/>\n"
          "<total type=\"mmap\" count=\"%lu\" size=\"%lu\"/>\n"
          "<total type=\"spare\" count=\"%lu\" size=\"%lu\"/>\n"
          "<system type=\"current\" size=\"%lu\"/>\n<system type=\"released\" size=\"%lu\"/>\n"
          "</heap>\n</malloc>\n",
          (unsigned long)st->in_use_bytes, (unsigned long)st->cached_bytes,
          (unsigned long)st->central_bytes, (unsigned long)st->large_count,
          (unsigned long)st->large_bytes, (unsigned long)st->large_spares,
          (unsigned long)st->large_spare_bytes, (unsigned long)st->os_bytes,
          (unsigned long)st->released_bytes);
  stats_put(st);
  return 0;
}

// glibc's mallopt: 1 when the setting took effect, 0 when not. M_TRIM_THRESHOLD is the
// heap's release threshold (free pages kept before madvise). ccache has no arenas,
// fastbins, top pad, mmap threshold, check action or perturbation: those parameters,
// and unknown ones, return 0 and change nothing.
int mallopt(int param, int value) {
  struct ccache_heap *h = heap();
  if (h && param == M_TRIM_THRESHOLD && value >= 0) {
    ccache_set_release_threshold(h, (size_t)value);
    return 1;
  }
  return 0;
}
