// heap_test: the malloc API of a heap, single-threaded, in every mode x index:
//   - every class: round trip with a content pattern, alignment, usable size;
//   - aligned_alloc / posix_memalign / memalign for every alignment up to 64 KiB (size 0
//     too), and their EINVAL cases; an over-aligned mapping that comes aligned keeps
//     no slack;
//   - realloc growth and shrink keep the contents; calloc zeroes; calloc overflow;
//   - a freed large block is kept as a spare and handed out again (calloc's zeroed),
//     within the spare bound, or split when it is more than twice the request;
//     large-to-large realloc keeps the contents; the idle scan unmaps spares that sat
//     through a whole interval;
//   - a seeded random workload against a shadow set: no two live blocks overlap,
//     contents intact, stats and heap invariants consistent after every phase;
//   - drains empty the CPU caches; freed memory goes back to the OS (madvise);
//   - ccache_trim gives back caches, free spans, spares and pages, and live blocks
//     keep their bytes;
//   - the OS refusing memory: NULL with ENOMEM, and the heap keeps working.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "allocator/ccache.h"
#include "allocator/internal.h"  // test_marker_addresses plants a tombstone
#include "rseq/testing.h"
#include "sanitizers/sanitizers.h"

static struct ccache_heap *make(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_options o = {.mode = mode, .index = index};
  struct ccache_heap *h = ccache_heap_create(&o);
  CHECK(h != NULL, "ccache_heap_create(%s, %s): errno %d", rseq_mode_name(mode),
        rseq_index_name(index), errno);
  CHECK_EQ(ccache_heap_mode(h), mode);
  return h;
}

static void fill(void *p, size_t n, uint64_t seed) {
  unsigned char *b = p;
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(seed * 131 + i * 7);
}

static void verify(const void *p, size_t n, uint64_t seed, const char *what) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    CHECK(b[i] == (unsigned char)(seed * 131 + i * 7), "%s: byte %zu of %zu changed", what, i, n);
}

static void check_consistent(struct ccache_heap *h) {
  CHECK(ccache_check_heap(h) == 0, "heap invariants broken (see stderr)");
}

static void test_classes(struct ccache_heap *h) {
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    size_t size = ccache_class_size(c);
    size_t sizes[3] = {size, size - (c ? (size - ccache_class_size(c - 1)) / 2 : 8), size - 1};
    for (int k = 0; k < 3; k++) {
      void *p[4];
      for (int i = 0; i < 4; i++) {
        p[i] = ccache_malloc(h, sizes[k]);
        CHECK(p[i] != NULL, "malloc(%zu)", sizes[k]);
        CHECK(((uintptr_t)p[i] & 15) == 0, "malloc(%zu) = %p not 16-byte aligned", sizes[k], p[i]);
        CHECK(ccache_malloc_usable_size(h, p[i]) >= sizes[k]);
        CHECK(ccache_owns(h, p[i]));
        fill(p[i], sizes[k], c * 10 + i);
      }
      for (int i = 0; i < 4; i++) {
        verify(p[i], sizes[k], c * 10 + i, "class round trip");
        ccache_free(h, p[i]);
        CHECK(!ccache_owns(h, p[i]));
      }
    }
  }
  // Sized free and the extremes.
  void *p = ccache_malloc(h, 0);
  CHECK(p != NULL);
  ccache_free_sized(h, p, 0);
  p = ccache_malloc(h, 100);
  ccache_free_sized(h, p, 100);
  p = ccache_malloc(h, 1 << 20);  // large
  CHECK(p != NULL && ccache_malloc_usable_size(h, p) >= (1 << 20));
  fill(p, 1 << 20, 5);
  verify(p, 1 << 20, 5, "large block");
  ccache_free_sized(h, p, 1 << 20);
  errno = 0;
  CHECK(ccache_malloc(h, SIZE_MAX - 4096) == NULL && errno == ENOMEM);
  ccache_free(h, NULL);
}

