// threads_test: the heap under threads. Workers allocate blocks of random sizes with a
// content pattern, keep some, free some, and hand some to other workers, who check the
// pattern and free them (cross-thread frees). Workers are torn down and recreated every
// round (thread churn). A drainer thread keeps taking random CPUs' caches back
// (ccache_drain_cpu, fenced) while they are in use; signals interrupt the workers'
// critical sections; a fork child allocates and frees while the parent's threads run.
// At the end, with every block freed: nothing in use, the heap's invariants hold, and
// in rseq mode the fast-path sections were aborted at least once.
// Flags: --mode rseq|cas --index cpu|cid --threads N --rounds N --ops N --seed S
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"

static struct {
  enum rseq_mode mode;
  enum rseq_index index;
  int threads, rounds;
  long ops;
  uint64_t seed;
} opt = {RSEQ_MODE_RSEQ, RSEQ_INDEX_CPU_ID, 0, 4, 20000, 1};

static struct ccache_heap *heap;

struct block {
  uint32_t size;
  uint32_t tag;  // written into every byte of the block (low byte), checked before free
};

// A mailbox per worker: other workers drop blocks here for it to free.
#define MAILBOX 256
struct mailbox {
  // Guards the slots: a tiny exchange between two threads, not a fast path.
  pthread_mutex_t lock;
  void *slots[MAILBOX];
  int n;
} *boxes;

static _Atomic int stop_drainer;  // relaxed: a stop request
static _Atomic long cross_frees, drains_done;  // relaxed: totals read after joins

static void fill(unsigned char *p, uint32_t size, uint32_t tag) {
  memcpy(p, &size, sizeof size);
  for (uint32_t i = sizeof size; i < size; i++) p[i] = (unsigned char)(tag + i);
}

static void check_and_free(unsigned char *p, const char *who) {
  uint32_t size;
  memcpy(&size, p, sizeof size);
  CHECK(size >= 5 && size <= 300005, "%s: block %p header %u", who, (void *)p, size);
  uint32_t tag = p[4] - 4;
  for (uint32_t i = sizeof size; i < size; i++)
    CHECK(p[i] == (unsigned char)(tag + i), "%s: block %p byte %u of %u corrupted", who, (void *)p, i, size);
  ccache_free(heap, p);
}

struct worker {
  pthread_t thread;
  int id;
  uint64_t rng;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  enum { KEEP = 64 };
  unsigned char *kept[KEEP] = {0};
  void *timer = NULL;
  test_thread_timer_start(&timer, SIGUSR1, 200);
  for (long op = 0; op < opt.ops; op++) {
    uint64_t x = test_rand(&w->rng);
    uint32_t size = (x & 63) == 0 ? 5 + (uint32_t)((x >> 8) % 300000) : 5 + (uint32_t)((x >> 8) % 2000);
    unsigned char *p = (x >> 40) % 4 == 0 ? ccache_calloc(heap, 1, size) : ccache_malloc(heap, size);
    CHECK(p != NULL, "thread %d op %ld: malloc(%u) failed, errno %d", w->id, op, size, errno);
    fill(p, size, (uint32_t)x);
    int slot = (int)((x >> 20) % KEEP);
    unsigned char *old = kept[slot];
    kept[slot] = p;
    if (!old) continue;
    if ((x >> 30) % 3 == 0) {
      // Hand it to another worker, who frees it.
      struct mailbox *b = &boxes[(w->id + 1 + (int)((x >> 33) % (uint64_t)(opt.threads - 1 ? opt.threads - 1 : 1))) % opt.threads];
      pthread_mutex_lock(&b->lock);
      if (b->n < MAILBOX) {
        b->slots[b->n++] = old;
        old = NULL;
      }
      pthread_mutex_unlock(&b->lock);
      if (old) check_and_free(old, "own");
    } else {
      check_and_free(old, "own");
    }
    if (op % 64 == 0) {
      struct mailbox *mine = &boxes[w->id];
      pthread_mutex_lock(&mine->lock);
      int n = mine->n;
      void *got[MAILBOX];
      memcpy(got, mine->slots, sizeof(void *) * (size_t)n);
      mine->n = 0;
      pthread_mutex_unlock(&mine->lock);
      for (int i = 0; i < n; i++) check_and_free(got[i], "cross-thread");
      atomic_fetch_add_explicit(&cross_frees, n, memory_order_relaxed);
    }
  }
  if (timer) test_thread_timer_stop(timer);
  for (int i = 0; i < KEEP; i++)
    if (kept[i]) check_and_free(kept[i], "final");
  return NULL;
}

