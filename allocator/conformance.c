// conformance.c: see conformance.h.
#include "allocator/conformance.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "allocator/size_class.h"
#include "sanitizers/sanitizers.h"

#define FOOTPRINT_LIMIT ((size_t)1 << 30)

static const char *const names[CONF_CALLS] = {
    "malloc",        "calloc",         "realloc",  "realloc(NULL)", "reallocarray",
    "aligned_alloc", "posix_memalign", "memalign", "valloc",        "pvalloc"};

const char *conformance_call_name(enum conformance_call c) {
  return (unsigned)c < CONF_CALLS ? names[c] : "?";
}

// glibc's functions, past any interposer in the executable (a sanitizer's).
static struct {
  void *(*malloc)(size_t);
  void (*free)(void *);
  void *(*calloc)(size_t, size_t);
  void *(*realloc)(void *, size_t);
  void *(*aligned_alloc)(size_t, size_t);
  int (*posix_memalign)(void **, size_t, size_t);
  void *(*memalign)(size_t, size_t);
  void *(*valloc)(size_t);
  void *(*pvalloc)(size_t);
  size_t (*malloc_usable_size)(void *);
  int (*mallopt)(int, int);
} g;

static int find_libc(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  struct {
    char path[4096];
    uintptr_t base;
  } *f = arg;
  const char *slash = strrchr(info->dlpi_name, '/');
  if (!strcmp(slash ? slash + 1 : info->dlpi_name, "libc.so.6")) {
    snprintf(f->path, sizeof f->path, "%s", info->dlpi_name);
    f->base = info->dlpi_addr;
    return 1;
  }
  return 0;
}

// libc's own definitions of names[0..n), into out[] (NULL where missing), read from
// libc's file (.dynsym) and its load base in one pass: dlsym is intercepted by the
// sanitizers, and gave their interceptors.
static void libc_symbols(const char *const *names, void **out, int n) {
  for (int j = 0; j < n; j++) out[j] = NULL;
  struct found {
    char path[4096];
    uintptr_t base;
  } f = {"", 0};
  dl_iterate_phdr(find_libc, &f);
  if (!f.path[0]) return;
  int fd = open(f.path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0) return;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return;
  }
  const uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return;
  const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m;
  const Elf64_Shdr *sh = (const Elf64_Shdr *)(m + eh->e_shoff);
  for (int i = 0; i < eh->e_shnum; i++) {
    if (sh[i].sh_type != SHT_DYNSYM) continue;
    const Elf64_Sym *sym = (const Elf64_Sym *)(m + sh[i].sh_offset);
    const char *strs = (const char *)(m + sh[sh[i].sh_link].sh_offset);
    for (size_t k = 0; k < sh[i].sh_size / sizeof *sym; k++) {
      if (sym[k].st_shndx == SHN_UNDEF || ELF64_ST_TYPE(sym[k].st_info) != STT_FUNC) continue;
      for (int j = 0; j < n; j++)
        if (!out[j] && !strcmp(strs + sym[k].st_name, names[j]))
          out[j] = (void *)(f.base + sym[k].st_value);
    }
  }
  munmap((void *)m, (size_t)st.st_size);
}

static void resolve(void) {
  if (g.malloc) return;
  const char *names[] = {"free",     "calloc", "realloc", "aligned_alloc", "posix_memalign",
                         "memalign", "valloc", "pvalloc", "malloc_usable_size", "mallopt",
                         "malloc"};
  void **slots[] = {(void **)&g.free,          (void **)&g.calloc,
                    (void **)&g.realloc,       (void **)&g.aligned_alloc,
                    (void **)&g.posix_memalign, (void **)&g.memalign,
                    (void **)&g.valloc,        (void **)&g.pvalloc,
                    (void **)&g.malloc_usable_size, (void **)&g.mallopt,
                    (void **)&g.malloc};
  enum { N = sizeof names / sizeof names[0] };
  void *found[N];
  libc_symbols(names, found, N);
  for (int j = 0; j < N; j++)
    if (!found[j]) {
      fprintf(stderr, "conformance: no glibc %s\n", names[j]);
      abort();
    }
  for (int j = 0; j < N; j++) *slots[j] = found[j];  // malloc last: it marks the table ready
  // glibc's mmap threshold held at its default (128 KiB): left dynamic, it rises to the
  // size of each mapped block freed (up to 32 MiB), and callocs below it then came from
  // glibc's heap, where reused memory is cleared with memset (a fifth of the conformance
  // fuzzer's time). Where a request is served from is not what is compared; success and
  // errno do not depend on it. (Only speed depends on the call succeeding.)
  (void)g.mallopt(M_MMAP_THRESHOLD, 128 << 10);
}

