// ring.c: the per-CPU MPSC ring. See ring.h for the layout and the guarantees.
#include "ring/ring.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sanitizers/sanitizers.h"

#define CACHELINE 64

struct ring_shard {
  // Producers' position. RSEQ: written only by the committing store of an offer section
  // on this CPU. CAS: claimed with a CAS by any producer.
  _Alignas(CACHELINE) uintptr_t head;
  // RSEQ producers' copy of tail, so an offer reads the consumer's cache line only when
  // the shard looks full. Any producer may store a value it read from tail; a stale
  // (smaller) value only makes the full check conservative.
  uintptr_t tail_seen;
  // The consumer's position: written only by the consumer.
  _Alignas(CACHELINE) uintptr_t tail;
  // The consumer's copy of head (RSEQ mode): items up to it are known committed.
  uintptr_t head_seen;
  // Relaxed counters: statistics, bumped on the rare paths only.
  _Alignas(CACHELINE) _Atomic uint64_t full;
  _Atomic uint64_t aborts;
  _Atomic uint64_t retries;
  unsigned char *slots;
};

struct ring {
  struct rseq_percpu_mode mode;
  const char *why_cas;
  size_t capacity;
  uintptr_t mask;
  size_t record_size;   // 0: pointer items
  size_t payload_size;  // bytes copied per item
  size_t slot_size;     // seq word + payload, a multiple of 8
  int nshards;
  uintptr_t initial;
  struct ring_shard *shards;
  // Consumer state: touched by the consumer thread only.
  int next_shard;
  void *_Atomic consumer;  // the consumer thread's token, or NULL
};

// One slot: the CAS mode's sequence number, then the payload.
struct slot {
  uintptr_t seq;
  unsigned char payload[];
};

static inline struct slot *slot_at(const struct ring *r, const struct ring_shard *s,
                                   uintptr_t pos) {
  return (struct slot *)(s->slots + (pos & r->mask) * r->slot_size);
}

__attribute__((noreturn, cold)) static void index_out_of_range(const struct ring *r, int idx) {
  fprintf(stderr, "ring: %s index %d outside [0, %d): the kernel's rseq area is inconsistent\n",
          rseq_index_name(r->mode.index), idx, r->nshards);
  abort();
}

// The shard of the calling producer: its CPU (or mm_cid) as the rseq area says. In CAS
// mode without rseq, sched_getcpu() (which is just a hint there: any shard is correct).
static inline int caller_shard(const struct ring *r) {
  int idx = rseq_current_index(r->mode.index);
  if (idx < 0) {
    if (r->mode.mode == RSEQ_MODE_RSEQ) index_out_of_range(r, idx);
    idx = sched_getcpu();
    if (idx < 0) idx = 0;
    return idx % r->nshards;
  }
  if (__builtin_expect(idx >= r->nshards, 0)) index_out_of_range(r, idx);
  return idx;
}

struct ring *ring_create(size_t capacity, const struct ring_options *options) {
  struct ring_options defaults = {RSEQ_MODE_AUTO, RSEQ_INDEX_CPU_ID, 0, 0};
  const struct ring_options *o = options ? options : &defaults;
  if (capacity < 2 || (capacity & (capacity - 1)) != 0 || capacity > ((size_t)1 << 40) ||
      o->record_size > RING_RECORD_MAX) {
    errno = EINVAL;
    return NULL;
  }
  struct rseq_percpu_mode mode;
  const char *why = "";
  if (rseq_resolve_mode(o->mode, o->index, &mode, &why) != 0) return NULL;  // errno set
  struct ring *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->mode = mode;
  r->why_cas = mode.mode == RSEQ_MODE_CAS ? why : "";
  r->capacity = capacity;
  r->mask = capacity - 1;
  r->record_size = o->record_size;
  r->payload_size = o->record_size ? o->record_size : sizeof(void *);
  r->slot_size = sizeof(uintptr_t) + ((r->payload_size + 7) & ~(size_t)7);
  r->nshards = rseq_index_count(mode.index);
  r->initial = o->initial_position;
  r->shards = aligned_alloc(CACHELINE, sizeof *r->shards * (size_t)r->nshards);
  if (!r->shards) {
    free(r);
    errno = ENOMEM;
    return NULL;
  }
  memset(r->shards, 0, sizeof *r->shards * (size_t)r->nshards);
  for (int c = 0; c < r->nshards; c++) {
    struct ring_shard *s = &r->shards[c];
    s->head = s->tail = s->tail_seen = s->head_seen = r->initial;
    s->slots = aligned_alloc(CACHELINE, (capacity * r->slot_size + CACHELINE - 1) & ~(size_t)(CACHELINE - 1));
    if (!s->slots) {
      ring_destroy(r);
      errno = ENOMEM;
      return NULL;
    }
    memset(s->slots, 0, capacity * r->slot_size);
    // CAS mode: the slot for position p is free for the producer of p when seq == p.
    for (size_t k = 0; k < capacity; k++) slot_at(r, s, r->initial + k)->seq = r->initial + k;
  }
  return r;
}

