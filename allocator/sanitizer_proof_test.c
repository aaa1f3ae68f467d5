// sanitizer_proof_test: the allocator tells the sanitizers the truth.
//   asan  a use-after-free of a block sitting in a CPU cache is reported (the block is
//         poisoned when it is freed, though the memory never goes back to libc), and
//         of a large block kept as a spare mapping (also one that had reused a larger
//         spare, at its start and in the spare's tail), and an overflow past a block
//         that reused a larger spare;
//   msan  reading memory handed out by ccache_malloc before writing it is reported.
// Each bug runs in a child; the test passes only if the report appears. Under a build
// without that sanitizer the case logs SKIPPED with the reason.
// And one case the other way round (asan): memory the allocator gave back to the OS on
// a failure path carries no stale poison, so that what is mapped there later is usable
// without a false report.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"
#include "sanitizers/sanitizers.h"

// Maps n bytes (read-write, anonymous) at exactly addr, or fails (MAP_FAILED): the
// refused-table case puts a mapping back where one was unmapped.
static void *map_at(void *addr, size_t n) {
  return mmap(addr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
}

static int child(const char *which, const char *mode) {
  struct ccache_options o = {.mode = (enum rseq_mode)rseq_mode_parse(mode)};
  struct ccache_heap *h = ccache_heap_create(&o);
  if (!h) return 3;
  if (!strcmp(which, "uaf")) {
    char *volatile p = ccache_malloc(h, 48);
    memset(p, 1, 48);
    ccache_free(h, p);  // now in this CPU's cache
    struct ccache_stats st;
    ccache_get_stats(h, &st);
    printf("cached blocks of 48 B: %lu\n", (unsigned long)st.classes[ccache_size_to_class(48)].cached_cpu);
    fflush(stdout);
    return p[7];  // use after free
  }
  if (!strcmp(which, "uaf-large")) {
    char *volatile p = ccache_malloc(h, 1 << 20);
    memset(p, 1, 1 << 20);
    ccache_free(h, p);  // now a spare mapping, still mapped
    struct ccache_stats st;
    ccache_get_stats(h, &st);
    printf("large spares: %lu\n", (unsigned long)st.large_spares);
    fflush(stdout);
    return p[4096 * 3];  // use after free
  }
  if (!strcmp(which, "overflow-large")) {
    char *a = ccache_malloc(h, 1 << 20);
    ccache_free(h, a);                          // a 1 MiB spare
    char *volatile p = ccache_malloc(h, 700 << 10);  // gets it: 324 KiB past the block
    printf("reused the spare: %s\n", p == a ? "yes" : "no");
    fflush(stdout);
    return p[(700 << 10) + 100];  // past the end of the block, inside the spare
  }
  if (!strcmp(which, "uaf-reused-spare") || !strcmp(which, "uaf-reused-spare-tail")) {
    // A block that reused a bigger spare, freed again: a spare once more, poisoned whole
    // (the block's pages by the free, the tail still from the first reuse).
    char *a = ccache_malloc(h, 1 << 20);
    ccache_free(h, a);
    char *volatile p = ccache_malloc(h, 700 << 10);
    memset(p, 1, 700 << 10);
    ccache_free(h, p);
    struct ccache_stats st;
    ccache_get_stats(h, &st);
    printf("reused the spare: %s; large spares: %lu\n", p == a ? "yes" : "no",
           (unsigned long)st.large_spares);
    fflush(stdout);
    return !strcmp(which, "uaf-reused-spare") ? p[100] : p[(1 << 20) - 100];
  }
  if (!strcmp(which, "refused-table-spare")) {
    // A request that takes a spare whole (its tail poisoned) and then finds the OS
    // refusing a bigger table of large blocks unmaps the spare: the tail's shadow must
    // be cleared first (fixed in fe237c0), or whatever is mapped there later is
    // reported as poisoned. Each round adds a 1 MiB block to the table (too big for
    // the spare) and retries with the next mapping refused, until the table must grow.
#if CCACHE_HAVE_ASAN
    // The case rests on ASan keeping a range's shadow across munmap (clang 14's and gcc
    // 12's runtimes do): with a runtime that clears it there, it would pass vacuously.
    char *s = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) return 11;
    CCACHE_ASAN_POISON(s + 4096, 4096);
    munmap(s, 8192);
    char *t = map_at(s, 8192);
    bool kept = t == s && __asan_address_is_poisoned(t + 4096);
    if (t != MAP_FAILED) {
      CCACHE_ASAN_UNPOISON(t + 4096, 4096);
      munmap(t, 8192);
    }
    if (!kept) {
      printf("skipped: this ASan runtime does not keep a range's poison across munmap and "
             "mmap (or the probe's range could not be mapped again): nothing to check\n");
      return 0;
    }
#endif
    char *a = ccache_malloc(h, 768 << 10);
    ccache_free(h, a);  // a 768 KiB spare, poisoned whole
    char *p = a;
    int round = 0;
    for (; p && round < 10000; round++) {
      ccache_test_fail_next_os_maps(1);
      p = ccache_malloc(h, 512 << 10);  // the spare whole (a tail of 256 KiB): no mapping
      int err = errno;
      ccache_test_fail_next_os_maps(0);
      if (!p) {
        if (err != ENOMEM) return 5;
        break;
      }
      if (p != a) return 6;  // did not take the spare
      ccache_free(h, p);     // the spare again
      if (!ccache_malloc(h, 1 << 20)) return 7;
    }
    if (p) return 8;  // the table never had to grow
    struct ccache_stats st;
    ccache_get_stats(h, &st);
    if (st.large_spares != 0) return 10;  // the failure came before the spare was taken
    void *m = map_at(a, 768 << 10);
    printf("refused after %d rounds; remapped the old spare: %s\n", round, m == a ? "yes" : "no");
    fflush(stdout);
    if (m != a) return 9;
    char *volatile tail = (char *)m + (600 << 10);
    *tail = 1;  // the old spare's tail: a report here is a false one
    printf("wrote the old spare's tail: clean\n");
    return 0;
  }
  int *volatile q = ccache_malloc(h, sizeof(int) * 4);
  if (q[2] == 1234) puts("uninitialized value was 1234");  // branch on uninitialized memory
  return 0;
}

