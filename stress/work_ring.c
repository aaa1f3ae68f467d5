// work_ring: the workers produce into two per-CPU rings (items: pointers, committed
// with the ring_offer section one at a time and with ring_offer_batch in runs of up to
// four; records of 32 bytes, committed with ring_offer_record one at a time and with
// ring_offer_record_batch in runs of up to four) and one consumer thread polls both.
// Checks, as it polls:
//   - every item is a real one: producer in range, record checksum right (no torn copy);
//   - each (producer, sequence number) is polled once, never twice;
//   - per producer and shard, sequence numbers increase (FIFO while on one CPU).
// After every round (producers joined): the consumer has polled exactly what the
// producers committed.
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring/ring.h"
#include "rseq/testing.h"
#include "stress/job.h"
#include "stress/seen.h"

static const char *const sections[] = {"ring_offer", "ring_offer_record", "ring_offer_batch",
                                       "ring_offer_record_batch", NULL};

struct record {
  uint64_t producer, seq, value, check;
};
static uint64_t check_of(const struct record *r) {
  return (r->producer * 0x9E3779B97F4A7C15ULL) ^ (r->seq * 0xC2B2AE3D27D4EB4FULL) ^ r->value;
}

struct producer {  // per worker
  uint64_t seq[2];  // next sequence number, pointer ring and record ring
  long full;
};

static struct ring *rings[2];  // 0: pointers, 1: records
static int nproducers;
static pthread_t consumer;
static _Atomic int consumer_stop;   // relaxed: a flag the consumer polls
static _Atomic long polled[2];      // release by the consumer, acquire by round_end
static long offered_total[2], full_total;
static struct seen seen[2];        // per ring: (producer, seq) polled
static long *last_seq;              // [producer][shard], pointer ring

static void mark_seen(int ring, uint64_t producer, uint64_t seq) {
  CHECK(seen_mark(&seen[ring], (int)producer, seq), "ring %d: producer %lu item %lu polled twice",
        ring, (unsigned long)producer, (unsigned long)seq);
}

static bool poll_once(void) {
  bool got = false;
  void *item;
  int shard;
  if (ring_poll_shard(rings[0], &item, &shard) == RING_OK) {
    uintptr_t v = (uintptr_t)item;
    uint64_t p = (v >> 40) - 1, seq = v & ((1ull << 40) - 1);
    CHECK(p < (uint64_t)nproducers, "pointer ring: garbage item %#lx", (unsigned long)v);
    CHECK(shard >= 0 && shard < job_nslots, "pointer ring: shard %d", shard);
    long *last = &last_seq[p * (uint64_t)job_nslots + (uint64_t)shard];
    CHECK((long)seq > *last, "pointer ring: producer %lu shard %d: seq %lu after %ld (not FIFO)",
          (unsigned long)p, shard, (unsigned long)seq, *last);
    *last = (long)seq;
    mark_seen(0, p, seq);
    // Release: round_end's acquire load sees the bitmaps written before this count.
    atomic_fetch_add_explicit(&polled[0], 1, memory_order_release);
    got = true;
  }
  struct record r;
  if (ring_poll_record(rings[1], &r) == RING_OK) {
    CHECK(r.producer < (uint64_t)nproducers && r.check == check_of(&r),
          "record ring: torn or garbage record {producer %lu seq %lu value %#lx check %#lx}",
          (unsigned long)r.producer, (unsigned long)r.seq, (unsigned long)r.value,
          (unsigned long)r.check);
    mark_seen(1, r.producer, r.seq);
    atomic_fetch_add_explicit(&polled[1], 1, memory_order_release);  // as above
    got = true;
  }
  return got;
}

static void *consumer_main(void *arg) {
  (void)arg;
  while (!atomic_load_explicit(&consumer_stop, memory_order_relaxed))
    if (!poll_once()) sched_yield();
  ring_consumer_release(rings[0]);  // finish() checks the rings are empty from its thread
  ring_consumer_release(rings[1]);
  return NULL;
}

static void setup(int nworkers) {
  nproducers = nworkers;
  struct ring_options o = {.mode = job_mode.mode, .index = job_mode.index};
  rings[0] = ring_create(64, &o);
  o.record_size = sizeof(struct record);
  rings[1] = ring_create(64, &o);
  CHECK(rings[0] && rings[1], "ring_create");
  seen_init(&seen[0], nworkers);
  seen_init(&seen[1], nworkers);
  last_seq = malloc(sizeof *last_seq * (size_t)nworkers * (size_t)job_nslots);
  for (long i = 0; i < (long)nworkers * job_nslots; i++) last_seq[i] = -1;
  CHECK(pthread_create(&consumer, NULL, consumer_main, NULL) == 0);
}