static void *drainer(void *arg) {
  (void)arg;
  uint64_t rng = opt.seed ^ 0xd1a1;
  int ncpus = rseq_index_count(opt.index);
  while (!atomic_load_explicit(&stop_drainer, memory_order_relaxed)) {
    int cpu = (int)(test_rand(&rng) % (uint64_t)ncpus);
    CHECK(ccache_drain_cpu(heap, cpu) == 0, "drain of cpu %d: errno %d", cpu, errno);
    atomic_fetch_add_explicit(&drains_done, 1, memory_order_relaxed);
    struct timespec ts = {0, 100 * 1000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void on_signal(int sig) { (void)sig; }

static void fork_child_workload(void) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    // The parent's other threads are gone; their locks were released by the atfork
    // handlers. The child must be able to allocate and free freely. A lock left held
    // would hang it: SIGALRM ends it after 30 s so the test fails promptly.
    alarm(TEST_FORK_CHILD_ALARM_S);
    void *p[1000];
    for (int r = 0; r < 20; r++) {
      for (int i = 0; i < 1000; i++) {
        p[i] = ccache_malloc(heap, (size_t)(i * 37 % 5000) + 1);
        if (!p[i]) _exit(3);
        memset(p[i], 0x5A, (size_t)(i * 37 % 5000) + 1);
      }
      for (int i = 0; i < 1000; i++) ccache_free(heap, p[i]);
    }
    _exit(0);
  }
  test_wait_fork_child(pid, "allocating");
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--mode")) opt.mode = (enum rseq_mode)rseq_mode_parse(argv[i + 1]);
    else if (!strcmp(argv[i], "--index")) opt.index = (enum rseq_index)rseq_index_parse(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads")) opt.threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--rounds")) opt.rounds = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--ops")) opt.ops = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--seed")) opt.seed = strtoull(argv[i + 1], NULL, 0);
    else {
      fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  opt.seed = test_seed(opt.seed);
  if (opt.threads <= 0) {
    int cpus[256];
    opt.threads = 4 * test_allowed_cpus(cpus, 256);
  }
  test_context("mode=%s index=%s threads=%d rounds=%d ops=%ld seed=%lu", rseq_mode_name(opt.mode),
               rseq_index_name(opt.index), opt.threads, opt.rounds, opt.ops, (unsigned long)opt.seed);
  struct ccache_options o = {.mode = opt.mode, .index = opt.index, .cpu_cache_bytes = 256 * 1024};
  heap = ccache_heap_create(&o);
  if (!heap) test_skip("mode %s index %s unavailable (errno %d)", rseq_mode_name(opt.mode),
                       rseq_index_name(opt.index), errno);
  if (rseq_inject_enabled())
    for (int p = 1; p <= RSEQ_INJECT_POINTS; p++) rseq_inject_set_loops(p, 300);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  boxes = calloc((size_t)opt.threads, sizeof *boxes);
  for (int i = 0; i < opt.threads; i++) pthread_mutex_init(&boxes[i].lock, NULL);
  pthread_t drain_thread;
  CHECK(pthread_create(&drain_thread, NULL, drainer, NULL) == 0);
  struct worker *w = calloc((size_t)opt.threads, sizeof *w);
  for (int round = 0; round < opt.rounds; round++) {
    for (int i = 0; i < opt.threads; i++) {
      w[i].id = i;
      w[i].rng = opt.seed * 1000003 + (uint64_t)round * 7919 + (uint64_t)i;
      CHECK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0);
    }
    if (round == 1) fork_child_workload();
    for (int i = 0; i < opt.threads; i++) pthread_join(w[i].thread, NULL);
    // Blocks still in mailboxes belong to workers that are gone: free them here.
    for (int i = 0; i < opt.threads; i++) {
      for (int k = 0; k < boxes[i].n; k++) check_and_free(boxes[i].slots[k], "leftover");
      boxes[i].n = 0;
    }
  }
  atomic_store_explicit(&stop_drainer, 1, memory_order_relaxed);
  pthread_join(drain_thread, NULL);
  struct ccache_stats st;
  ccache_get_stats(heap, &st);
  CHECK(st.in_use_bytes == 0, "%lu bytes still in use after every block was freed",
        (unsigned long)st.in_use_bytes);
  CHECK(ccache_check_heap(heap) == 0, "heap invariants broken (see stderr)");
  printf("ok: mode=%s index=%s: %d threads x %d rounds x %ld ops; %ld cross-thread frees, %ld "
         "remote drains during use; fast-path aborts: pop %lu push %lu; refills %lu drains %lu\n",
         rseq_mode_name(opt.mode), rseq_index_name(opt.index), opt.threads, opt.rounds, opt.ops,
         atomic_load(&cross_frees), atomic_load(&drains_done), (unsigned long)st.pop_aborts,
         (unsigned long)st.push_aborts, (unsigned long)st.refills, (unsigned long)st.drains);
  CHECK(atomic_load(&cross_frees) > 0);
  if (opt.mode == RSEQ_MODE_RSEQ && rseq_inject_enabled())
    CHECK(st.pop_aborts + st.push_aborts > 0, "no fast-path section was ever aborted");
  CHECK(ccache_drain_all(heap) == 0);
  ccache_get_stats(heap, &st);
  CHECK_EQ(st.cached_bytes, 0);
  ccache_heap_destroy(heap);
  free(w);
  free(boxes);
  printf("PASS\n");
  return 0;
}
