// stale_limit_test: a producer's batch offer must never commit past the shard's
// capacity, even when the cached limit is lowered under its section by a refresh that
// read the tail long ago (offer_refresh_limit runs on any thread and any CPU, and may
// be delayed between its load of tail and its store of the limit).
//
// One producer, pinned to one CPU, offers batches of 64 (pointers, then 21-byte
// records) into a shard of capacity 8, with a delay loop at injection point 1 (right
// after its section's checks: the window in which another CPU can store a limit). The
// consumer, pinned to another CPU, polls and after every poll stores into every shard
// the limit that a refresh which read the tail 2 x capacity items ago would store
// (ring_debug_store_stale_limit). Checks, exactly:
//   - the items arrive in order, each once (a commit past the capacity writes over
//     slots the consumer has not read: a batch of 64 laps the 16 slots);
//   - no shard ever holds more than its capacity (offered - polled, from the consumer);
//   - every item offered is polled.
// Until 2026-12-04 the batch sections loaded the limit twice, for the check and for the
// room they had: a stale store between the two made the room limit - h negative, as an
// unsigned number huge, and the section committed its whole batch.
// Needs RSEQ and two CPUs (it skips, saying so, without them). Flags: --index cpu|cid
// --seconds S --loops N (the delay at point 1).
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring/ring.h"
#include "rseq/rseq.h"
#include "rseq/testing.h"

#define CAPACITY 8
#define BATCH 64
#define REC 21

static struct ring *ring;
static bool records;
static int producer_cpu;
static _Atomic int stop;         // relaxed: a stop request
static _Atomic long offered;     // relaxed: published once, before producer_done's release
static _Atomic int producer_done;  // release/acquire: `offered` and the offers are final

// Item k: the pointer k + 1, or a record of k's 8 bytes and a pattern seeded by k.
static void record_of(unsigned char *rec, long k) {
  memcpy(rec, &k, sizeof k);
  for (int b = (int)sizeof k; b < REC; b++) rec[b] = (unsigned char)(k * 7 + b * 13);
}

static void *producer(void *arg) {
  (void)arg;
  CHECK(test_pin(producer_cpu) == 0, "cannot pin the producer to CPU %d", producer_cpu);
  long next = 0;
  void *items[BATCH];
  unsigned char recs[BATCH * REC];
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    size_t got;
    if (records) {
      for (int i = 0; i < BATCH; i++) record_of(recs + i * REC, next + i);
      got = ring_offer_record_batch(ring, recs, BATCH);
    } else {
      for (int i = 0; i < BATCH; i++) items[i] = (void *)(uintptr_t)(next + i + 1);
      got = ring_offer_batch(ring, items, BATCH);
    }
    next += (long)got;
  }
  atomic_store_explicit(&offered, next, memory_order_relaxed);
  // Release: the final count and every offer before it are visible to the consumer.
  atomic_store_explicit(&producer_done, 1, memory_order_release);
  return NULL;
}