// Runs case `which` in a child, its output into out; false (and SKIPPED logged) when the
// build lacks the sanitizer the case needs.
static bool run_child(const char *which, const char *mode, bool enabled, const char *config,
                      char *out, size_t size, int *status) {
  if (!enabled) {
    printf("SKIPPED: %s (%s mode): needs %s; this build has [%s]\n", which, mode, config,
           ccache_sanitizer_names());
    return false;
  }
  char *args[] = {"--child", (char *)which, (char *)mode, NULL};
  *status = test_run_self(args, NULL, false, out, size);
  test_context("case=%s mode=%s", which, mode);
  return true;
}

static void run(const char *which, const char *mode, bool enabled, const char *config,
                const char *expect) {
  char out[65536];
  int status;
  if (!run_child(which, mode, enabled, config, out, sizeof out, &status)) return;
  CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "child exited cleanly:\n%s", out);
  CHECK(strstr(out, expect) != NULL, "no '%s' report:\n%s", expect, out);
  if (!strcmp(which, "uaf")) {
    const char *line = strstr(out, "cached blocks of 48 B: ");
    unsigned long cached = 0;
    CHECK(line && sscanf(line, "cached blocks of 48 B: %lu", &cached) == 1 && cached > 0,
          "the freed block was not in a CPU cache:\n%s", out);
  }
  if (!strncmp(which, "uaf-reused-spare", 16))
    CHECK(strstr(out, "reused the spare: yes; large spares: 1") != NULL,
          "the block did not reuse the spare, or was not kept as one:\n%s", out);
  if (!strcmp(which, "overflow-large"))
    CHECK(strstr(out, "reused the spare: yes") != NULL, "the block did not reuse the spare:\n%s", out);
  if (!strcmp(which, "uaf-large")) {
    const char *line = strstr(out, "large spares: ");
    unsigned long spares = 0;
    CHECK(line && sscanf(line, "large spares: %lu", &spares) == 1 && spares > 0,
          "the freed large block was not kept as a spare:\n%s", out);
  }
  printf("ok: %s (%s mode) reported: %s\n", which, mode, expect);
}

// A case that must run cleanly: exit 0, no report, and `expect` in its output.
static void run_clean(const char *which, const char *mode, bool enabled, const char *config,
                      const char *expect) {
  char out[65536];
  int status;
  if (!run_child(which, mode, enabled, config, out, sizeof out, &status)) return;
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && !strstr(out, "Sanitizer"),
        "child failed (status %#x; exit codes 5-11: see the case in child()):\n%s", status, out);
  const char *skipped = strstr(out, "skipped: ");
  if (skipped) {
    printf("SKIPPED: %s (%s mode): %s", which, mode, skipped + 9);
    return;
  }
  CHECK(strstr(out, expect) != NULL, "no '%s' in the output:\n%s", expect, out);
  printf("ok: %s (%s mode): %s\n", which, mode, expect);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (argc == 4 && !strcmp(argv[1], "--child")) return child(argv[2], argv[3]);
  const char *modes[] = {"rseq", "cas"};
  for (int m = 0; m < 2; m++) {
    if (m == 0 && !rseq_available()) continue;
    run("uaf", modes[m], CCACHE_HAVE_ASAN, "--config=asan", "ERROR: AddressSanitizer: use-after-poison");
    run("uaf-large", modes[m], CCACHE_HAVE_ASAN, "--config=asan", "ERROR: AddressSanitizer: use-after-poison");
    run("overflow-large", modes[m], CCACHE_HAVE_ASAN, "--config=asan", "ERROR: AddressSanitizer: use-after-poison");
    run("uaf-reused-spare", modes[m], CCACHE_HAVE_ASAN, "--config=asan", "ERROR: AddressSanitizer: use-after-poison");
    run("uaf-reused-spare-tail", modes[m], CCACHE_HAVE_ASAN, "--config=asan", "ERROR: AddressSanitizer: use-after-poison");
    run("uninit", modes[m], CCACHE_HAVE_MSAN, "--config=msan", "WARNING: MemorySanitizer: use-of-uninitialized-value");
    run_clean("refused-table-spare", modes[m], CCACHE_HAVE_ASAN, "--config=asan", "wrote the old spare's tail: clean");
  }
  printf("PASS\n");
  return 0;
}