// Worker w's record with sequence number seq: a random value and its checksum.
static struct record record_of(struct worker *w, uint64_t seq) {
  struct record rec = {(uint64_t)w->id, seq, test_rand(&w->rng), 0};
  rec.check = check_of(&rec);
  return rec;
}

static void op(struct worker *w) {
  if (!w->priv) CHECK((w->priv = calloc(1, sizeof(struct producer))) != NULL);
  struct producer *p = w->priv;
  int which = (int)(test_rand(&w->rng) % 4);
  bool full;
  if (which == 0) {
    uintptr_t item = (uintptr_t)(w->id + 1) << 40 | p->seq[0];
    int r = ring_offer(rings[0], (void *)item);
    CHECK(r == RING_OK || r == RING_FULL, "offer returned %d", r);
    full = r == RING_FULL;
    p->seq[0] += !full;
  } else if (which == 1) {
    struct record rec = record_of(w, p->seq[1]);
    int r = ring_offer_record(rings[1], &rec);
    CHECK(r == RING_OK || r == RING_FULL, "record offer returned %d", r);
    full = r == RING_FULL;
    p->seq[1] += !full;
  } else if (which == 3) {
    // A run of records with consecutive sequence numbers: a prefix of it is committed,
    // in order, each record whole.
    struct record recs[4];
    size_t n = 1 + test_rand(&w->rng) % 4;
    for (size_t k = 0; k < n; k++) recs[k] = record_of(w, p->seq[1] + k);
    size_t done = ring_offer_record_batch(rings[1], recs, n);
    CHECK(done <= n, "record batch offer of %zu returned %zu", n, done);
    p->seq[1] += done;
    full = done < n;
  } else {
    // A run of consecutive sequence numbers: a prefix of it is committed, in order.
    void *items[4];
    size_t n = 1 + test_rand(&w->rng) % 4;
    for (size_t k = 0; k < n; k++) items[k] = (void *)((uintptr_t)(w->id + 1) << 40 | (p->seq[0] + k));
    size_t done = ring_offer_batch(rings[0], items, n);
    CHECK(done <= n, "batch offer of %zu returned %zu", n, done);
    p->seq[0] += done;
    full = done < n;
  }
  if (full) {
    p->full++;
    sched_yield();  // let the consumer catch up
  }
}

// The producers are joined: the consumer must poll exactly what they committed.
static void round_end(struct worker *w, int nworkers) {
  long offered[2] = {0, 0};
  for (int t = 0; t < nworkers; t++) {
    struct producer *p = w[t].priv;
    if (p) {
      offered[0] += (long)p->seq[0];
      offered[1] += (long)p->seq[1];
    }
  }
  for (int i = 0; i < 10000; i++) {  // 10 s at most
    // Acquire: pairs with the consumer's release increments (see poll_once).
    if (atomic_load_explicit(&polled[0], memory_order_acquire) >= offered[0] &&
        atomic_load_explicit(&polled[1], memory_order_acquire) >= offered[1])
      break;
    nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
  }
  CHECK(atomic_load(&polled[0]) == offered[0] && atomic_load(&polled[1]) == offered[1],
        "consumer polled %ld + %ld items; producers committed %ld + %ld", atomic_load(&polled[0]),
        atomic_load(&polled[1]), offered[0], offered[1]);
  offered_total[0] = offered[0];
  offered_total[1] = offered[1];
}

static void finish(struct worker *w, int nworkers) {
  round_end(w, nworkers);
  atomic_store_explicit(&consumer_stop, 1, memory_order_relaxed);
  pthread_join(consumer, NULL);
  void *item;
  struct record r;
  CHECK(ring_poll(rings[0], &item) == RING_EMPTY && ring_poll_record(rings[1], &r) == RING_EMPTY,
        "an item is left in a ring after every committed one was polled");
  for (int t = 0; t < nworkers; t++) {
    struct producer *p = w[t].priv;
    if (p) full_total += p->full;
    free(p);
    w[t].priv = NULL;
  }
  ring_destroy(rings[0]);
  ring_destroy(rings[1]);
  seen_free(&seen[0]);
  seen_free(&seen[1]);
  free(last_seq);
}

static void summary(FILE *out) {
  fprintf(out, "ring: %ld pointers and %ld records offered and polled exactly once, FIFO per "
               "producer and shard; %ld offers refused as full\n",
          offered_total[0], offered_total[1], full_total);
}

const struct workload work_ring = {
    .name = "ring",
    .sections = sections,
    .default_threads_per_cpu = 2,
    .setup = setup,
    .op = op,
    .round_end = round_end,
    .finish = finish,
    .summary = summary,
};