void ring_destroy(struct ring *r) {
  if (!r) return;
  if (r->shards)
    for (int c = 0; c < r->nshards; c++) free(r->shards[c].slots);
  free(r->shards);
  free(r);
}

enum rseq_mode ring_mode(const struct ring *r) { return r->mode.mode; }
enum rseq_index ring_index(const struct ring *r) { return r->mode.index; }
const char *ring_mode_reason(const struct ring *r) { return r->why_cas; }
int ring_shards(const struct ring *r) { return r->nshards; }
size_t ring_capacity(const struct ring *r) { return r->capacity; }

// ---------------------------------------------------------------------------------
// Producers.

// CAS mode: a bounded MPSC queue per shard. A producer claims position `pos` with a CAS
// on head once the slot's seq says the consumer is done with its previous lap
// (seq == pos), writes the payload, and publishes it with seq = pos + 1.
static int cas_offer(struct ring *r, const void *payload) {
  struct ring_shard *s = &r->shards[caller_shard(r)];
  // Relaxed: only a starting guess; the CAS below validates it.
  uintptr_t pos = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
  for (;;) {
    struct slot *slot = slot_at(r, s, pos);
    // Acquire: pairs with the consumer's release of seq, so its read of the slot's
    // previous item is done before we overwrite the payload.
    uintptr_t seq = __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE);
    intptr_t dif = (intptr_t)(seq - pos);
    if (dif == 0) {
      // Relaxed: claiming the position publishes nothing; the release store of seq does.
      if (__atomic_compare_exchange_n(&s->head, &pos, pos + 1, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
        memcpy(slot->payload, payload, r->payload_size);
        // Release: the payload is written before the consumer can see seq == pos + 1.
        __atomic_store_n(&slot->seq, pos + 1, __ATOMIC_RELEASE);
        return RING_OK;
      }
      atomic_fetch_add_explicit(&s->retries, 1, memory_order_relaxed);
    } else if (dif < 0) {
      // The slot still holds the unread item of position pos - capacity: full.
      atomic_fetch_add_explicit(&s->full, 1, memory_order_relaxed);
      return RING_FULL;
    } else {
      // Another producer claimed pos; start again from the current head.
      pos = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
    }
  }
}