struct outcome {
  void *p;       // the block (NULL on failure)
  int err;       // errno on failure, or posix_memalign's result
  size_t want;   // the bytes it must hold
  size_t align;  // the alignment it must have
  bool zero;     // calloc: must read zero
  bool kept;     // realloc/reallocarray: the old block's 100 bytes must be there
  size_t usable_size;  // malloc_usable_size of the block: at least `want`
};

#define OLD_SIZE 100

static void fill_old(unsigned char *p) {
  for (int i = 0; i < OLD_SIZE; i++) p[i] = (unsigned char)(i * 7 + 3);
}

// The request's size for the usability check, or SIZE_MAX when the product overflows.
static size_t product(size_t a, size_t b) {
  size_t t;
  return __builtin_mul_overflow(a, b, &t) ? SIZE_MAX : t;
}

static size_t page_size(void) {
  return 4096;
}

static void run(bool glibc, struct ccache_heap *h, enum conformance_call c, size_t a, size_t b,
                struct outcome *o) {
  memset(o, 0, sizeof *o);
  o->align = 16;
  o->want = a;
  void *old = NULL;
  if (c == CONF_REALLOC || c == CONF_REALLOCARRAY) {
    old = glibc ? g.malloc(OLD_SIZE) : ccache_malloc(h, OLD_SIZE);
    if (!old) abort();
    fill_old(old);
    o->kept = true;
  }
  errno = 0;
  switch (c) {
    case CONF_MALLOC:
      o->p = glibc ? g.malloc(a) : ccache_malloc(h, a);
      break;
    case CONF_CALLOC:
      o->p = glibc ? g.calloc(a, b) : ccache_calloc(h, a, b);
      o->want = product(a, b);
      o->zero = true;
      break;
    case CONF_REALLOC:
      o->p = glibc ? g.realloc(old, a) : ccache_realloc(h, old, a);
      break;
    case CONF_REALLOC_NULL:
      o->p = glibc ? g.realloc(NULL, a) : ccache_realloc(h, NULL, a);
      break;
    case CONF_REALLOCARRAY:
      o->want = product(a, b);
      if (!glibc) {
        o->p = ccache_reallocarray(h, old, a, b);
      } else if (__builtin_mul_overflow(a, b, &(size_t){0})) {
        // glibc's reallocarray is exactly this: the overflow check, then realloc, which
        // it calls through the PLT, so that a sanitizer's realloc would get glibc's
        // block: the oracle does the same with glibc's realloc.
        errno = ENOMEM;
      } else {
        o->p = g.realloc(old, a * b);
      }
      break;
    case CONF_ALIGNED_ALLOC:
      o->p = glibc ? g.aligned_alloc(b, a) : ccache_aligned_alloc(h, b, a);
      o->align = b;
      break;
    case CONF_POSIX_MEMALIGN: {
      // Compared: the returned code. Not errno: glibc sets it to ENOMEM on failure,
      // POSIX (2024) says the function shall not change it, and ccache does not.
      void *p = NULL;
      o->err = glibc ? g.posix_memalign(&p, b, a) : ccache_posix_memalign(h, &p, b, a);
      o->p = o->err ? NULL : p;
      o->align = b;
      break;
    }
    case CONF_MEMALIGN:
      o->p = glibc ? g.memalign(b, a) : ccache_memalign(h, b, a);
      o->align = b;
      break;
    case CONF_VALLOC:
      o->p = glibc ? g.valloc(a) : ccache_valloc(h, a);
      o->align = page_size();
      break;
    case CONF_PVALLOC:
      o->p = glibc ? g.pvalloc(a) : ccache_pvalloc(h, a);
      o->align = page_size();
      break;
    default:
      abort();
  }
  if (!o->p && !o->err) o->err = errno;  // posix_memalign's is its returned code
  // Every block's usable size, from the same library (ccache's aborts on a pointer it
  // does not own: an aligned block of size 0 was one, until 2026-12-04).
  if (o->p) o->usable_size = glibc ? g.malloc_usable_size(o->p) : ccache_malloc_usable_size(h, o->p);
  // realloc(p, 0) and reallocarray(p, 0, n) free p and return NULL (glibc 2.36): the
  // old block is gone either way; a failure leaves it, and it is freed here.
  bool freed_by_call = (c == CONF_REALLOC || c == CONF_REALLOCARRAY) && o->want == 0 && !o->p;
  if (old && !o->p && !freed_by_call) {
    const unsigned char *q = old;
    for (int i = 0; i < OLD_SIZE; i++)
      if (q[i] != (unsigned char)(i * 7 + 3)) o->kept = false;
    if (glibc)
      g.free(old);
    else
      ccache_free(h, old);
  }
}

