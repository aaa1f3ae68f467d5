// compare_twice_test: the debug variant catches a kernel that fails to abort a section.
// We play that kernel: a fake-CPU thread (no kernel registration, so no aborts) enters
// rseq_addv and waits in its injected delay loop; another thread then rewrites the
// first one's cpu_id, as a migration would, without any abort. With compare-twice the
// process must die with a clear message naming the section; without it (the inject
// variant) the stale commit goes through silently, which is what this variant is for.
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

static struct rseq_abi *_Atomic victim_area;  // published by the victim, acq/rel

static void *migrate_without_abort(void *arg) {
  (void)arg;
  struct rseq_abi *a;
  while (!(a = atomic_load_explicit(&victim_area, memory_order_acquire))) {
  }
  struct timespec ts = {0, 20 * 1000 * 1000};  // the victim is inside its delay loop
  nanosleep(&ts, NULL);
  __atomic_store_n(&a->cpu_id, 1, __ATOMIC_RELAXED);
  return NULL;
}

static int child(void) {
  CHECK(rseq_fake_cpu_enter() == 0);
  rseq_fake_cpu_set(0);
  rseq_inject_set_loops(1, 1u << 31);  // about a second inside the section
  pthread_t t;
  CHECK(pthread_create(&t, NULL, migrate_without_abort, NULL) == 0);
  atomic_store_explicit(&victim_area, rseq_thread_area(), memory_order_release);
  intptr_t v = 0;
  int r = rseq_addv(RSEQ_INDEX_CPU_ID, &v, 1, 0);
  printf("section returned %s with v=%ld: the missed abort went unnoticed\n", rseq_result_name(r),
         (long)v);
  pthread_join(t, NULL);
  return 0;
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (argc == 2 && !strcmp(argv[1], "--child")) return child();
  if (!rseq_available()) test_skip("rseq unavailable: %s", rseq_unavailable_reason());
  char out[8192];
  char *args[] = {"--child", NULL};
  int status = test_run_self(args, NULL, false, out, sizeof out);
  printf("child output:\n%s\n", out);
#ifdef RSEQ_COMPARE_TWICE_EXPECTED
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %d: not aborted", status);
  CHECK(strstr(out, "rseq compare-twice: section rseq_addv: the cpu changed") != NULL,
        "no compare-twice message");
  printf("compare-twice caught the missed abort\n");
#else
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(strstr(out, "returned commit") != NULL, "without compare-twice the commit goes through");
  printf("without compare-twice the stale commit went through (as expected for this variant)\n");
#endif
  printf("PASS\n");
  return 0;
}