static void test_aligned(struct ccache_heap *h) {
  for (size_t align = 1; align <= 65536; align *= 2) {
    size_t sizes[] = {0, 1, align / 2 + 1, align, 3 * align + 5, 300000};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
      void *p = ccache_aligned_alloc(h, align, sizes[k]);
      CHECK(p && ((uintptr_t)p & (align - 1)) == 0, "aligned_alloc(%zu, %zu) = %p", align, sizes[k], p);
      CHECK(ccache_malloc_usable_size(h, p) >= sizes[k]);
      fill(p, sizes[k], align);
      verify(p, sizes[k], align, "aligned block");
      ccache_free(h, p);
      void *q = NULL;
      int rc = ccache_posix_memalign(h, &q, align, sizes[k]);
      if (align < sizeof(void *)) {
        CHECK_EQ(rc, EINVAL);
      } else {
        CHECK(rc == 0 && ((uintptr_t)q & (align - 1)) == 0, "posix_memalign(%zu)", align);
        ccache_free(h, q);
      }
      q = ccache_memalign(h, align, sizes[k]);
      CHECK(q && ((uintptr_t)q & (align - 1)) == 0);
      ccache_free(h, q);
    }
  }
  // A block of size 0 aligned beyond a page is a block like any other: it has a usable
  // size, reallocs and passes the heap check. (It was a large entry of size 0: usable
  // size and realloc aborted on it as not ours, and ccache_check_heap reported it.)
  for (size_t align = 16384; align <= ((size_t)1 << 21); align *= 8) {
    void *z = ccache_aligned_alloc(h, align, 0);
    CHECK(z && ((uintptr_t)z & (align - 1)) == 0, "aligned_alloc(%zu, 0) = %p", align, z);
    CHECK(ccache_owns(h, z), "aligned_alloc(%zu, 0) = %p, not owned", align, z);
    CHECK(ccache_check_heap(h) == 0, "aligned_alloc(%zu, 0): heap check", align);
    (void)ccache_malloc_usable_size(h, z);
    z = ccache_realloc(h, z, 100);
    CHECK(z != NULL);
    fill(z, 100, 5);
    verify(z, 100, 5, "realloc of an aligned block of size 0");
    ccache_free(h, z);
  }
  // As glibc's memalign: 24 rounds up to 32, 0 is malloc's alignment, above
  // SIZE_MAX / 2 + 1 is EINVAL (allocator/conformance_test holds every boundary).
  void *r = ccache_aligned_alloc(h, 24, 100);
  CHECK(r && ((uintptr_t)r & 31) == 0, "aligned_alloc(24, 100) = %p", r);
  ccache_free(h, r);
  r = ccache_aligned_alloc(h, 0, 100);
  CHECK(r && ((uintptr_t)r & 15) == 0, "aligned_alloc(0, 100) = %p", r);
  ccache_free(h, r);
  errno = 0;
  CHECK(ccache_aligned_alloc(h, SIZE_MAX / 2 + 2, 100) == NULL && errno == EINVAL);
  void *q = (void *)1;
  CHECK_EQ(ccache_posix_memalign(h, &q, 24, 8), EINVAL);
  CHECK(q == (void *)1, "posix_memalign changed *out on error");
}

static void test_realloc_calloc(struct ccache_heap *h) {
  size_t sizes[] = {1, 15, 16, 17, 100, 1000, 5000, 70000, 262144, 262145, 1 << 20, 3 << 20};
  size_t n = sizeof sizes / sizeof *sizes;
  for (size_t a = 0; a < n; a++) {
    for (size_t b = 0; b < n; b++) {
      void *p = ccache_malloc(h, sizes[a]);
      fill(p, sizes[a], a);
      void *q = ccache_realloc(h, p, sizes[b]);
      CHECK(q != NULL);
      size_t keep = sizes[a] < sizes[b] ? sizes[a] : sizes[b];
      verify(q, keep, a, "realloc");
      CHECK(ccache_malloc_usable_size(h, q) >= sizes[b]);
      ccache_free(h, q);
    }
  }
  CHECK(ccache_realloc(h, ccache_malloc(h, 10), 0) == NULL);  // frees
  void *p = ccache_realloc(h, NULL, 40);
  CHECK(p != NULL);
  ccache_free(h, p);
  for (size_t a = 0; a < n; a++) {
    // Dirty a block of that size first, so calloc must really zero recycled memory.
    void *d = ccache_malloc(h, sizes[a]);
    memset(d, 0xAB, sizes[a]);
    ccache_free(h, d);
    unsigned char *z = ccache_calloc(h, 1, sizes[a]);
    CHECK(z != NULL);
    for (size_t i = 0; i < sizes[a]; i++) CHECK(z[i] == 0, "calloc(%zu) byte %zu", sizes[a], i);
    ccache_free(h, z);
  }
  errno = 0;
  CHECK(ccache_calloc(h, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(ccache_calloc(h, (size_t)1 << 40, (size_t)1 << 40) == NULL && errno == ENOMEM);
}

// The shadow set: live blocks with their sizes and patterns.
struct live {
  unsigned char *p;
  size_t size;
  uint64_t seed;
};

static int by_address(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const struct live *)a)->p, y = (uintptr_t)((const struct live *)b)->p;
  return x < y ? -1 : x > y;
}

static void check_no_overlap(struct ccache_heap *h, struct live *l, int n) {
  struct live *sorted = malloc(sizeof *sorted * (size_t)(n ? n : 1));
  memcpy(sorted, l, sizeof *sorted * (size_t)n);
  qsort(sorted, (size_t)n, sizeof *sorted, by_address);
  for (int i = 1; i < n; i++) {
    size_t usable = ccache_malloc_usable_size(h, sorted[i - 1].p);
    CHECK(sorted[i - 1].p + usable <= sorted[i].p, "blocks %p (+%zu) and %p overlap",
          (void *)sorted[i - 1].p, usable, (void *)sorted[i].p);
  }
  free(sorted);
}

