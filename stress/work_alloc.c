// work_alloc: a mixed random workload on one ccache heap (the mode and index of the
// job): malloc, calloc, realloc and free of sizes from 1 B to 256 KiB, blocks handed
// to other workers through an exchange and freed there, and now and then a remote
// drain of a random CPU's cache. Every block carries its size and a check word and is
// filled with a pattern, verified when it is freed (and by realloc). The CPU caches
// are small (8 KiB per CPU: two to a few dozen blocks a class), so refills and
// overflows, and so the batch sections, are frequent. Checks after every round:
// ccache_check_heap; at the end, with every block freed and the caches drained, no
// byte is in use.
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"
#include "stress/job.h"

static const char *const sections[] = {"ccache_malloc_pop", "ccache_free_push", "ccache_refill_push",
                                       "ccache_overflow_pop", NULL};

#define SLOTS 64     // live blocks per worker
#define EXCHANGE 64  // blocks in flight between workers

struct header {  // at the start of every block (sizes >= 16)
  uint64_t size;
  uint64_t check;  // size ^ address ^ salt; the fill byte is its low byte
};
static const uint64_t salt = 0x5ca1ab1e0ddba11ULL;

static struct ccache_heap *heap;
static _Atomic(struct header *) exchange[EXCHANGE];
static _Atomic long mallocs, frees, reallocs, cross_frees, drains, drain_errors;  // relaxed: totals

static uint64_t check_of(const struct header *h, uint64_t size) {
  return size ^ (uint64_t)(uintptr_t)h ^ salt;
}

static void fill(struct header *h, uint64_t size) {
  h->size = size;
  h->check = check_of(h, size);
  memset(h + 1, (int)(h->check & 0xff), size - sizeof *h);
}

// The block is whole: header and every byte of the pattern.
static void verify(const struct header *h, const char *what) {
  CHECK(h->check == check_of(h, h->size), "%s: block %p: header overwritten (size %lu)", what,
        (const void *)h, (unsigned long)h->size);
  const unsigned char *p = (const unsigned char *)(h + 1);
  unsigned char b = (unsigned char)(h->check & 0xff);
  for (uint64_t i = 0; i < h->size - sizeof *h; i++)
    CHECK(p[i] == b, "%s: block %p size %lu: byte %lu is %#x, not %#x", what, (const void *)h,
          (unsigned long)h->size, (unsigned long)i, p[i], b);
  CHECK(ccache_malloc_usable_size(heap, h) >= h->size, "%s: block %p usable size below %lu", what,
        (const void *)h, (unsigned long)h->size);
}

static uint64_t random_size(struct worker *w) {
  uint64_t r = test_rand(&w->rng) % 1000;
  uint64_t x = test_rand(&w->rng);
  if (r < 700) return 16 + x % 256;      // small
  if (r < 950) return 16 + x % 4096;     // medium
  if (r < 995) return 16 + x % 65536;    // big classes
  return 16 + x % (256 * 1024);          // large blocks
}

static void release(struct header *h) {
  verify(h, "free");
  ccache_free(heap, h);
  atomic_fetch_add_explicit(&frees, 1, memory_order_relaxed);
}

static void setup(int nworkers) {
  (void)nworkers;
  struct ccache_options o = {.mode = job_mode.mode, .index = job_mode.index,
                             .cpu_cache_bytes = 8 * 1024};
  heap = ccache_heap_create(&o);
  CHECK(heap != NULL, "ccache_heap_create");
}

