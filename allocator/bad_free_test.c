// bad_free_test: invalid frees and double frees are detected in both modes, reported
// with the address, and the process aborts; nothing is silently corrupted. Each case
// runs in a child process (it must abort) and the parent checks its report.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"

static const char *cases[] = {
    "double_free_small", "double_free_large", "stack_pointer", "interior_pointer",
    "libc_pointer",      "wrong_sized_free",  "usable_size_after_free", "free_after_cache_reuse",
};
static const char *expected[] = {
    "double free",   "invalid or double free (no live block of this heap there)", "free",
    "invalid free (not the start of a block)", "invalid or double free", "sized free with a size larger than the block",
    "malloc_usable_size of a block that is not allocated", "double free",
};

static int child(const char *mode_name, const char *which) {
  struct ccache_options o = {.mode = (enum rseq_mode)rseq_mode_parse(mode_name)};
  struct ccache_heap *h = ccache_heap_create(&o);
  if (!h) return 3;
  char *p = ccache_malloc(h, 64);
  void *bad = NULL;
  if (!strcmp(which, "double_free_small")) {
    ccache_free(h, p);
    bad = p;
  } else if (!strcmp(which, "double_free_large")) {
    bad = ccache_malloc(h, 1 << 20);
    ccache_free(h, bad);
  } else if (!strcmp(which, "stack_pointer")) {
    int local;
    bad = &local;
  } else if (!strcmp(which, "interior_pointer")) {
    bad = p + 16;
  } else if (!strcmp(which, "libc_pointer")) {
    bad = malloc(64);
  } else if (!strcmp(which, "wrong_sized_free")) {
    printf("bad pointer %p\n", (void *)p);
    fflush(stdout);
    ccache_free_sized(h, p, 5000);
    return 0;
  } else if (!strcmp(which, "usable_size_after_free")) {
    ccache_free(h, p);
    printf("bad pointer %p\n", (void *)p);
    fflush(stdout);
    ccache_malloc_usable_size(h, p);
    return 0;
  } else if (!strcmp(which, "free_after_cache_reuse")) {
    // Freed, then handed out again to someone else, then the stale owner frees it,
    // then the new owner frees it: the second of those is the double free.
    ccache_free(h, p);
    char *q = ccache_malloc(h, 64);
    if (q != p) return 4;  // the per-CPU cache is LIFO: expected the same block
    ccache_free(h, p);     // stale owner: legal as far as the heap can tell
    bad = q;
  }
  printf("bad pointer %p\n", bad);
  fflush(stdout);
  ccache_free(h, bad);
  return 0;  // not reached when the heap catches it
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (argc == 4 && !strcmp(argv[1], "--child")) return child(argv[2], argv[3]);
  const char *modes[] = {"rseq", "cas"};
  for (int m = 0; m < 2; m++) {
    if (m == 0 && !rseq_available()) {
      printf("SKIPPED: rseq mode: %s\n", rseq_unavailable_reason());
      continue;
    }
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
      test_context("mode=%s case=%s", modes[m], cases[c]);
      char out[8192];
      char *args[] = {"--child", (char *)modes[m], (char *)cases[c], NULL};
      int status = test_run_self(args, NULL, false, out, sizeof out);
      CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %#x; output:\n%s",
            status, out);
      char *line = strstr(out, "bad pointer ");
      CHECK(line != NULL, "no pointer printed:\n%s", out);
      void *ptr = NULL;
      sscanf(line, "bad pointer %p", &ptr);
      char want[128];
      snprintf(want, sizeof want, ": %p (heap", ptr);
      CHECK(strstr(out, expected[c]) != NULL, "report lacks '%s':\n%s", expected[c], out);
      CHECK(strstr(out, want) != NULL, "report lacks the address %p:\n%s", ptr, out);
      printf("ok: mode=%s %-24s reported: %s", modes[m], cases[c], strstr(out, "ccache:"));
    }
  }
  printf("PASS\n");
  return 0;
}