static void test_random(struct ccache_heap *h, uint64_t seed) {
  enum { N = 2000 };
  static struct live live[N];
  int n = 0;
  uint64_t rng = seed;
  for (int op = 0; op < 60000; op++) {
    uint64_t x = test_rand(&rng);
    if (n < N && (x & 3) != 0) {
      // Mostly small, sometimes large; sizes spread over every class range.
      size_t size = (x >> 8) % 100 == 0 ? 262144 + (x >> 20) % 600000 : ((x >> 8) % 13 == 0 ? (x >> 24) % 70000 : (x >> 24) % 600);
      unsigned char *p;
      switch ((x >> 4) % 4) {
        case 0:
          p = ccache_calloc(h, 1, size);
          break;
        case 1:
          p = ccache_aligned_alloc(h, (size_t)64 << ((x >> 40) % 5), size);
          break;
        default:
          p = ccache_malloc(h, size);
      }
      CHECK(p != NULL, "op %d: allocation of %zu", op, size);
      fill(p, size, (uint64_t)op);
      live[n++] = (struct live){p, size, (uint64_t)op};
    } else if (n > 0) {
      int i = (int)((x >> 8) % (uint64_t)n);
      verify(live[i].p, live[i].size, live[i].seed, "random workload");
      if ((x >> 30) % 3 == 0) {
        size_t ns = (x >> 32) % 3000;
        unsigned char *q = ccache_realloc(h, live[i].p, ns);
        if (ns == 0) {
          live[i] = live[--n];
          continue;
        }
        CHECK(q != NULL);
        verify(q, ns < live[i].size ? ns : live[i].size, live[i].seed, "realloc in workload");
        fill(q, ns, (uint64_t)op);
        live[i] = (struct live){q, ns, (uint64_t)op};
      } else {
        ccache_free(h, live[i].p);
        live[i] = live[--n];
      }
    }
    if (op % 20000 == 19999) {
      check_no_overlap(h, live, n);
      check_consistent(h);
    }
  }
  check_no_overlap(h, live, n);
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  uint64_t live_small = 0;
  for (int i = 0; i < n; i++)
    if (live[i].size <= CCACHE_MAX_SMALL) live_small++;
  uint64_t in_use = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) in_use += st.classes[c].in_use;
  // Aligned requests above 256 KiB go large; the rest small.
  CHECK(in_use <= (uint64_t)n && in_use + st.large_count == (uint64_t)n,
        "stats: %lu small + %lu large in use, %d live", (unsigned long)in_use,
        (unsigned long)st.large_count, n);
  for (int i = 0; i < n; i++) ccache_free(h, live[i].p);
  check_consistent(h);
}

// An over-aligned large request maps its size plus the alignment, and keeps the block
// at the first aligned address; when the mapping comes aligned already, the slack goes
// back at once (the block then starts its mapping, and its spare is poisoned from the
// block on: see large_free). Whether a mapping comes aligned is the kernel's choice:
// the sizes step by a page, so that consecutive mappings land at every offset modulo
// the alignment. Each block's mapping is exactly one of the two sizes; the slack's
// return is reported, and a run where no mapping came aligned says so.
static void test_aligned_slack(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  enum { N = 64 };
  const size_t align = 16384;
  void *p[N];
  size_t sizes[N];
  int trimmed = 0, kept = 0;
  for (int i = 0; i < N; i++) {
    size_t size = sizes[i] = (300u << 10) + (size_t)i * 4096, usable = size;  // pages
    struct ccache_stats before, after;
    ccache_get_stats(h, &before);
    p[i] = ccache_aligned_alloc(h, align, size);
    ccache_get_stats(h, &after);
    CHECK(p[i] && ((uintptr_t)p[i] & (align - 1)) == 0, "aligned_alloc(%zu, %zu) = %p", align,
          size, p[i]);
    uint64_t grew = after.os_bytes - before.os_bytes;
    CHECK(grew == usable || grew == usable + align,
          "aligned_alloc(%zu, %zu): the heap's mappings grew by %lu (want %zu, or %zu with the "
          "slack)", align, size, (unsigned long)grew, usable, usable + align);
    if (grew == usable) trimmed++;
    else kept++;
    fill(p[i], size, (int)i);
  }
  check_consistent(h);
  for (int i = 0; i < N; i++) {
    verify(p[i], sizes[i], (int)i, "over-aligned large block");
    ccache_free(h, p[i]);
  }
  check_consistent(h);
  if (trimmed == 0)
    printf("  aligned slack: SKIPPED the trimmed case: none of %d mappings came %zu-aligned "
           "(the kernel's placement)\n", N, align);
  else
    printf("  aligned slack: %d mappings came aligned (slack returned), %d did not\n", trimmed,
           kept);
  ccache_heap_destroy(h);
}

