// mpsc_test: producers (8 by default) and one consumer, with forced migrations and
// signal storms whose handlers offer items too. Checks, exactly:
//   - every item offered is polled once: none lost, none duplicated;
//   - per producer and shard, sequence numbers arrive in increasing order (FIFO while a
//     producer stays on one CPU);
//   - the checksum of everything polled equals the checksum of everything offered;
//   - the per-shard counters agree: offered == polled, summed over shards == items;
//   - progress: the consumer fails the test when nothing was polled for --stall-s
//     seconds (60) while producers are still offering (a full check that never clears,
//     e.g. one broken by wrap-around, would otherwise hang until Bazel's timeout).
// Flags: --mode rseq|cas --index cpu|cid --producers N --items N --signal-us N
//        --migrate-us N --capacity N --inject-loops N --stall-s N --seed S
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring/ring.h"
#include "rseq/testing.h"

#define MAX_PRODUCERS 64
#define HANDLER_ID_BASE 64  // items offered by a signal handler of producer p: id 64 + p

static struct {
  enum rseq_mode mode;
  enum rseq_index index;
  int producers;
  long items;
  long signal_us;
  long migrate_us;
  size_t capacity;
  uint32_t inject_loops;
  long stall_s;
  uint64_t seed;
} opt = {RSEQ_MODE_RSEQ, RSEQ_INDEX_CPU_ID, 8, 200000, 100, 200, 256, 100, 60, 1};

static struct ring *ring;
static int allowed[256], nallowed;
static _Atomic int producer_tids[MAX_PRODUCERS];  // relaxed: the migrator only needs a tid
static _Atomic int producers_done;                // release/acquire: their counts are final
static _Atomic int stop_forcers;                  // relaxed: a stop request
static _Atomic long producer_next[MAX_PRODUCERS];  // relaxed: progress, printed on a stall
static _Atomic long producer_full[MAX_PRODUCERS];  // relaxed: RING_FULL answers, ditto

// Per producer: what its signal handler offered. Written by the handler of that
// producer only; read by the main thread after joining it.
static long handler_offered[MAX_PRODUCERS];
static uint64_t handler_sum[MAX_PRODUCERS];
static __thread int my_id = -1;

static inline uintptr_t make_item(int id, long seq) { return (uintptr_t)id << 40 | (uintptr_t)seq; }

static void on_signal(int sig) {
  (void)sig;
  if (my_id < 0) return;
  int saved = errno;
  uintptr_t item = make_item(HANDLER_ID_BASE + my_id, handler_offered[my_id]);
  // Async-signal-safe: ring_offer takes no lock and allocates nothing. When the ring is
  // full the item is simply not offered (and not counted).
  if (ring_offer(ring, (void *)item) == RING_OK) {
    handler_offered[my_id]++;
    handler_sum[my_id] += item;
  }
  errno = saved;
}

static void *producer(void *arg) {
  int id = (int)(intptr_t)arg;
  atomic_store_explicit(&producer_tids[id], test_gettid(), memory_order_relaxed);
  void *timer = NULL;
  if (opt.signal_us > 0) CHECK(test_thread_timer_start(&timer, SIGUSR1, opt.signal_us) == 0);
  my_id = id;
  for (long seq = 0; seq < opt.items; seq++) {
    uintptr_t item = make_item(id, seq);
    int r;
    while ((r = ring_offer(ring, (void *)item)) == RING_FULL) {
      atomic_fetch_add_explicit(&producer_full[id], 1, memory_order_relaxed);
      sched_yield();
    }
    CHECK(r == RING_OK, "producer %d: ring_offer returned %d", id, r);
    atomic_store_explicit(&producer_next[id], seq + 1, memory_order_relaxed);
  }
  my_id = -1;  // the handler stops offering before we report our counts
  if (timer) test_thread_timer_stop(timer);
  atomic_fetch_add_explicit(&producers_done, 1, memory_order_release);
  return NULL;
}

// Forcer: rewrites producers' affinities at a high rate: random single CPUs and subsets.
static void *migrator(void *arg) {
  (void)arg;
  uint64_t rng = opt.seed ^ 0xabcdef;
  long moves = 0;
  while (!atomic_load_explicit(&stop_forcers, memory_order_relaxed)) {
    int p = (int)(test_rand(&rng) % (uint64_t)opt.producers);
    int tid = atomic_load_explicit(&producer_tids[p], memory_order_relaxed);
    if (tid > 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (test_rand(&rng) & 1) {
        CPU_SET(allowed[test_rand(&rng) % (uint64_t)nallowed], &set);
      } else {
        for (int i = 0; i < nallowed; i++)
          if (test_rand(&rng) & 1) CPU_SET(allowed[i], &set);
        if (CPU_COUNT(&set) == 0) CPU_SET(allowed[0], &set);
      }
      if (sched_setaffinity(tid, sizeof set, &set) == 0) moves++;  // ESRCH once it exited
    }
    struct timespec ts = {0, opt.migrate_us * 1000};
    nanosleep(&ts, NULL);
  }
  return (void *)moves;
}

