// canary_test: proves that a sanitizer config is really live.
//
// Usage: canary_test asan|tsan|ubsan|msan
// The test re-executes itself with --buggy KIND, which runs a known bug of that
// kind in a fresh process, and captures that process's stderr. When this build has
// the sanitizer on, the test passes only if the child died with the sanitizer's
// report. When it does not, the test prints SKIPPED with the reason and passes.
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sanitizers/sanitizers.h"

// --- the bugs. Each is hidden behind volatile so the compiler cannot fold it away.

static int run_heap_overflow(void) {
  char *volatile p = malloc(16);
  volatile size_t i = 16;
  p[i] = 1;  // one past the end
  int r = p[0];
  free(p);
  return r;
}

static int racy_counter;  // deliberately unsynchronized

static void *race_writer(void *arg) {
  (void)arg;
  racy_counter++;
  return NULL;
}

static int run_data_race(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, race_writer, NULL) != 0) return 2;
  // Give the thread time to write first; no synchronization orders the two writes.
  struct timespec ts = {0, 50 * 1000 * 1000};
  nanosleep(&ts, NULL);
  racy_counter++;
  pthread_join(t, NULL);
  return 0;
}

static int run_signed_overflow(void) {
  volatile int x = INT_MAX;
  volatile int y = x + 1;
  return y == 0;
}

static int run_uninitialized_read(void) {
  int *volatile p = malloc(sizeof *p);
  int r = 0;
  if (*p == 42) {  // branch on an uninitialized value; the call keeps it a branch
    puts("uninitialized value was 42");
    r = 1;
  }
  free(p);
  return r;
}

struct canary {
  const char *kind;
  int enabled;
  const char *config;
  int (*bug)(void);
  const char *expected;  // must appear in the child's stderr
};

static const struct canary canaries[] = {
    {"asan", CCACHE_HAVE_ASAN, "--config=asan", run_heap_overflow,
     "ERROR: AddressSanitizer: heap-buffer-overflow"},
    {"tsan", CCACHE_HAVE_TSAN, "--config=tsan", run_data_race,
     "WARNING: ThreadSanitizer: data race"},
    {"ubsan", CCACHE_HAVE_UBSAN, "--config=ubsan", run_signed_overflow,
     "runtime error: signed integer overflow"},
    {"msan", CCACHE_HAVE_MSAN, "--config=msan", run_uninitialized_read,
     "WARNING: MemorySanitizer: use-of-uninitialized-value"},
};

static const struct canary *find(const char *kind) {
  for (size_t i = 0; i < sizeof canaries / sizeof canaries[0]; i++)
    if (strcmp(canaries[i].kind, kind) == 0) return &canaries[i];
  return NULL;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--buggy") == 0) {
    const struct canary *c = find(argv[2]);
    if (!c) return 2;
    printf("bug returned %d\n", c->bug());
    return 0;  // reached only when no sanitizer stopped us
  }
  if (argc != 2 || !find(argv[1])) {
    fprintf(stderr, "usage: %s asan|tsan|ubsan|msan\n", argv[0]);
    return 2;
  }
  const struct canary *c = find(argv[1]);
  if (!c->enabled) {
    printf("SKIPPED: %s canary: this build has sanitizers [%s]; the %s canary runs only "
           "under %s\n",
           c->kind, ccache_sanitizer_names(), c->kind, c->config);
    return 0;
  }

  int fds[2];
  if (pipe(fds) != 0) {
    perror("pipe");
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 1;
  }
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    char *const args[] = {"canary_test", "--buggy", (char *)c->kind, NULL};
    execv("/proc/self/exe", args);
    _exit(127);
  }
  close(fds[1]);
  static char log[1 << 16];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fds[0], log + len, sizeof log - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (len == sizeof log - 1) break;
  }
  log[len] = 0;
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);

  int died = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int reported = strstr(log, c->expected) != NULL;
  printf("%s canary (build: %s): child %s, report %s\n", c->kind, ccache_sanitizer_names(),
         died ? "died" : "exited 0", reported ? "found" : "MISSING");
  if (!died || !reported) {
    printf("FAIL: %s is configured but did not report the seeded bug; expected \"%s\" in:\n%s\n",
           c->kind, c->expected, log);
    return 1;
  }
  printf("PASS: %s caught the seeded bug\n", c->kind);
  return 0;
}