// RSEQ mode: store the payload into the head slot and commit head + 1, in one critical
// section on this CPU's shard.
static int rseq_offer(struct ring *r, const void *payload) {
  for (;;) {
    int cpu = caller_shard(r);
    struct ring_shard *s = &r->shards[cpu];
    // Relaxed: head changes only through sections on this CPU, and the section
    // re-checks it before committing.
    uintptr_t h = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
    // Relaxed: tail_seen is only a hint; the acquire load below decides when it says full.
    uintptr_t t = __atomic_load_n(&s->tail_seen, __ATOMIC_RELAXED);
    if (h - t >= r->capacity) {
      // Acquire: pairs with the consumer's release of tail: the slots it freed are
      // no longer being read when we overwrite them.
      t = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
      // Relaxed: a hint for the next offers (a stale tail only makes them conservative).
      __atomic_store_n(&s->tail_seen, t, __ATOMIC_RELAXED);
#if CCACHE_SEEDED_BUG == 4  // test-only variant (ci/fuzz-teeth): one item too many
      if (h - t > r->capacity) {
#else
      if (h - t >= r->capacity) {
#endif
        atomic_fetch_add_explicit(&s->full, 1, memory_order_relaxed);
        return RING_FULL;
      }
    }
    struct slot *slot = slot_at(r, s, h);
    int res;
    if (r->record_size == 0) {
      intptr_t item = *(const intptr_t *)payload;
      // The commit (head = h + 1) is the section's last store: on x86 a store is a
      // release, so the slot's payload is visible before the new head.
      res = rseq_cmpeqv_trystorev_storev(r->mode.index, (intptr_t *)&s->head, (intptr_t)h,
                                         (intptr_t *)slot->payload, item, (intptr_t)(h + 1), cpu);
    } else {
      res = rseq_cmpeqv_trymemcpy_storev(r->mode.index, (intptr_t *)&s->head, (intptr_t)h,
                                         slot->payload, payload, r->record_size,
                                         (intptr_t)(h + 1), cpu);
    }
    if (res == RSEQ_COMMIT) return RING_OK;
    // Aborted (preempted, migrated, signalled) or the head moved: try again.
    atomic_fetch_add_explicit(res == RSEQ_ABORT ? &s->aborts : &s->retries, 1,
                              memory_order_relaxed);
  }
}

int ring_offer(struct ring *r, void *item) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return -1;
  }
  return r->mode.mode == RSEQ_MODE_CAS ? cas_offer(r, &item) : rseq_offer(r, &item);
}

int ring_offer_record(struct ring *r, const void *record) {
  if (r->record_size == 0) {
    errno = EINVAL;
    return -1;
  }
  return r->mode.mode == RSEQ_MODE_CAS ? cas_offer(r, record) : rseq_offer(r, record);
}

size_t ring_offer_batch(struct ring *r, void *const *items, size_t n) {
  size_t i = 0;
  while (i < n && ring_offer(r, items[i]) == RING_OK) i++;
  return i;
}

// ---------------------------------------------------------------------------------
// The consumer.

#ifndef NDEBUG
static __thread char consumer_token;  // its address identifies the thread

// Debug builds: the first thread to poll becomes the consumer; another thread that
// polls while it is gets EPERM and a message.
static int check_consumer(struct ring *r) {
  void *me = &consumer_token;
  // Acquire: pairs with the release in ring_consumer_release / the claim below, so the
  // previous consumer's updates of tail and next_shard are visible to the next one.
  void *cur = atomic_load_explicit(&r->consumer, memory_order_acquire);
  if (__builtin_expect(cur == me, 1)) return 0;
  if (cur == NULL &&
      atomic_compare_exchange_strong_explicit(&r->consumer, &cur, me, memory_order_acq_rel,
                                              memory_order_acquire))
    return 0;
  fprintf(stderr,
          "ring_poll: thread %d polled ring %p, but another thread is its consumer: the ring "
          "has a single consumer (call ring_consumer_release() to hand the role over)\n",
          (int)gettid(), (void *)r);
  errno = EPERM;
  return -1;
}
#else
static int check_consumer(struct ring *r) {
  (void)r;
  return 0;
}
#endif

void ring_consumer_release(struct ring *r) {
  // Release: our consumer-side writes happen before the next consumer's claim.
  atomic_store_explicit(&r->consumer, NULL, memory_order_release);
}

// How many committed items shard s holds from position t on (at most `max`).
static inline size_t committed_from(const struct ring *r, struct ring_shard *s, uintptr_t t,
                                    size_t max) {
  if (r->mode.mode == RSEQ_MODE_RSEQ) {
    uintptr_t h = s->head_seen;  // the consumer's own copy
    if (h - t < max) {
      // Acquire: pairs with the producer's committing store (a release on x86); TSan
      // cannot see that store inside the asm, so the producer released `head` before
      // its section and we acquire it here.
      h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
      CCACHE_TSAN_ACQUIRE(&s->head);
      s->head_seen = h;
    }
    size_t n = (size_t)(h - t);
    return n < max ? n : max;
  }
  size_t n = 0;
  // Acquire: pairs with the producer's release of seq; the payload is written.
  while (n < max && __atomic_load_n(&slot_at(r, s, t + n)->seq, __ATOMIC_ACQUIRE) == t + n + 1)
    n++;
  return n;
}