// Forcer: tgkill bursts into the producers, on top of their own timers.
static void *storm(void *arg) {
  (void)arg;
  uint64_t rng = opt.seed ^ 0x5151;
  long sent = 0;
  while (!atomic_load_explicit(&stop_forcers, memory_order_relaxed)) {
    for (int burst = 0; burst < 16; burst++) {
      int p = (int)(test_rand(&rng) % (uint64_t)opt.producers);
      int tid = atomic_load_explicit(&producer_tids[p], memory_order_relaxed);
      if (tid > 0 && syscall(SYS_tgkill, getpid(), tid, SIGUSR1) == 0) sent++;
    }
    struct timespec ts = {0, 500 * 1000};
    nanosleep(&ts, NULL);
  }
  return (void *)sent;
}

static void parse(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (!strcmp(a, "--mode")) opt.mode = (enum rseq_mode)rseq_mode_parse(v);
    else if (!strcmp(a, "--index")) opt.index = (enum rseq_index)rseq_index_parse(v);
    else if (!strcmp(a, "--producers")) opt.producers = atoi(v);
    else if (!strcmp(a, "--items")) opt.items = atol(v);
    else if (!strcmp(a, "--signal-us")) opt.signal_us = atol(v);
    else if (!strcmp(a, "--migrate-us")) opt.migrate_us = atol(v);
    else if (!strcmp(a, "--capacity")) opt.capacity = (size_t)atol(v);
    else if (!strcmp(a, "--inject-loops")) opt.inject_loops = (uint32_t)atol(v);
    else if (!strcmp(a, "--stall-s")) opt.stall_s = atol(v);
    else if (!strcmp(a, "--seed")) opt.seed = strtoull(v, NULL, 0);
    else {
      fprintf(stderr, "unknown flag %s\n", a);
      exit(2);
    }
  }
  CHECK((int)opt.mode > 0 && (int)opt.index >= 0, "--mode rseq|cas --index cpu|cid");
  CHECK(opt.producers > 0 && opt.producers <= MAX_PRODUCERS);
  CHECK(opt.stall_s > 0, "--stall-s must be positive");
}