// A spare more than twice a request is split: the block takes its front, the rest stays
// a spare (no new mapping); each piece is a block of its own from then on.
static void test_large_spare_split(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  const size_t piece = 300u << 10;  // a page multiple
  unsigned char *big = ccache_malloc(h, 2u << 20);
  CHECK(big != NULL);
  fill(big, 2u << 20, 9);
  ccache_free(h, big);
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1 && st.large_spare_bytes == (2u << 20), "a freed 2 MiB block: %lu "
        "spares, %lu B", (unsigned long)st.large_spares, (unsigned long)st.large_spare_bytes);
  uint64_t os = st.os_bytes;
  unsigned char *a = ccache_malloc(h, piece), *b = ccache_malloc(h, piece);
  CHECK(a == big && b == big + piece, "two blocks of 300 KiB from a 2 MiB spare: %p and %p, "
        "want %p and %p", (void *)a, (void *)b, (void *)big, (void *)(big + piece));
  unsigned char *z = ccache_calloc(h, 1, piece);  // the rest held the 2 MiB block's bytes
  CHECK(z == big + 2 * piece, "calloc(300 KiB) = %p, want %p", (void *)z, (void *)(big + 2 * piece));
  for (size_t i = 0; i < piece; i += 511) CHECK(z[i] == 0, "calloc of a split spare: byte %zu", i);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1 && st.large_spare_bytes == (2u << 20) - 3 * piece &&
            st.large_count == 3 && st.os_bytes == os,
        "after three splits: %lu spares of %lu B, %lu large blocks, os_bytes %lu (was %lu)",
        (unsigned long)st.large_spares, (unsigned long)st.large_spare_bytes,
        (unsigned long)st.large_count, (unsigned long)st.os_bytes, (unsigned long)os);
  CHECK(ccache_malloc_usable_size(h, a) == piece && ccache_malloc_usable_size(h, b) == piece);
  fill(a, piece, 1);
  fill(b, piece, 2);
  check_consistent(h);
  // A piece grows elsewhere (its neighbour is taken): the contents move with it.
  unsigned char *c = ccache_realloc(h, a, 1u << 20);
  CHECK(c != NULL);
  verify(c, piece, 1, "realloc of a split piece");
  verify(b, piece, 2, "the piece after it");
  ccache_free(h, b);
  ccache_free(h, c);
  ccache_free(h, z);
  check_consistent(h);
  ccache_trim(h);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 0 && st.large_count == 0, "after trim: %lu spares, %lu large",
        (unsigned long)st.large_spares, (unsigned long)st.large_count);
  ccache_heap_destroy(h);
}

