// fence_test: after rseq_fence_all() / rseq_fence_cpu() returns, no critical section that
// started before it can still commit. The selftests' membarrier pattern: workers add
// through a pointer loaded inside the section (rseq_offset_deref_addv); a manager swaps
// the pointer to the other array, fences, and then the old array must stay still.
// Delay injection inside the section (between the load and the commit) makes a missed
// fence show. Runs with membarrier and with the forced migration fallback.
//   --seconds X  (default 1 per method)
//   --index cpu|cid  the workers' index (default cpu): with mm_cid the counter slots are
//                    cids, which are not CPUs, and the fences must still cover them
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

static int ncpu;    // CPUs: what rseq_fence_cpu takes
static int nslots;  // counter slots: CPUs or cids
static enum rseq_index idx = RSEQ_INDEX_CPU_ID;
static intptr_t *arrays[2];
static intptr_t active;         // points at arrays[0] or arrays[1]; swapped by the manager
static _Atomic int stop_flag;   // relaxed: a stop request, polled
static double seconds = 1.0;

static void *worker(void *arg) {
  (void)arg;
  while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
    int slot = rseq_current_index(idx);
    CHECK(slot >= 0 && slot < nslots);
    rseq_offset_deref_addv(idx, &active, slot * (long)sizeof(intptr_t), 1, slot);
  }
  return NULL;
}

static intptr_t sum(const intptr_t *a) {
  intptr_t s = 0;
  for (int c = 0; c < nslots; c++) s += __atomic_load_n(&a[c], __ATOMIC_RELAXED);
  return s;
}

// Returns the number of rounds in which the old array changed after the fence.
static long run(const char *label, int how /* 0 none, 1 all, 2 per cpu */, long *rounds_out) {
  int cpus[256];
  int nthreads = 2 * test_allowed_cpus(cpus, 256);
  pthread_t t[512];
  atomic_store_explicit(&stop_flag, 0, memory_order_relaxed);
  for (int i = 0; i < nthreads; i++) CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0);
  long rounds = 0, violations = 0;
  int cur = 0;
  double end = test_now_s() + seconds;
  while (test_now_s() < end) {
    int next = 1 - cur;
    // Release: the new target is visible before we fence (the kernel orders the rest).
    __atomic_store_n(&active, (intptr_t)arrays[next], __ATOMIC_RELEASE);
    if (how == 1) {
      CHECK(rseq_fence_all() == 0, "rseq_fence_all: errno %d (%s)", errno, rseq_fence_method());
    } else if (how == 2) {
      for (int c = 0; c < ncpu; c++)
        CHECK(rseq_fence_cpu(c) == 0, "rseq_fence_cpu(%d): errno %d", c, errno);
    }
    intptr_t before = sum(arrays[cur]);
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, NULL);
    if (sum(arrays[cur]) != before) violations++;
    rounds++;
    cur = next;
  }
  atomic_store_explicit(&stop_flag, 1, memory_order_relaxed);
  for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
  printf("%-40s %6ld rounds, %4ld with a change after the swap (%d threads)\n", label, rounds,
         violations, nthreads);
  *rounds_out = rounds;
  return violations;
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  for (int i = 1; i + 1 < argc; i++) {
    if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    if (!strcmp(argv[i], "--index")) idx = (enum rseq_index)rseq_index_parse(argv[i + 1]);
  }
  if (!rseq_available()) test_skip("rseq unavailable: %s", rseq_unavailable_reason());
  if (idx == RSEQ_INDEX_MM_CID && !rseq_mm_cid_available())
    test_skip("the mm_cid index is not available on this kernel");
  printf("index: %s\n", rseq_index_name(idx));
  CHECK(rseq_inject_enabled(), "link //rseq:rseq_inject");
  ncpu = rseq_index_count(RSEQ_INDEX_CPU_ID);
  nslots = rseq_index_count(idx);
  errno = 0;
  CHECK(rseq_fence_cpu(-1) == -1 && errno == EINVAL);
  CHECK(rseq_fence_cpu(ncpu) == -1 && errno == EINVAL);
  arrays[0] = calloc((size_t)nslots, sizeof(intptr_t));
  arrays[1] = calloc((size_t)nslots, sizeof(intptr_t));
  active = (intptr_t)arrays[0];
  // A long delay between loading the pointer and adding through it.
  rseq_inject_set_loops(1, 20000);
  printf("fence method: %s\n", rseq_fence_method());

  long rounds;
  // Control: with no fence, sections in flight still add to the old array. Printed,
  // not asserted: it depends on timing, but shows the check can see a missed fence.
  long control = run("no fence (control)", 0, &rounds);

  test_context("method=%s fence_all index=%s", rseq_fence_method(), rseq_index_name(idx));
  long v = run("membarrier: rseq_fence_all", 1, &rounds);
  CHECK(v == 0, "%ld of %ld rounds changed after rseq_fence_all", v, rounds);
  CHECK(rounds > 10);
  test_context("method=%s fence_cpu", rseq_fence_method());
  v = run("membarrier: rseq_fence_cpu each cpu", 2, &rounds);
  CHECK(v == 0, "%ld of %ld rounds changed after rseq_fence_cpu", v, rounds);

  rseq_fence_force_fallback(true);
  printf("fence method: %s\n", rseq_fence_method());
  test_context("method=%s fence_all", rseq_fence_method());
  v = run("migration fallback: rseq_fence_all", 1, &rounds);
  CHECK(v == 0, "%ld of %ld rounds changed after the fallback fence", v, rounds);
  v = run("migration fallback: rseq_fence_cpu", 2, &rounds);
  CHECK(v == 0, "%ld of %ld rounds changed after the fallback per-cpu fence", v, rounds);
  rseq_fence_force_fallback(false);
  printf("control saw %ld changes without a fence; every fenced round saw none\n", control);
  printf("PASS\n");
  return 0;
}