// Whether n bytes at p are all zero: compared a page at a time with a zero page
// (memcmp is one checked call under ASan, where a byte loop is instrumented per byte).
static bool all_zero(const unsigned char *p, size_t n) {
  static const unsigned char zero[4096];
  for (size_t i = 0; i < n; i += sizeof zero)
    if (memcmp(p + i, zero, n - i < sizeof zero ? n - i : sizeof zero)) return false;
  return true;
}

// A calloc over 1 MiB is checked at 256 samples and its last byte. A sample whose page
// is not resident, on a machine with no swap configured, is in a private anonymous
// mapping (both libraries map nothing else) that the kernel fills with zeros on first
// access: it reads as zero without being read. Reading such samples was most of the
// conformance fuzzer's time: a fault and a page table per sample of a block of
// gigabytes, and their unmapping. A page with any content, stale bytes a broken calloc
// left included, is resident (or in swap: then every sample is read, as before; a
// swapoff under way is the one window where a page may still be in swap that this test
// does not see). A sample the sanitizer in this build would report (ASan poison, MSan
// uninitialized) is read too, so that it reports it as before. What a skipped sample no
// longer shows: a page in the middle of the block made inaccessible (the block's first
// and last bytes are still written, see usable).
#define PAGE 4096  // one page per mincore call: with larger pages, a query that is not
                   // aligned to one is refused (EINVAL) and the sample is read

static bool sanitizer_would_report(const unsigned char *p) {
#if CCACHE_HAVE_ASAN
  if (__asan_address_is_poisoned(p)) return true;
#endif
#if CCACHE_HAVE_MSAN
  if (__msan_test_shadow(p, 1) != -1) return true;
#endif
  (void)p;
  return false;
}

static bool swap_configured(void) {
  struct sysinfo si;
  return sysinfo(&si) != 0 || si.totalswap != 0;
}

// Whether the page holding p is not resident (false when mincore refuses).
static bool not_resident(const unsigned char *p) {
  unsigned char v = 1;
  return mincore((void *)((uintptr_t)p & ~(uintptr_t)(PAGE - 1)), PAGE, &v) == 0 && !(v & 1);
}

CCACHE_NO_COVERAGE static bool samples_zero(const unsigned char *p, size_t n) {
  bool no_swap = !swap_configured();
  for (size_t i = 0; i < n; i += n / 256)
    if (!no_swap || sanitizer_would_report(p + i) || !not_resident(p + i))
      if (p[i]) return false;
  return !p[n - 1];
}

// Whether a returned block holds what it must; "" or what is wrong.
CCACHE_NO_COVERAGE static const char *usable(const struct outcome *o) {
  unsigned char *p = o->p;
  size_t al = o->align;
  if (al && !(al & (al - 1)) && ((uintptr_t)p & (al - 1))) return "not aligned as asked";
  if (o->kept)
    for (int i = 0; i < OLD_SIZE && (size_t)i < o->want; i++)
      if (p[i] != (unsigned char)(i * 7 + 3)) return "realloc lost the old bytes";
  if (o->usable_size < o->want) return "malloc_usable_size is less than the request";
  if (o->want == 0) return "";
  if (o->zero) {  // every byte of a calloc up to 1 MiB; 256 samples of a larger one
    if (o->want <= (1 << 20) ? !all_zero(p, o->want) : !samples_zero(p, o->want))
      return "calloc memory not zero";
  }
  p[o->want - 1] = 0xA5;
  p[0] = 0x5A;
  if (p[0] != 0x5A || (o->want > 1 && p[o->want - 1] != 0xA5))
    return "the request's bytes are not usable";
  return "";
}

static void release(bool glibc, struct ccache_heap *h, struct outcome *o) {
  if (!o->p) return;
  if (glibc)
    g.free(o->p);
  else
    ccache_free(h, o->p);
}

static void describe(const struct outcome *o, char *out, size_t size) {
  if (o->p)
    snprintf(out, size, "a block at %p", o->p);
  else
    snprintf(out, size, "failure, error %d (%s)", o->err, strerror(o->err));
}