// On a heap of its own: which spare a request gets depends on the spares there are.
static void test_large_spares(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  uint64_t os_before = st.os_bytes - st.large_spare_bytes;
  // A freed large block is a spare, and the next request of its size gets it back.
  unsigned char *a = ccache_malloc(h, 1 << 20);
  CHECK(a != NULL);
  memset(a, 0xAB, 1 << 20);
  ccache_free(h, a);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares >= 1 && st.large_spare_bytes >= (1 << 20),
        "a freed 1 MiB block was not kept: %lu spares, %lu B", (unsigned long)st.large_spares,
        (unsigned long)st.large_spare_bytes);
  CHECK(!ccache_owns(h, a), "a spare still counts as a live block");
  unsigned char *z = ccache_calloc(h, 1, 1 << 20);
  CHECK(z == a, "calloc(1 MiB) = %p, not the spare %p", (void *)z, (void *)a);
  for (size_t i = 0; i < (1 << 20); i += 511) CHECK(z[i] == 0, "calloc of a spare: byte %zu", i);
  ccache_free(h, z);
  unsigned char *b = ccache_malloc(h, 700 << 10);  // fits the 1 MiB spare, wastes < half
  CHECK(b == a, "malloc(700 KiB) = %p, not the 1 MiB spare %p", (void *)b, (void *)a);
  CHECK(ccache_malloc_usable_size(h, b) == (700 << 10));
  // Large to large realloc keeps the contents both ways. A block in a bigger spare
  // grows into the rest of the spare in place; past it, and when shrinking, the pages
  // move with mremap: no copy, so nothing is left behind as a spare. (Not under TSan
  // and MSan, whose shadow does not move with pages: there realloc copies.)
  fill(b, 700 << 10, 77);
  ccache_get_stats(h, &st);
  uint64_t spares = st.large_spares;
  unsigned char *g = ccache_realloc(h, b, 900 << 10);
  CHECK(g != NULL && ccache_malloc_usable_size(h, g) == (900u << 10));
  verify(g, 700 << 10, 77, "large realloc within the spare");
  fill(g, 900 << 10, 76);  // the grown part is writable (ASan: unpoisoned)
  ccache_get_stats(h, &st);
  if (!CCACHE_HAVE_TSAN && !CCACHE_HAVE_MSAN) {
    CHECK(g == b, "realloc(700 KiB -> 900 KiB) in a 1 MiB spare moved the block (%p -> %p)",
          (void *)b, (void *)g);
    CHECK(st.large_spares == spares && st.large_bytes == (900u << 10),
          "in-place growth: %lu spares (was %lu), %lu large bytes", (unsigned long)st.large_spares,
          (unsigned long)spares, (unsigned long)st.large_bytes);
  }
  unsigned char *c = ccache_realloc(h, g, 5 << 20);
  CHECK(c != NULL && ccache_malloc_usable_size(h, c) >= (5u << 20));
  verify(c, 900 << 10, 76, "large realloc up");
  check_consistent(h);  // the block lies within its mapping
  ccache_get_stats(h, &st);
  if (!CCACHE_HAVE_TSAN && !CCACHE_HAVE_MSAN)
    CHECK(st.large_spares == spares && st.large_bytes == (5u << 20),
          "realloc of a spare-backed block to 5 MiB copied it: %lu spares (was %lu), %lu large "
          "bytes", (unsigned long)st.large_spares, (unsigned long)spares,
          (unsigned long)st.large_bytes);
  fill(c, 5 << 20, 78);
  unsigned char *d = ccache_realloc(h, c, 300 << 10);
  CHECK(d != NULL && ccache_malloc_usable_size(h, d) >= (300u << 10));
  verify(d, 300 << 10, 78, "large realloc down");
  ccache_free(h, d);
  // The bounds: 40 blocks of 300 KiB freed (12 MB, under the byte bound) keep 32 spares;
  // 20 blocks of 3 MiB keep 5 (16 MiB at most).
  ccache_trim(h);  // no spare left
  void *q[40];
  for (int i = 0; i < 40; i++) CHECK((q[i] = ccache_malloc(h, 300 << 10)) != NULL);
  for (int i = 0; i < 40; i++) ccache_free(h, q[i]);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 32 && st.large_spare_bytes == 32u * (300u << 10),
        "40 blocks of 300 KiB freed: %lu spares, %lu B kept (want 32, %u B)",
        (unsigned long)st.large_spares, (unsigned long)st.large_spare_bytes, 32u * (300u << 10));
  check_consistent(h);
  ccache_trim(h);
  void *p[20];
  for (int i = 0; i < 20; i++) CHECK((p[i] = ccache_malloc(h, 3 << 20)) != NULL);
  for (int i = 0; i < 20; i++) ccache_free(h, p[i]);
  ccache_get_stats(h, &st);
  CHECK(st.large_count == 0 && st.large_bytes == 0);
  CHECK(st.large_spares == 5 && st.large_spare_bytes == (15u << 20),
        "20 blocks of 3 MiB freed: %lu spares, %lu B kept (want 5, 15 MiB: the 16 MiB bound)",
        (unsigned long)st.large_spares, (unsigned long)st.large_spare_bytes);
  CHECK(st.os_bytes - st.large_spare_bytes <= os_before + (1 << 20),
        "os_bytes grew from %lu to %lu (%lu in spares) with no large block live",
        (unsigned long)os_before, (unsigned long)st.os_bytes, (unsigned long)st.large_spare_bytes);
  check_consistent(h);
  printf("  large spares: %lu kept, %lu B\n", (unsigned long)st.large_spares,
         (unsigned long)st.large_spare_bytes);
  // A mapping no request could take again is not kept: an over-aligned small block's
  // (a spare serves only requests past CCACHE_MAX_SMALL that are not over-aligned). 40
  // of them freed keep none, and do not crowd out the 1 MiB block freed after them.
  ccache_trim(h);
  void *small[40];
  for (int i = 0; i < 40; i++) {
    small[i] = ccache_aligned_alloc(h, 16384, 100 + (size_t)i * 400);
    CHECK(small[i] && ((uintptr_t)small[i] & 16383) == 0, "aligned_alloc(16384, %zu) = %p",
          100 + (size_t)i * 400, small[i]);
  }
  for (int i = 0; i < 40; i++) ccache_free(h, small[i]);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 0 && st.large_spare_bytes == 0,
        "40 over-aligned blocks of 100 B to 16 KB freed: %lu spares, %lu B kept (want none: no "
        "request could reuse them)", (unsigned long)st.large_spares,
        (unsigned long)st.large_spare_bytes);
  void *m = ccache_malloc(h, 1 << 20);
  CHECK(m != NULL);
  ccache_free(h, m);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1 && st.large_spare_bytes == (1u << 20),
        "a 1 MiB block freed after them: %lu spares, %lu B kept (want it)",
        (unsigned long)st.large_spares, (unsigned long)st.large_spare_bytes);
  // The smallest mapping kept: that of the smallest request a spare can serve.
  ccache_trim(h);
  size_t least = CCACHE_MAX_SMALL + 1;
  void *l = ccache_malloc(h, least);
  CHECK(l != NULL);
  ccache_free(h, l);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1, "malloc(%zu) freed: %lu spares (want 1)", least,
        (unsigned long)st.large_spares);
  CHECK(ccache_malloc(h, least) == l, "malloc(%zu) did not get its spare back", least);
  ccache_free(h, l);
  check_consistent(h);
  ccache_heap_destroy(h);
}

static void test_drain_and_release(struct ccache_heap *h) {
  enum { N = 40000 };
  static void *p[N];
  static struct ccache_stats start;  // large: not on the stack
  ccache_get_stats(h, &start);
  for (int i = 0; i < N; i++) CHECK((p[i] = ccache_malloc(h, 1000)) != NULL);
  for (int i = 0; i < N; i++) ccache_free(h, p[i]);
  struct ccache_stats before, after;
  ccache_get_stats(h, &before);
  CHECK(ccache_drain_all(h) == 0, "drain_all: errno %d", errno);
  ccache_get_stats(h, &after);
  CHECK(after.cached_bytes == 0, "%lu bytes still cached after drain_all", (unsigned long)after.cached_bytes);
  for (int cpu = 0; cpu < after.ncpus; cpu++) CHECK_EQ(after.cpu_cached_bytes[cpu], 0);
  CHECK(after.released_bytes > 0, "40 MB freed and drained, nothing released to the OS");
  // Each page goes back once: 40 MB allocated, freed and drained give back about 40 MB
  // (plus what earlier tests left in the caches).
  uint64_t released = after.released_bytes - start.released_bytes;
  CHECK(released <= 2 * (uint64_t)N * 1024 + (16u << 20),
        "40 MB allocated, freed and drained released %lu B to the OS: pages given back "
        "again and again",
        (unsigned long)released);
  CHECK(after.in_use_bytes == 0, "in use after freeing everything: %lu", (unsigned long)after.in_use_bytes);
  errno = 0;
  CHECK(ccache_drain_cpu(h, -1) == -1 && errno == EINVAL);
  CHECK(ccache_drain_cpu(h, after.ncpus) == -1 && errno == EINVAL);
  check_consistent(h);
  printf("  drain: %lu B cached before, 0 after; %lu B released to the OS since the first malloc\n",
         (unsigned long)before.cached_bytes, (unsigned long)released);
}