// Take n committed items from shard s, starting at its tail, into out (payload_size each).
static inline void take(struct ring *r, struct ring_shard *s, uintptr_t t, size_t n,
                        unsigned char *out) {
  for (size_t k = 0; k < n; k++) {
    struct slot *slot = slot_at(r, s, t + k);
    if (r->record_size == 0)
      ((void **)out)[k] = *(void **)slot->payload;
    else
      memcpy(out + k * r->payload_size, slot->payload, r->payload_size);
    if (r->mode.mode == RSEQ_MODE_CAS)
      // Release: we are done reading the payload before a producer may reuse the slot.
      __atomic_store_n(&slot->seq, t + k + r->capacity, __ATOMIC_RELEASE);
  }
  // Release: pairs with the rseq producers' acquire of tail: the slots are read.
  __atomic_store_n(&s->tail, t + n, __ATOMIC_RELEASE);
}

static int poll_into(struct ring *r, void *out, int *shard) {
  if (check_consumer(r) != 0) return -1;
  int c = r->next_shard;
  for (int i = 0; i < r->nshards; i++) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->tail;  // ours alone
    if (committed_from(r, s, t, 1) == 1) {
      take(r, s, t, 1, out);
      if (shard) *shard = c;
      // Round-robin: the next poll starts at the next shard, so none starves.
      r->next_shard = c + 1 == r->nshards ? 0 : c + 1;
#if CCACHE_SEEDED_BUG == 5  // test-only variant (ci/fuzz-teeth): CAS mode starves shards
      if (r->mode.mode == RSEQ_MODE_CAS) r->next_shard = 0;
#endif
      return RING_OK;
    }
    if (++c == r->nshards) c = 0;
  }
  return RING_EMPTY;
}

int ring_poll(struct ring *r, void **item) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return -1;
  }
  return poll_into(r, item, NULL);
}

int ring_poll_shard(struct ring *r, void **item, int *shard) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return -1;
  }
  return poll_into(r, item, shard);
}

int ring_poll_record(struct ring *r, void *record) {
  if (r->record_size == 0) {
    errno = EINVAL;
    return -1;
  }
  return poll_into(r, record, NULL);
}

long ring_poll_batch(struct ring *r, void **items, size_t max) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return -1;
  }
  if (check_consumer(r) != 0) return -1;
  size_t got = 0;
  // Round-robin in chunks: a fair share per shard per pass, so none starves.
  size_t chunk = max / (size_t)r->nshards + 1;
  int idle = 0;
  int c = r->next_shard;
  while (got < max && idle < r->nshards) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->tail;
    size_t want = max - got < chunk ? max - got : chunk;
    size_t n = committed_from(r, s, t, want);
    if (n) {
      take(r, s, t, n, (unsigned char *)(items + got));
      got += n;
      idle = 0;
    } else {
      idle++;
    }
    if (++c == r->nshards) c = 0;
  }
  r->next_shard = c;
  return (long)got;
}

// ---------------------------------------------------------------------------------
// Statistics.

int ring_cpu_stats(const struct ring *r, int shard, struct ring_cpu_stats *out) {
  if (shard < 0 || shard >= r->nshards) {
    errno = EINVAL;
    return -1;
  }
  struct ring_shard *s = &r->shards[shard];
  // Relaxed: statistics; positions count every commit since creation.
  out->offered = __atomic_load_n(&s->head, __ATOMIC_RELAXED) - r->initial;
  out->polled = __atomic_load_n(&s->tail, __ATOMIC_RELAXED) - r->initial;
  out->full = atomic_load_explicit(&s->full, memory_order_relaxed);
  return 0;
}

void ring_stats(const struct ring *r, struct ring_stats *out) {
  memset(out, 0, sizeof *out);
  out->offer_section = r->mode.mode == RSEQ_MODE_CAS ? "(cas: no section)"
                       : r->record_size               ? "rseq_cmpeqv_trymemcpy_storev"
                                                      : "rseq_cmpeqv_trystorev_storev";
  for (int c = 0; c < r->nshards; c++) {
    struct ring_shard *s = &r->shards[c];
    out->offer_commits += __atomic_load_n(&s->head, __ATOMIC_RELAXED) - r->initial;
    out->offer_aborts += atomic_load_explicit(&s->aborts, memory_order_relaxed);
    out->offer_retries += atomic_load_explicit(&s->retries, memory_order_relaxed);
  }
}