static void run(enum rseq_index index, bool recs, double seconds, uint32_t loops, int cons_cpu) {
  records = recs;
  test_context("index=%s items=%s capacity=%d batch=%d inject_loops(1)=%u producer_cpu=%d "
               "consumer_cpu=%d", rseq_index_name(index), recs ? "21-byte records" : "pointers",
               CAPACITY, BATCH, loops, producer_cpu, cons_cpu);
  struct ring_options o = {RSEQ_MODE_RSEQ, index, recs ? REC : 0, 0};
  ring = ring_create(CAPACITY, &o);
  CHECK(ring != NULL, "ring_create: errno %d", errno);
  int nshards = ring_shards(ring);
  // Per shard: the polled counts of the last 2 x capacity polls' moments, oldest first.
  enum { HIST = 2 * CAPACITY };
  uint64_t (*hist)[HIST] = calloc((size_t)nshards, sizeof *hist);
  atomic_store_explicit(&stop, 0, memory_order_relaxed);
  atomic_store_explicit(&producer_done, 0, memory_order_relaxed);
  CHECK(test_pin(cons_cpu) == 0, "cannot pin the consumer to CPU %d", cons_cpu);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, producer, NULL) == 0);
  long polled = 0, stale_stores = 0;
  uint64_t max_held = 0;
  double end = test_now_s() + seconds;
  bool done = false;
  for (;;) {
    void *items[BATCH];
    unsigned char recs_out[BATCH * REC];
    long got = recs ? ring_poll_record_batch(ring, recs_out, BATCH) : ring_poll_batch(ring, items, BATCH);
    CHECK(got >= 0, "poll: errno %d", errno);
    for (long i = 0; i < got; i++, polled++) {
      if (recs) {
        unsigned char want[REC];
        record_of(want, polled);
        CHECK(memcmp(recs_out + i * REC, want, REC) == 0,
              "record %ld polled: not the record offered %ld-th (a commit past the capacity "
              "wrote over it, or the order broke)", polled, polled);
      } else {
        CHECK((uintptr_t)items[i] == (uintptr_t)polled + 1,
              "item %ld polled is %lu (a commit past the capacity wrote over it, or the order "
              "broke)", polled + 1, (unsigned long)(uintptr_t)items[i]);
      }
    }
    if (done && got == 0) break;
    for (int sh = 0; sh < nshards; sh++) {
      struct ring_cpu_stats st;
      CHECK(ring_cpu_stats(ring, sh, &st) == 0);
      // The consumer is this thread: the tail does not move while we read, and the head
      // never passes tail + capacity.
      uint64_t held = st.offered - st.polled;
      if (held > max_held) max_held = held;
      CHECK(held <= CAPACITY, "shard %d holds %lu items (offered %lu, polled %lu): more than "
            "its capacity %d", sh, (unsigned long)held, (unsigned long)st.offered,
            (unsigned long)st.polled, CAPACITY);
      uint64_t *h = hist[sh];
      if (h[HIST - 1] != st.polled) {
        memmove(h, h + 1, sizeof(uint64_t) * (HIST - 1));
        h[HIST - 1] = st.polled;
      }
      // The limit of a refresh that read the tail when the oldest of these was polled.
      if (ring_debug_store_stale_limit(ring, sh, h[0]) == 0) stale_stores++;
    }
    if (!done && test_now_s() > end) atomic_store_explicit(&stop, 1, memory_order_relaxed);
    // Acquire: pairs with the producer's release; its final count and offers are in.
    if (!done && atomic_load_explicit(&producer_done, memory_order_acquire)) done = true;
  }
  CHECK(pthread_join(th, NULL) == 0);
  long want = atomic_load_explicit(&offered, memory_order_relaxed);
  CHECK(polled == want, "polled %ld items, the producer offered %ld", polled, want);
  CHECK(polled > 10 * CAPACITY, "only %ld items went through in %.1f s", polled, seconds);
  printf("  %s, %s: %ld items, %ld stale limits stored, at most %lu held (capacity %d)\n",
         rseq_index_name(index), recs ? "21-byte records" : "pointers", polled, stale_stores,
         (unsigned long)max_held, CAPACITY);
  free(hist);
  ring_destroy(ring);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  double seconds = 1.0;
  uint32_t loops = 2000;
  const char *only = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--loops")) loops = (uint32_t)atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--index")) only = argv[i + 1];
    else test_fail(__FILE__, __LINE__, "flags", "unknown flag %s", argv[i]);
  }
  if (!rseq_available()) test_skip("rseq unavailable (%s)", rseq_unavailable_reason());
  CHECK(rseq_inject_enabled(), "built without the inject variant (//ring:ring_inject)");
  int cpus[256];
  int n = test_allowed_cpus(cpus, 256);
  if (n < 2) test_skip("needs two CPUs to race a stale limit against a section; %d allowed", n);
  producer_cpu = cpus[0];
  rseq_inject_set_loops(1, loops);
  test_watchdog(120);
  for (int x = 0; x < 2; x++) {
    enum rseq_index index = x ? RSEQ_INDEX_MM_CID : RSEQ_INDEX_CPU_ID;
    if (only && strcmp(only, x ? "cid" : "cpu")) continue;
    if (index == RSEQ_INDEX_MM_CID && !rseq_mm_cid_available()) {
      printf("  mm_cid: SKIPPED (the kernel has no mm_cid)\n");
      continue;
    }
    run(index, false, seconds, loops, cpus[1]);
    run(index, true, seconds, loops, cpus[1]);
  }
  printf("PASS\n");
  return 0;
}