// ccache_trim gives back what is free: caches, spans, spares, pages. On a heap of its
// own, so that what it holds is known.
// With release_threshold 64 KiB, most spans go back to the OS as trim's drain brings
// them back, before its own release: trim must count those too.
static void test_trim(enum rseq_mode mode, enum rseq_index index, size_t release_threshold) {
  struct ccache_options o = {.mode = mode, .index = index, .release_threshold = release_threshold};
  struct ccache_heap *h = ccache_heap_create(&o);
  CHECK(h != NULL, "ccache_heap_create: errno %d", errno);
  enum { N = 3000 };
  static void *p[N];
  size_t sizes[] = {16, 48, 200, 1000, 5000, 40000};
  for (int i = 0; i < N; i++) {
    size_t n = sizes[i % 6];
    CHECK((p[i] = ccache_malloc(h, n)) != NULL);
    fill(p[i], n, (uint64_t)i);
  }
  void *big[3];
  for (int i = 0; i < 3; i++) CHECK((big[i] = ccache_malloc(h, (size_t)(i + 1) << 20)) != NULL);
  // Every other small block stays live: its bytes and its span must survive the trim.
  for (int i = 0; i < N; i += 2) ccache_free(h, p[i]);
  for (int i = 0; i < 3; i++) ccache_free(h, big[i]);
  struct ccache_stats before, after;
  ccache_get_stats(h, &before);
  CHECK(before.large_spares == 3 && before.cached_bytes > 0, "%lu spares, %lu B cached",
        (unsigned long)before.large_spares, (unsigned long)before.cached_bytes);
  size_t got = ccache_trim(h);
  ccache_get_stats(h, &after);
  CHECK(got >= (6u << 20), "trim gave back %zu B; the three spares alone are 6 MiB", got);
  CHECK(after.large_spares == 0 && after.large_spare_bytes == 0, "%lu spares left",
        (unsigned long)after.large_spares);
  CHECK(after.cached_bytes == 0, "%lu B still cached", (unsigned long)after.cached_bytes);
  // Only the caches that held blocks were drained (a drain fences in RSEQ mode: one
  // syscall per CPU, or per cid, with nothing to take back).
  int holding = 0;
  for (int cpu = 0; cpu < before.ncpus; cpu++) holding += before.cpu_cached_bytes[cpu] > 0;
  CHECK(after.drains - before.drains == (uint64_t)holding,
        "trim drained %lu caches; %d held blocks", (unsigned long)(after.drains - before.drains),
        holding);
  CHECK(after.page_heap_free_bytes == 0, "%lu B of free pages not released",
        (unsigned long)after.page_heap_free_bytes);
  // What trim says went back is what os_bytes lost (spans released as they came back
  // past the threshold included).
  CHECK(after.os_bytes + got <= before.os_bytes + (64u << 10) &&
            got + (64u << 10) >= before.os_bytes - after.os_bytes,
        "os_bytes %lu -> %lu, but trim says %zu B went back", (unsigned long)before.os_bytes,
        (unsigned long)after.os_bytes, got);
  CHECK_EQ(after.in_use_bytes, before.in_use_bytes);
  // The classes of 16, 200 and 5000 B have no block in use: none keeps a span.
  int emptied = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    if (after.classes[c].in_use) continue;
    CHECK(after.classes[c].spans == 0 && after.classes[c].central == 0,
          "class %u (%zu B): no block in use, yet %lu spans and %lu central blocks after trim", c,
          after.classes[c].size, (unsigned long)after.classes[c].spans,
          (unsigned long)after.classes[c].central);
    emptied += before.classes[c].spans > 0;
  }
  CHECK(emptied >= 3, "only %d classes had spans to give back", emptied);
  check_consistent(h);
  for (int i = 1; i < N; i += 2) verify(p[i], sizes[i % 6], (uint64_t)i, "live block across trim");
  // Nothing is left to give back; the heap works on (released pages fault in again).
  CHECK(ccache_trim(h) == 0, "a second trim found more to give back");
  struct ccache_stats again;
  ccache_get_stats(h, &again);
  CHECK(again.drains == after.drains, "a second trim drained %lu empty caches",
        (unsigned long)(again.drains - after.drains));
  for (int i = 0; i < N; i += 2) {
    CHECK((p[i] = ccache_malloc(h, sizes[i % 6])) != NULL);
    fill(p[i], sizes[i % 6], (uint64_t)i + 1);
  }
  for (int i = 0; i < N; i++) ccache_free(h, p[i]);
  ccache_get_stats(h, &after);
  CHECK_EQ(after.in_use_bytes, 0);
  check_consistent(h);
  printf("  trim (release threshold %zu B): %zu B given back (%lu B cached, %lu spares "
         "before)\n", release_threshold, got, (unsigned long)before.cached_bytes,
         (unsigned long)before.large_spares);
  ccache_heap_destroy(h);
}