bool conformance_check(struct ccache_heap *heap, enum conformance_call c, size_t a, size_t b,
                       struct conformance_counts *counts, char *why, size_t why_size) {
  resolve();
  struct outcome go, co;
  run(true, NULL, c, a, b, &go);
  run(false, heap, c, a, b, &co);
  const char *cu = co.p ? usable(&co) : "";
  bool agree = !go.p == !co.p && (go.p || go.err == co.err) && !*cu && go.kept == co.kept;
  // glibc's block is the oracle's: whether it is usable only goes into a disagreement's
  // report (checking it on every call doubled the cost of a block of gigabytes).
  const char *gu = go.p && !agree ? usable(&go) : "";
  char gs[96], cs[96];
  describe(&go, gs, sizeof gs);
  describe(&co, cs, sizeof cs);
  size_t align = c >= CONF_ALIGNED_ALLOC && c <= CONF_MEMALIGN ? b : 0;
  size_t footprint = (a > SIZE_MAX - align ? SIZE_MAX : a + align);
  if (c == CONF_CALLOC || c == CONF_REALLOCARRAY) footprint = product(a, b);
  bool resource = !agree && !*cu && footprint >= FOOTPRINT_LIMIT && footprint != SIZE_MAX &&
                  !go.p != !co.p && (go.p ? co.err : go.err) == ENOMEM;
  if (!agree) {
    if (resource)
      snprintf(why, why_size, "%s(a=%zu, b=%zu): glibc: %s; ccache: %s (resource-dependent)",
               names[c], a, b, gs, cs);
    else
      snprintf(why, why_size, "%s(a=%zu, b=%zu): glibc: %s%s%s; ccache: %s%s%s%s", names[c], a, b,
               gs, *gu ? ", " : "", gu, cs, *cu ? ", " : "", cu,
               go.kept != co.kept ? " (the old block was not kept as glibc keeps it)" : "");
  }
  release(true, NULL, &go);
  release(false, heap, &co);
  if (agree)
    counts->agreed++;
  else if (resource)
    counts->resource_dependent++;
  else
    counts->disagreed++;
  return agree || resource;
}

static size_t add(size_t *out, size_t n, size_t max, size_t v) {
  if (n < max) out[n] = v;
  return n + 1;
}

size_t conformance_sizes(size_t *out, size_t max) {
  size_t n = 0;
  for (size_t v = 0; v <= 17; v++) n = add(out, n, max, v);
  for (unsigned cls = 1; cls < CCACHE_NUM_CLASSES; cls++) {
    size_t s = ccache_class_size(cls);
    n = add(out, n, max, s - 1);
    n = add(out, n, max, s);
    n = add(out, n, max, s + 1);
  }
  n = add(out, n, max, CCACHE_MAX_SMALL - 1);
  n = add(out, n, max, CCACHE_MAX_SMALL);
  n = add(out, n, max, CCACHE_MAX_SMALL + 1);
  const size_t pages[] = {1, 2, 3, 4, 8, 16, 32, 64, 256, 1024, 4096};
  for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
    size_t s = pages[i] * 4096;
    n = add(out, n, max, s - 1);
    n = add(out, n, max, s);
    n = add(out, n, max, s + 1);
  }
  n = add(out, n, max, (size_t)128 << 10);  // glibc's mmap threshold
  n = add(out, n, max, ((size_t)128 << 10) + 1);
  // SIZE_MAX - k: every k up to 64, and each page multiple up to 4 pages +-1.
  for (size_t k = 0; k <= 64; k++) n = add(out, n, max, SIZE_MAX - k);
  for (size_t pg = 1; pg <= 4; pg++)
    for (size_t d = 0; d < 3; d++) n = add(out, n, max, SIZE_MAX - (pg * 4096 - 1 + d));
  n = add(out, n, max, (size_t)PTRDIFF_MAX - 1);
  n = add(out, n, max, (size_t)PTRDIFF_MAX);
  n = add(out, n, max, (size_t)PTRDIFF_MAX + 1);
  return n;
}

size_t conformance_alignments(size_t *out, size_t max) {
  size_t n = 0;
  const size_t odd[] = {0, 3, 5, 6, 12, 24, 48, 100, 4095, 4097, 12288};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) n = add(out, n, max, odd[i]);
  for (int k = 0; k <= 40; k++) {
    n = add(out, n, max, (size_t)1 << k);
    if (k >= 2) n = add(out, n, max, ((size_t)1 << k) + 1);
  }
  n = add(out, n, max, (size_t)1 << 62);
  n = add(out, n, max, (size_t)1 << 63);
  n = add(out, n, max, SIZE_MAX);
  return n;
}

size_t conformance_factors(size_t *out, size_t max) {
  size_t n = 0;
  const size_t f[] = {0,
                      1,
                      2,
                      3,
                      16,
                      4096,
                      (size_t)1 << 31,
                      (size_t)1 << 32,
                      ((size_t)1 << 32) + 1,
                      (size_t)1 << 62,
                      (size_t)1 << 63,
                      SIZE_MAX / 2,
                      SIZE_MAX / 2 + 1,
                      SIZE_MAX / 3,
                      SIZE_MAX / 3 + 1,
                      SIZE_MAX / 4096,
                      SIZE_MAX / 4096 + 1,
                      SIZE_MAX - 1,
                      SIZE_MAX};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) n = add(out, n, max, f[i]);
  return n;
}
