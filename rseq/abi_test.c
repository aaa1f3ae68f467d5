// abi_test: our ABI definitions match the kernel's header; pinned to each allowed CPU,
// cpu_id, cpu_id_start and sched_getcpu() agree; mm_cid lies in range, and threads
// that run at the same moment have distinct mm_cids.
#include <linux/rseq.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

static void check_layout(void) {
  CHECK_EQ(offsetof(struct rseq, cpu_id_start), offsetof(struct rseq_abi, cpu_id_start));
  CHECK_EQ(offsetof(struct rseq, cpu_id), offsetof(struct rseq_abi, cpu_id));
  CHECK_EQ(offsetof(struct rseq, rseq_cs), offsetof(struct rseq_abi, rseq_cs));
  CHECK_EQ(offsetof(struct rseq, flags), offsetof(struct rseq_abi, flags));
  CHECK_EQ(offsetof(struct rseq_cs, start_ip), offsetof(struct rseq_cs_desc, start_ip));
  CHECK_EQ(offsetof(struct rseq_cs, post_commit_offset),
           offsetof(struct rseq_cs_desc, post_commit_offset));
  CHECK_EQ(offsetof(struct rseq_cs, abort_ip), offsetof(struct rseq_cs_desc, abort_ip));
  CHECK_EQ(sizeof(struct rseq_cs), sizeof(struct rseq_cs_desc));
  CHECK_EQ(RSEQ_FLAG_UNREGISTER, 1);
}

static void check_pinned(void) {
  int cpus[1024];
  int n = test_allowed_cpus(cpus, 1024);
  CHECK(n > 0);
  struct rseq_abi *a = rseq_thread_area();
  CHECK(a != NULL);
  for (int i = 0; i < n; i++) {
    test_context("pinned to cpu %d", cpus[i]);
    CHECK(test_pin(cpus[i]) == 0);
    int c = rseq_current_index(RSEQ_INDEX_CPU_ID);
    CHECK_EQ(c, cpus[i]);
    CHECK_EQ(__atomic_load_n(&a->cpu_id, __ATOMIC_RELAXED), cpus[i]);
    CHECK_EQ(__atomic_load_n(&a->cpu_id_start, __ATOMIC_RELAXED), cpus[i]);
    CHECK_EQ(sched_getcpu(), cpus[i]);
    CHECK(c < rseq_index_count(RSEQ_INDEX_CPU_ID));
    if (rseq_mm_cid_available()) {
      int cid = rseq_current_index(RSEQ_INDEX_MM_CID);
      CHECK(cid >= 0 && cid < rseq_index_count(RSEQ_INDEX_MM_CID), "mm_cid %d", cid);
    }
    printf("cpu %d: cpu_id, cpu_id_start and sched_getcpu agree\n", cpus[i]);
  }
  CHECK(test_unpin(cpus, n) == 0);
}

// Distinct mm_cids: threads pinned to distinct CPUs meet at a spin barrier, read their
// mm_cid, and meet again. A round counts only if no thread was switched out between
// the two barriers (its context-switch counts did not move): then all of them were
// running at once, and the kernel guarantees running threads distinct mm_cids.
#define MAX_T 16
static int nthreads;
static _Atomic int arrive1, arrive2;
static int round_cids[MAX_T];
static int round_clean[MAX_T];

static long switches(void) {
  struct rusage ru;
  getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_nvcsw + ru.ru_nivcsw;
}

struct cid_arg {
  int slot, cpu, rounds;
};
static _Atomic int go_round;

static void *cid_thread(void *p) {
  struct cid_arg *arg = p;
  CHECK(test_pin(arg->cpu) == 0);
  for (int r = 0; r < arg->rounds; r++) {
    // Wait for the main thread to open round r. Acquire: pairs with its release.
    while (atomic_load_explicit(&go_round, memory_order_acquire) <= r) {
    }
    long before = switches();
    atomic_fetch_add_explicit(&arrive1, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&arrive1, memory_order_acquire) < nthreads * (r + 1)) {
    }
    round_cids[arg->slot] = rseq_current_index(RSEQ_INDEX_MM_CID);
    atomic_fetch_add_explicit(&arrive2, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&arrive2, memory_order_acquire) < nthreads * (r + 1)) {
    }
    round_clean[arg->slot] = switches() == before;
    // Third meeting point so the main thread reads complete rounds.
    static _Atomic int arrive3;
    atomic_fetch_add_explicit(&arrive3, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&arrive3, memory_order_acquire) < nthreads * (r + 1)) {
    }
    if (arg->slot == 0) atomic_store_explicit(&go_round, -(r + 1), memory_order_release);
  }
  return NULL;
}

static void check_distinct_mm_cids(void) {
  if (!rseq_mm_cid_available()) {
    printf("SKIPPED: mm_cid distinctness: kernel does not maintain mm_cid\n");
    return;
  }
  int cpus[MAX_T];
  nthreads = test_allowed_cpus(cpus, MAX_T);
  if (nthreads < 2) {
    printf("SKIPPED: mm_cid distinctness needs 2 allowed CPUs, have %d\n", nthreads);
    return;
  }
  enum { ROUNDS = 200 };
  pthread_t t[MAX_T];
  struct cid_arg args[MAX_T];
  for (int i = 0; i < nthreads; i++) {
    args[i] = (struct cid_arg){i, cpus[i], ROUNDS};
    CHECK(pthread_create(&t[i], NULL, cid_thread, &args[i]) == 0);
  }
  int clean_rounds = 0;
  for (int r = 0; r < ROUNDS; r++) {
    atomic_store_explicit(&go_round, r + 1, memory_order_release);
    while (atomic_load_explicit(&go_round, memory_order_acquire) != -(r + 1)) {
    }
    int clean = 1;
    for (int i = 0; i < nthreads; i++) clean &= round_clean[i];
    if (!clean) continue;
    clean_rounds++;
    for (int i = 0; i < nthreads; i++) {
      CHECK(round_cids[i] >= 0 && round_cids[i] < rseq_index_count(RSEQ_INDEX_MM_CID));
      for (int j = 0; j < i; j++)
        CHECK(round_cids[i] != round_cids[j], "round %d: threads %d and %d share mm_cid %d", r,
              i, j, round_cids[i]);
    }
  }
  for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
  printf("mm_cid: %d of %d rounds ran with all %d threads on CPU at once; cids distinct in all\n",
         clean_rounds, ROUNDS, nthreads);
  CHECK(clean_rounds > 0, "no round ran without a context switch: machine too loaded to tell");
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  check_layout();
  if (!rseq_available()) test_skip("rseq unavailable: %s", rseq_unavailable_reason());
  check_pinned();
  check_distinct_mm_cids();
  printf("PASS\n");
  return 0;
}