// The large table's slot markers (0 empty, 1 tombstone) are never a block's address:
// with a tombstone in the slot that address 1 hashes to (slot 0), free((void *)1) found
// it and freed the freed block's mapping again (until 2026-12-04). White-box: the
// tombstone is planted in the first empty slot from slot 0 on (where a lookup of 1
// probes), with the sizes a freed block leaves behind.
static void test_marker_addresses(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  void *b = ccache_malloc(h, 300 << 10);
  CHECK(b != NULL);
  pthread_mutex_lock(&h->large_lock);
  size_t slot = 0;
  while (h->large[slot].addr != 0) slot++;  // one live entry in a table of 256
  h->large[slot] = (struct large_entry){1, 300 << 10, 300 << 10, (uintptr_t)b};
  h->large_tombs++;
  pthread_mutex_unlock(&h->large_lock);
  CHECK(!ccache_owns(h, (void *)1), "address 1 (the tombstone marker) counts as a live block");
  CHECK(!ccache_owns(h, (void *)0), "address 0 (the empty marker) counts as a live block");
  CHECK(ccache_owns(h, b), "the live block is no longer found");
  ccache_free(h, b);
  check_consistent(h);
  ccache_heap_destroy(h);
}

// Trim after trim: the first releases runs, the second merges new free runs into them.
// A run's old boundary pages, inner pages after a merge, must not keep naming it
// (until 2026-12-04 the second trim left "inner page N maps to" a run whose metadata
// was freed; found by review).
static void test_trim_twice(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  void *p[16];
  for (int i = 0; i < 16; i++) CHECK((p[i] = ccache_malloc(h, 200 << 10)) != NULL);
  for (int i = 0; i < 4; i++) ccache_free(h, p[i]);
  ccache_trim(h);
  check_consistent(h);
  for (int i = 4; i < 8; i++) ccache_free(h, p[i]);
  ccache_trim(h);
  check_consistent(h);
  for (int i = 8; i < 16; i++) ccache_free(h, p[i]);
  ccache_trim(h);
  check_consistent(h);
  ccache_heap_destroy(h);
}

// aligned_alloc up to the 8 KiB span page is served by power-of-two classes, aligned
// only as far as the heap's base is: a reservation that the kernel places one 4 KiB
// page past a boundary (kernels before 6.7 could) must still give 8 KiB-aligned blocks
// (until 2026-12-04 they came 4 KiB off; found by review).
static void test_misaligned_reservation(enum rseq_mode mode, enum rseq_index index) {
  ccache_test_misalign_next_reservation();
  struct ccache_heap *h = make(mode, index);
  static const size_t sizes[] = {0, 1, 100, 4096, 5000, 8192, 20000, 100000};
  for (size_t al = 16; al <= 8192; al *= 2)
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
      void *p = ccache_aligned_alloc(h, al, sizes[k]);
      void *q = NULL;
      CHECK(p && ((uintptr_t)p & (al - 1)) == 0, "aligned_alloc(%zu, %zu) = %p on a heap "
            "reserved one page past a boundary", al, sizes[k], p);
      CHECK(ccache_posix_memalign(h, &q, al, sizes[k]) == 0 && ((uintptr_t)q & (al - 1)) == 0,
            "posix_memalign(%zu, %zu) = %p", al, sizes[k], q);
      ccache_free(h, p);
      ccache_free(h, q);
    }
  check_consistent(h);
  ccache_heap_destroy(h);
}

// calloc of a reused large spare whose pages are locked (mlock): the OS refuses to
// drop them, so their old bytes must be cleared another way.
static void test_calloc_locked_spare(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  size_t n = 1 << 20;
  unsigned char *p = ccache_malloc(h, n);
  CHECK(p != NULL);
  if (mlock(p, n) != 0) {
    printf("  calloc of a locked spare: SKIPPED (mlock of 1 MiB refused: errno %d; "
           "RLIMIT_MEMLOCK)\n", errno);
    ccache_free(h, p);
    ccache_heap_destroy(h);
    return;
  }
  memset(p, 0xAB, n);
  ccache_free(h, p);  // a spare, still locked
  unsigned char *z = ccache_calloc(h, 1, n);
  CHECK(z == p, "calloc(1 MiB) = %p, not the locked spare %p", (void *)z, (void *)p);
  for (size_t i = 0; i < n; i += 4093)
    CHECK(z[i] == 0, "calloc of a locked spare: byte %zu is %#x", i, z[i]);
  munlock(z, n);
  ccache_free(h, z);
  check_consistent(h);
  ccache_heap_destroy(h);
}