// Called by the consumer when it has polled nothing for opt.stall_s seconds while
// producers are still offering: prints where each producer stands, then fails.
static void stalled(long polled, int nshards) {
  fprintf(stderr, "stall: nothing polled for %ld s after %ld items while %d of %d producers "
          "still offer:\n", opt.stall_s, polled,
          opt.producers - atomic_load_explicit(&producers_done, memory_order_relaxed),
          opt.producers);
  for (int p = 0; p < opt.producers; p++)
    fprintf(stderr, "  producer %d: next item %ld of %ld, RING_FULL answered %ld times\n", p,
            atomic_load_explicit(&producer_next[p], memory_order_relaxed), opt.items,
            atomic_load_explicit(&producer_full[p], memory_order_relaxed));
  for (int c = 0; c < nshards; c++) {
    struct ring_cpu_stats st;
    ring_cpu_stats(ring, c, &st);
    fprintf(stderr, "  shard %d: offered %lu polled %lu\n", c, (unsigned long)st.offered,
            (unsigned long)st.polled);
  }
  CHECK(0, "no progress: producers see a full ring that the consumer finds empty, or "
        "stopped offering (the full check or the wrap-around is broken)");
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  parse(argc, argv);
  opt.seed = test_seed(opt.seed);
  test_context("mode=%s index=%s producers=%d items=%ld signal_us=%ld migrate_us=%ld capacity=%zu "
               "seed=%lu",
               rseq_mode_name(opt.mode), rseq_index_name(opt.index), opt.producers, opt.items,
               opt.signal_us, opt.migrate_us, opt.capacity, (unsigned long)opt.seed);
  struct ring_options o = {opt.mode, opt.index, 0, UINTPTR_MAX - 1000};
  ring = ring_create(opt.capacity, &o);
  if (!ring) test_skip("mode %s index %s unavailable (errno %d)", rseq_mode_name(opt.mode),
                       rseq_index_name(opt.index), errno);
  nallowed = test_allowed_cpus(allowed, 256);
  if (rseq_inject_enabled())
    for (int p = 1; p <= RSEQ_INJECT_POINTS; p++) rseq_inject_set_loops(p, opt.inject_loops);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
  // The consumer (this thread) must not take the producers' signals.
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);

  pthread_t prod[MAX_PRODUCERS], mig, stm;
  for (int p = 0; p < opt.producers; p++)
    CHECK(pthread_create(&prod[p], NULL, producer, (void *)(intptr_t)p) == 0);
  pthread_sigmask(SIG_BLOCK, &block, NULL);
  CHECK(pthread_create(&mig, NULL, migrator, NULL) == 0);
  CHECK(pthread_create(&stm, NULL, storm, NULL) == 0);

  // Consume. next_seq[id][shard]: the FIFO check per producer and shard.
  int nshards = ring_shards(ring);
  int ids = HANDLER_ID_BASE + opt.producers;
  long *last = malloc(sizeof(long) * (size_t)ids * (size_t)nshards);
  for (long i = 0; i < (long)ids * nshards; i++) last[i] = -1;
  long *received = calloc((size_t)ids, sizeof(long));
  char *seen = calloc((size_t)opt.producers * (size_t)opt.items, 1);
  uint64_t sum = 0;
  long polled = 0;
  bool all_done = false;
  double empty_since = 0;         // when the current run of empty polls began
  unsigned long empty_polls = 0;  // length of that run
  for (;;) {
    void *item;
    int shard;
    int r = ring_poll_shard(ring, &item, &shard);
    if (r == RING_EMPTY) {
      // Done when a poll finds nothing after every producer finished (acquire: their
      // items and handler counts are final by then).
      if (all_done) break;
      all_done = atomic_load_explicit(&producers_done, memory_order_acquire) == opt.producers;
      if (empty_polls++ == 0) empty_since = test_now_s();
      else if (empty_polls % 4096 == 0 && test_now_s() - empty_since > (double)opt.stall_s)
        stalled(polled, nshards);
      continue;
    }
    empty_polls = 0;
    CHECK(r == RING_OK, "ring_poll returned %d", r);
    uintptr_t v = (uintptr_t)item;
    int id = (int)(v >> 40);
    long seq = (long)(v & ((1UL << 40) - 1));
    CHECK(id >= 0 && id < ids && (id < opt.producers || id >= HANDLER_ID_BASE),
          "polled garbage %#lx", (unsigned long)v);
    CHECK(shard >= 0 && shard < nshards);
    long *l = &last[id * nshards + shard];
    CHECK(seq > *l, "producer %d shard %d: seq %ld after %ld (FIFO broken or duplicate)", id,
          shard, seq, *l);
    *l = seq;
    if (id < opt.producers) {
      CHECK(seq < opt.items);
      char *s = &seen[(long)id * opt.items + seq];
      CHECK(!*s, "producer %d item %ld polled twice", id, seq);
      *s = 1;
    }
    received[id]++;
    sum += v;
    polled++;
  }
  atomic_store_explicit(&stop_forcers, 1, memory_order_relaxed);
  void *moves, *sent;
  pthread_join(mig, &moves);
  pthread_join(stm, &sent);
  for (int p = 0; p < opt.producers; p++) pthread_join(prod[p], NULL);

  uint64_t want_sum = 0;
  long handler_total = 0;
  for (int p = 0; p < opt.producers; p++) {
    CHECK(received[p] == opt.items, "producer %d: %ld of %ld items polled", p, received[p],
          opt.items);
    // sum of make_item(p, seq) for seq in [0, items)
    want_sum += (uint64_t)opt.items * ((uint64_t)p << 40) +
                (uint64_t)opt.items * (uint64_t)(opt.items - 1) / 2;
    CHECK(received[HANDLER_ID_BASE + p] == handler_offered[p],
          "producer %d's handler offered %ld items, %ld polled", p, handler_offered[p],
          received[HANDLER_ID_BASE + p]);
    want_sum += handler_sum[p];
    handler_total += handler_offered[p];
  }
  CHECK(sum == want_sum, "checksum %#lx != %#lx", (unsigned long)sum, (unsigned long)want_sum);
  uint64_t offered = 0, polled_stat = 0;
  for (int c = 0; c < nshards; c++) {
    struct ring_cpu_stats st;
    ring_cpu_stats(ring, c, &st);
    CHECK(st.offered == st.polled, "shard %d: offered %lu polled %lu", c, (unsigned long)st.offered,
          (unsigned long)st.polled);
    offered += st.offered;
    polled_stat += st.polled;
  }
  CHECK(offered == (uint64_t)polled && polled_stat == (uint64_t)polled);
  struct ring_stats rs;
  ring_stats(ring, &rs);
  printf("ok: mode=%s index=%s: %ld items (%ld from signal handlers) polled exactly once, FIFO "
         "per producer and shard; %ld migrations, %ld tgkills; offer section %s: %lu commits, "
         "%lu aborts, %lu retries\n",
         rseq_mode_name(ring_mode(ring)), rseq_index_name(ring_index(ring)), polled, handler_total,
         (long)(intptr_t)moves, (long)(intptr_t)sent, rs.offer_section,
         (unsigned long)rs.offer_commits, (unsigned long)rs.offer_aborts,
         (unsigned long)rs.offer_retries);
  CHECK(rs.offer_commits == (uint64_t)polled);
  if (ring_mode(ring) == RSEQ_MODE_RSEQ)
    CHECK(rs.offer_aborts > 0, "no offer was ever aborted: the abort path was not exercised");
  free(last);
  free(received);
  free(seen);
  ring_destroy(ring);
  printf("PASS\n");
  return 0;
}