static void op(struct worker *w) {
  if (!w->priv) CHECK((w->priv = calloc(SLOTS, sizeof(struct header *))) != NULL);
  struct header **slots = w->priv;
  uint64_t r = test_rand(&w->rng);
  struct header **s = &slots[r % SLOTS];
  uint64_t kind = (r >> 8) % 100;
  if (kind == 0) {  // a remote drain, with its fence (RSEQ mode)
    int cpu = (int)((r >> 16) % (uint64_t)job_nslots);
    if (ccache_drain_cpu(heap, cpu) == 0)
      atomic_fetch_add_explicit(&drains, 1, memory_order_relaxed);
    else
      atomic_fetch_add_explicit(&drain_errors, 1, memory_order_relaxed);
    return;
  }
  if (!*s) {
    uint64_t size = random_size(w);
    bool zeroed = kind < 20;
    struct header *h = zeroed ? ccache_calloc(heap, 1, size) : ccache_malloc(heap, size);
    CHECK(h != NULL, "malloc(%lu) failed", (unsigned long)size);
    if (zeroed) {
      const unsigned char *p = (const unsigned char *)h;
      for (uint64_t i = 0; i < size; i++)
        CHECK(p[i] == 0, "calloc(%lu) = %p: byte %lu is %#x", (unsigned long)size, (void *)h,
              (unsigned long)i, p[i]);
    }
    fill(h, size);
    *s = h;
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
  } else if (kind < 15) {  // realloc: the old contents survive up to the smaller size
    struct header *h = *s;
    verify(h, "realloc");
    uint64_t old = h->size, size = random_size(w);
    unsigned char b = (unsigned char)(h->check & 0xff);
    struct header *n = ccache_realloc(heap, h, size);
    CHECK(n != NULL, "realloc(%p, %lu) failed", (void *)h, (unsigned long)size);
    uint64_t keep = (old < size ? old : size) - sizeof *n;
    const unsigned char *p = (const unsigned char *)(n + 1);
    for (uint64_t i = 0; i < keep; i++)
      CHECK(p[i] == b, "realloc %lu -> %lu: byte %lu lost", (unsigned long)old,
            (unsigned long)size, (unsigned long)i);
    fill(n, size);
    *s = n;
    atomic_fetch_add_explicit(&reallocs, 1, memory_order_relaxed);
  } else if (kind < 40) {  // hand it to another worker; free what we get back
    // acq_rel: release publishes our block's contents to the worker that takes it;
    // acquire makes the block we take (written by its owner) visible to us.
    struct header *got = atomic_exchange_explicit(&exchange[(r >> 20) % EXCHANGE], *s,
                                                  memory_order_acq_rel);
    *s = NULL;
    if (got) {
      release(got);
      atomic_fetch_add_explicit(&cross_frees, 1, memory_order_relaxed);
    }
  } else {
    release(*s);
    *s = NULL;
  }
}

static void round_end(struct worker *w, int nworkers) {
  (void)w;
  (void)nworkers;
  CHECK(ccache_check_heap(heap) == 0, "ccache_check_heap failed after a round (see stderr)");
}

static void finish(struct worker *w, int nworkers) {
  for (int t = 0; t < nworkers; t++) {
    struct header **slots = w[t].priv;
    for (int i = 0; slots && i < SLOTS; i++)
      if (slots[i]) release(slots[i]);
    free(slots);
    w[t].priv = NULL;
  }
  for (int i = 0; i < EXCHANGE; i++) {
    // Relaxed: every worker has been joined.
    struct header *h = atomic_exchange_explicit(&exchange[i], NULL, memory_order_relaxed);
    if (h) release(h);
  }
  CHECK(ccache_drain_all(heap) == 0, "ccache_drain_all");
  CHECK(ccache_check_heap(heap) == 0, "ccache_check_heap failed at the end (see stderr)");
  struct ccache_stats s;
  ccache_get_stats(heap, &s);
  CHECK(s.in_use_bytes == 0, "%lu bytes still in use after every block was freed",
        (unsigned long)s.in_use_bytes);
  CHECK(s.cached_bytes == 0, "%lu bytes still in CPU caches after drain_all",
        (unsigned long)s.cached_bytes);
  long m = atomic_load(&mallocs), f = atomic_load(&frees);
  CHECK(m == f, "%ld blocks allocated, %ld freed", m, f);
  ccache_heap_destroy(heap);
}

static void summary(FILE *out) {
  fprintf(out, "alloc: mallocs %ld, frees %ld (cross-thread %ld), reallocs %ld, drains %ld "
               "(refused %ld); every block verified on free; heap empty at the end\n",
          atomic_load(&mallocs), atomic_load(&frees), atomic_load(&cross_frees),
          atomic_load(&reallocs), atomic_load(&drains), atomic_load(&drain_errors));
}

const struct workload work_alloc = {
    .name = "alloc",
    .sections = sections,
    .default_threads_per_cpu = 2,
    .setup = setup,
    .op = op,
    .round_end = round_end,
    .finish = finish,
    .summary = summary,
};