// The idle scan unmaps a large spare freed before the previous scan and not reused.
static void test_spare_aging(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  struct ccache_stats st;
  ccache_free(h, ccache_malloc(h, 1 << 20));
  ccache_reclaim_idle(h);  // the spare was freed since the last scan (none): kept
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1, "scan 1 took a spare freed since the last scan (%lu left)",
        (unsigned long)st.large_spares);
  ccache_free(h, ccache_malloc(h, 2 << 20));  // a second one, freed after scan 1
  ccache_reclaim_idle(h);  // the 1 MiB spare sat through a whole interval: unmapped
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1 && st.large_spare_bytes == (2u << 20),
        "scan 2: %lu spares, %lu B (want the 2 MiB one only)", (unsigned long)st.large_spares,
        (unsigned long)st.large_spare_bytes);
  void *a = ccache_malloc(h, 2 << 20);  // reused: the scan after has nothing to age
  CHECK(a != NULL);
  ccache_reclaim_idle(h);
  ccache_free(h, a);
  ccache_reclaim_idle(h);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 1, "a spare freed right before a scan was taken by it");
  ccache_reclaim_idle(h);
  ccache_get_stats(h, &st);
  CHECK(st.large_spares == 0 && st.large_spare_bytes == 0, "scan 5 kept %lu idle spares",
        (unsigned long)st.large_spares);
  check_consistent(h);
  ccache_heap_destroy(h);
}

static void test_oom(enum rseq_mode mode, enum rseq_index index) {
  struct ccache_heap *h = make(mode, index);
  // Each class's first block needs a new span, so a new commit: make them fail.
  ccache_test_fail_next_os_maps(1000);
  errno = 0;
  CHECK(ccache_malloc(h, 3000) == NULL && errno == ENOMEM, "malloc while the OS refuses");
  errno = 0;
  CHECK(ccache_malloc(h, 5 << 20) == NULL && errno == ENOMEM, "large malloc while the OS refuses");
  errno = 0;
  CHECK(ccache_calloc(h, 10, 1000) == NULL && errno == ENOMEM);
  void *q = ccache_malloc(h, 100);  // maybe a span exists already; either way no crash
  if (q) ccache_free(h, q);
  ccache_test_fail_next_os_maps(0);
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  CHECK(st.os_failures >= 2, "refusals not counted");
  // The heap keeps working.
  void *p = ccache_malloc(h, 3000);
  CHECK(p != NULL, "after the OS recovers, malloc fails: errno %d", errno);
  void *big = ccache_malloc(h, 5 << 20);
  CHECK(big != NULL);
  ccache_free(h, p);
  ccache_free(h, big);
  check_consistent(h);
  ccache_test_fail_next_os_maps(1);
  errno = 0;
  CHECK(ccache_heap_create(NULL) == NULL && errno == ENOMEM, "heap creation when the OS refuses");
  ccache_test_fail_next_os_maps(0);
  ccache_heap_destroy(h);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  uint64_t seed = test_seed(7);
  struct {
    enum rseq_mode mode;
    enum rseq_index index;
  } configs[] = {{RSEQ_MODE_RSEQ, RSEQ_INDEX_CPU_ID},
                 {RSEQ_MODE_RSEQ, RSEQ_INDEX_MM_CID},
                 {RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID},
                 {RSEQ_MODE_CAS, RSEQ_INDEX_MM_CID}};
  struct ccache_options bad = {.mode = (enum rseq_mode)9};
  errno = 0;
  CHECK(ccache_heap_create(&bad) == NULL && errno == EINVAL);
  for (size_t i = 0; i < sizeof configs / sizeof *configs; i++) {
    struct rseq_percpu_mode m;
    const char *why;
    if (rseq_resolve_mode(configs[i].mode, configs[i].index, &m, &why) != 0) {
      printf("SKIPPED: mode %s index %s: %s\n", rseq_mode_name(configs[i].mode),
             rseq_index_name(configs[i].index), why);
      continue;
    }
    test_context("mode=%s index=%s seed=%lu", rseq_mode_name(configs[i].mode),
                 rseq_index_name(configs[i].index), (unsigned long)seed);
    struct ccache_heap *h = make(configs[i].mode, configs[i].index);
    test_classes(h);
    test_aligned(h);
    test_realloc_calloc(h);
    test_large_spares(configs[i].mode, configs[i].index);
    test_marker_addresses(configs[i].mode, configs[i].index);
    test_trim_twice(configs[i].mode, configs[i].index);
    test_misaligned_reservation(configs[i].mode, configs[i].index);
    test_calloc_locked_spare(configs[i].mode, configs[i].index);
    test_aligned_slack(configs[i].mode, configs[i].index);
    test_large_spare_split(configs[i].mode, configs[i].index);
    test_spare_aging(configs[i].mode, configs[i].index);
    test_trim(configs[i].mode, configs[i].index, (size_t)4 << 20);  // the default
    test_trim(configs[i].mode, configs[i].index, 64 << 10);
    test_random(h, seed);
    test_drain_and_release(h);
    check_consistent(h);
    ccache_heap_destroy(h);
    test_oom(configs[i].mode, configs[i].index);
    printf("ok: mode=%s index=%s: classes, alignment, realloc/calloc, random workload (seed %lu), "
           "drain/release, trim, spare aging, OOM\n",
           rseq_mode_name(configs[i].mode), rseq_index_name(configs[i].index), (unsigned long)seed);
  }
  printf("PASS\n");
  return 0;
}
