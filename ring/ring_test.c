// ring_test: single-threaded guarantees of the ring, each in RSEQ and CAS mode and with
// both indexes, driven through fake CPUs so every shard is reached deterministically:
//   - bad arguments: EINVAL / ENOSYS, nothing created;
//   - FULL and EMPTY exact at the capacity boundaries, per shard; counters exact;
//   - FIFO per shard; round-robin across shards (no starvation);
//   - position wrap-around: positions start just below 2^64;
//   - RSEQ mode, a migration right after an offer's index read: the item lands in the
//     shard of the CPU the offer's section ran on, never the one it read first;
//   - records of every size 1..64 survive the copy;
//   - RSEQ mode: the producers' cached limit is refreshed exactly when it runs out
//     (retries and FULL counted exactly), and what an aborted section leaves past the
//     head is never polled;
//   - a seeded random sequence of offers, polls and batches on random fake CPUs gives
//     results identical to a model, and identical in both modes;
//   - a second consumer thread gets EPERM (builds without NDEBUG).
#include "ring/ring.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rseq/test_liveness.h"
#include "rseq/testing.h"

static int nmodes;
static struct {
  enum rseq_mode mode;
  enum rseq_index index;
} modes[4];

static struct ring *make(enum rseq_mode mode, enum rseq_index index, size_t cap, size_t rec,
                         uintptr_t initial) {
  struct ring_options o = {mode, index, rec, initial};
  struct ring *r = ring_create(cap, &o);
  CHECK(r != NULL, "ring_create(%zu): errno %d", cap, errno);
  CHECK_EQ(ring_mode(r), mode);
  return r;
}

static void test_bad_arguments(void) {
  size_t bad[] = {0, 1, 3, 6, 100, 1000};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    struct ring_options o = {RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID, 0, 0};
    errno = 0;
    CHECK(ring_create(bad[i], &o) == NULL && errno == EINVAL, "capacity %zu", bad[i]);
  }
  struct ring_options o = {RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID, RING_RECORD_MAX + 1, 0};
  errno = 0;
  CHECK(ring_create(8, &o) == NULL && errno == EINVAL, "record size 65");
  o = (struct ring_options){(enum rseq_mode)7, RSEQ_INDEX_CPU_ID, 0, 0};
  errno = 0;
  CHECK(ring_create(8, &o) == NULL && errno == EINVAL, "bad mode");
  // The other payload kind is refused, nothing changes.
  struct ring *r = make(RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID, 8, 0, 0);
  char rec[8] = {0};
  errno = 0;
  CHECK(ring_offer_record(r, rec) == -1 && errno == EINVAL);
  errno = 0;
  CHECK(ring_poll_record(r, rec) == -1 && errno == EINVAL);
  errno = 0;
  CHECK(ring_offer_record_batch(r, rec, 1) == 0 && errno == EINVAL, "record batch, pointer ring");
  void *item;
  CHECK_EQ(ring_poll(r, &item), RING_EMPTY);
  ring_destroy(r);
  r = make(RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID, 8, 16, 0);
  errno = 0;
  CHECK(ring_offer(r, NULL) == -1 && errno == EINVAL);
  void *one[1] = {NULL};
  errno = 0;
  CHECK(ring_offer_batch(r, one, 1) == 0 && errno == EINVAL, "pointer batch, record ring");
  char rec16[16];
  CHECK_EQ(ring_poll_record(r, rec16), RING_EMPTY);  // nothing went in
  ring_destroy(r);
  printf("ok: bad arguments refused with EINVAL\n");
}

// ring_slot_bytes: the payload rounded up to whole words and then to a power of two,
// after an 8-byte sequence number in CAS mode; records over 56 bytes take 128 there.
static void test_slot_bytes(enum rseq_mode mode, enum rseq_index index) {
  static const size_t rec[] = {0, 1, 8, 9, 24, 32, 33, 56, 57, 64};
  static const size_t rseq_bytes[] = {8, 8, 8, 16, 32, 32, 64, 64, 64, 64};
  static const size_t cas_bytes[] = {16, 16, 16, 32, 32, 64, 64, 64, 128, 128};
  for (size_t i = 0; i < sizeof rec / sizeof *rec; i++) {
    struct ring *r = make(mode, index, 8, rec[i], 0);
    size_t want = mode == RSEQ_MODE_CAS ? cas_bytes[i] : rseq_bytes[i];
    CHECK(ring_slot_bytes(r) == want, "mode=%s record_size=%zu: ring_slot_bytes %zu, want %zu",
          rseq_mode_name(mode), rec[i], ring_slot_bytes(r), want);
    ring_destroy(r);
  }
}

// Fill every shard to the brim and drain it, exactly.
static void test_boundaries(enum rseq_mode mode, enum rseq_index index, uintptr_t initial) {
  test_context("boundaries mode=%s index=%s initial=%#lx", rseq_mode_name(mode),
               rseq_index_name(index), (unsigned long)initial);
  const size_t cap = 8;
  struct ring *r = make(mode, index, cap, 0, initial);
  int n = ring_shards(r);
  for (int lap = 0; lap < 5; lap++) {
    for (int c = 0; c < n; c++) {
      rseq_fake_cpu_set(c);
      for (size_t k = 0; k < cap; k++)
        CHECK_EQ(ring_offer(r, (void *)(uintptr_t)(c * 1000 + k + 1)), RING_OK);
      CHECK_EQ(ring_offer(r, (void *)1), RING_FULL);
      CHECK_EQ(ring_offer(r, (void *)1), RING_FULL);
    }
    // Round-robin: one item from each shard in turn (starting wherever the cursor
    // was left), FIFO within a shard.
    int first = -1;
    for (size_t k = 0; k < cap; k++) {
      for (int i = 0; i < n; i++) {
        void *item;
        int shard;
        CHECK_EQ(ring_poll_shard(r, &item, &shard), RING_OK);
        if (first < 0) first = shard;
        int c = (first + i) % n;
        CHECK_EQ(shard, c);
        CHECK_EQ((uintptr_t)item, (uintptr_t)(c * 1000 + k + 1));
      }
    }
    void *item;
    CHECK_EQ(ring_poll(r, &item), RING_EMPTY);
    // One slot free again after one poll: exactly one more offer fits.
    rseq_fake_cpu_set(0);
    for (size_t k = 0; k < cap; k++) CHECK_EQ(ring_offer(r, (void *)(k + 1)), RING_OK);
    CHECK_EQ(ring_poll(r, &item), RING_OK);
    CHECK_EQ(ring_offer(r, (void *)99), RING_OK);
    CHECK_EQ(ring_offer(r, (void *)100), RING_FULL);
    void *batch[64];
    CHECK_EQ(ring_poll_batch(r, batch, 64), (long)cap);
    for (size_t k = 0; k + 1 < cap; k++) CHECK_EQ((uintptr_t)batch[k], k + 2);
    CHECK_EQ((uintptr_t)batch[cap - 1], 99);
    CHECK_EQ(ring_poll_batch(r, batch, 64), 0);
  }
  for (int c = 0; c < n; c++) {
    struct ring_cpu_stats st;
    CHECK(ring_cpu_stats(r, c, &st) == 0);
    uint64_t want = 5 * (cap + (c == 0 ? cap + 1 : 0));
    CHECK(st.offered == want && st.polled == want, "shard %d offered %lu polled %lu want %lu", c,
          (unsigned long)st.offered, (unsigned long)st.polled, (unsigned long)want);
    CHECK_EQ(st.full, 5 * (2 + (c == 0)));
  }
  struct ring_stats rs;
  ring_stats(r, &rs);
  CHECK_EQ(rs.offer_aborts, 0);  // fake CPUs: the kernel never aborts
  ring_destroy(r);
}

static void test_records(enum rseq_mode mode, enum rseq_index index) {
  test_context("records mode=%s index=%s", rseq_mode_name(mode), rseq_index_name(index));
  for (size_t size = 1; size <= RING_RECORD_MAX; size++) {
    struct ring *r = make(mode, index, 4, size, UINTPTR_MAX - 2);
    unsigned char in[RING_RECORD_MAX], out[RING_RECORD_MAX + 1];
    for (int round = 0; round < 3; round++) {
      for (int k = 0; k < 4; k++) {
        for (size_t b = 0; b < size; b++) in[b] = (unsigned char)(size * 31 + b * 7 + k + round);
        CHECK_EQ(ring_offer_record(r, in), RING_OK);
      }
      CHECK_EQ(ring_offer_record(r, in), RING_FULL);
      for (int k = 0; k < 4; k++) {
        memset(out, 0xEE, sizeof out);
        CHECK_EQ(ring_poll_record(r, out), RING_OK);
        for (size_t b = 0; b < size; b++)
          CHECK(out[b] == (unsigned char)(size * 31 + b * 7 + k + round), "size %zu byte %zu", size,
                b);
        CHECK(out[size] == 0xEE, "record of %zu bytes wrote past its end", size);
      }
      CHECK_EQ(ring_poll_record(r, out), RING_EMPTY);
    }
    // ring_poll_record_batch: records back to back, none past the count it returns.
    unsigned char many[5 * RING_RECORD_MAX + 1];
    for (int k = 0; k < 3; k++) {
      for (size_t b = 0; b < size; b++) in[b] = (unsigned char)(size + b + k * 5);
      CHECK_EQ(ring_offer_record(r, in), RING_OK);
    }
    memset(many, 0xEE, sizeof many);
    CHECK_EQ(ring_poll_record_batch(r, many, 5), 3);
    for (int k = 0; k < 3; k++)
      for (size_t b = 0; b < size; b++)
        CHECK(many[(size_t)k * size + b] == (unsigned char)(size + b + k * 5),
              "batch poll: size %zu record %d byte %zu", size, k, b);
    CHECK(many[3 * size] == 0xEE, "record batch of %zu-byte records wrote past the third", size);
    CHECK_EQ(ring_poll_record_batch(r, many, 5), 0);
    // ring_offer_record_batch: 5 records into the 4 free slots commits 4, in order, and
    // then the shard is full; twice, so that the positions wrap (they started below it).
    for (int round = 0; round < 2; round++) {
      for (int k = 0; k < 5; k++)
        for (size_t b = 0; b < size; b++)
          many[(size_t)k * size + b] = (unsigned char)(size * 3 + b + (size_t)k * 11 + round);
      CHECK_EQ(ring_offer_record_batch(r, many, 5), 4);
      CHECK_EQ(ring_offer_record_batch(r, many, 1), 0);
      CHECK_EQ(ring_offer_record(r, in), RING_FULL);
      for (int k = 0; k < 4; k++) {
        memset(out, 0xEE, sizeof out);
        CHECK_EQ(ring_poll_record(r, out), RING_OK);
        for (size_t b = 0; b < size; b++)
          CHECK(out[b] == (unsigned char)(size * 3 + b + (size_t)k * 11 + round),
                "record batch: size %zu record %d byte %zu", size, k, b);
        CHECK(out[size] == 0xEE, "record of %zu bytes wrote past its end", size);
      }
      CHECK_EQ(ring_poll_record(r, out), RING_EMPTY);
    }
    CHECK_EQ(ring_offer_record_batch(r, many, 0), 0);
    ring_destroy(r);
    // A batch longer than one section takes (64 records in RSEQ mode): all of it, in
    // order, whole, across the wrap of positions.
    r = make(mode, index, 256, size, UINTPTR_MAX - 70);
    static unsigned char big[200 * RING_RECORD_MAX];
    for (size_t k = 0; k < 200; k++)
      for (size_t b = 0; b < size; b++) big[k * size + b] = (unsigned char)(k * 5 + b);
    CHECK_EQ(ring_offer_record_batch(r, big, 200), 200);
    for (size_t k = 0; k < 200; k++) {
      CHECK_EQ(ring_poll_record(r, out), RING_OK);
      for (size_t b = 0; b < size; b++)
        CHECK(out[b] == (unsigned char)(k * 5 + b), "long record batch: size %zu record %zu", size,
              k);
    }
    CHECK_EQ(ring_poll_record(r, out), RING_EMPTY);
    ring_destroy(r);
  }
}

// ring_offer_batch at the boundaries: a batch larger than the room left commits what
// fits (FULL exact), batches wrap around the slot array, and FIFO holds across them.
static void test_offer_batch(enum rseq_mode mode, enum rseq_index index, uintptr_t initial) {
  test_context("offer batch mode=%s index=%s initial=%#lx", rseq_mode_name(mode),
               rseq_index_name(index), (unsigned long)initial);
  const size_t cap = 8;
  struct ring *r = make(mode, index, cap, 0, initial);
  rseq_fake_cpu_set(ring_shards(r) - 1);
  void *items[20], *got[20];
  for (size_t k = 0; k < 20; k++) items[k] = (void *)(uintptr_t)(k + 1);
  uintptr_t next_in = 1, next_out = 1;
  for (int round = 0; round < 6; round++) {
    // Room for cap - held: a batch of 5, then one of 20 that fills the rest exactly.
    size_t held = (size_t)(next_in - next_out);
    for (size_t k = 0; k < 20; k++) items[k] = (void *)(next_in + k);
    size_t n = ring_offer_batch(r, items, 5);
    CHECK_EQ(n, cap - held < 5 ? cap - held : 5);
    next_in += n;
    for (size_t k = 0; k < 20; k++) items[k] = (void *)(next_in + k);
    n = ring_offer_batch(r, items, 20);
    CHECK_EQ(n, cap - (size_t)(next_in - next_out));
    next_in += n;
    CHECK_EQ(ring_offer_batch(r, items, 1), 0);  // full
    CHECK_EQ(ring_offer(r, (void *)1), RING_FULL);
    // Take 3 (or all on odd rounds), in order.
    long want = round % 2 ? (long)cap : 3;
    CHECK_EQ(ring_poll_batch(r, got, (size_t)want), want);
    for (long k = 0; k < want; k++) CHECK_EQ((uintptr_t)got[k], next_out + (uintptr_t)k);
    next_out += (uintptr_t)want;
  }
  CHECK_EQ(ring_offer_batch(r, items, 0), 0);
  void *item;
  while (ring_poll(r, &item) == RING_OK) CHECK_EQ((uintptr_t)item, next_out++);
  CHECK_EQ(next_out, next_in);
  struct ring_cpu_stats st;
  CHECK(ring_cpu_stats(r, ring_shards(r) - 1, &st) == 0);
  CHECK_EQ(st.offered, next_in - 1);
  struct ring_stats rs;
  ring_stats(r, &rs);
  CHECK_EQ(rs.offer_aborts, 0);  // fake CPUs: the kernel never aborts
  ring_destroy(r);
  // A batch longer than one section takes (64 slots in RSEQ mode): in order, all of it.
  r = make(mode, index, 256, 0, initial);
  static void *many[200];
  for (size_t k = 0; k < 200; k++) many[k] = (void *)(uintptr_t)(k + 1);
  CHECK_EQ(ring_offer_batch(r, many, 200), 200);
  for (uintptr_t k = 1; k <= 200; k++) {
    CHECK_EQ(ring_poll(r, &item), RING_OK);
    CHECK_EQ((uintptr_t)item, k);
  }
  CHECK_EQ(ring_poll(r, &item), RING_EMPTY);
  ring_destroy(r);
}

// RSEQ mode: the producers' cached limit. A shard filled to capacity refuses the next
// offer (FULL, counted); after the consumer takes k items, the first offer finds the
// limit run out, rereads the tail (one retry, counted) and goes in, the next k - 1 go
// in on that limit with no retry, and the one after is FULL again. Exact counts, across
// the wrap of positions, with pointer and record rings, single offers and batches.
static void test_limit_refresh(enum rseq_index index, uintptr_t initial, size_t rec, bool batch) {
  test_context("limit refresh index=%s initial=%#lx record=%zu batch=%d", rseq_index_name(index),
               (unsigned long)initial, rec, batch);
  const size_t cap = 8;
  struct ring *r = make(RSEQ_MODE_RSEQ, index, cap, rec, initial);
  rseq_fake_cpu_set(0);
  unsigned char buf[64] = {0};
  uintptr_t next = 1, polled = 1;
  uint64_t want_full = 0, want_retries = 0;
  for (int round = 0; round < 6; round++) {
    size_t k = round == 0 ? cap : 1 + (size_t)round % 4;  // how many to offer into the room
    size_t done = 0;
    if (batch) {
      // More than fits: takes k, then FULL. A record carries its position in its first
      // 8 bytes, as with the single offers below.
      void *items[11];
      static unsigned char records[11 * 64];
      for (size_t i = 0; i < k + 3; i++) {
        uintptr_t v = next + i;
        items[i] = (void *)v;
        memcpy(records + i * (rec ? rec : 8), &v, sizeof v);
      }
      done = rec ? ring_offer_record_batch(r, records, k + 3) : ring_offer_batch(r, items, k + 3);
      CHECK_EQ(done, k);
      next += k;
      want_full++;
    } else {
      for (size_t i = 0; i < k; i++, next++) {
        memcpy(buf, &next, sizeof next);
        int res = rec ? ring_offer_record(r, buf) : ring_offer(r, (void *)next);
        CHECK_EQ(res, RING_OK);
        done++;
      }
    }
    if (round > 0) want_retries++;  // the first offer of the round refreshed the limit
    memcpy(buf, &next, sizeof next);
    int res = rec ? ring_offer_record(r, buf) : ring_offer(r, (void *)next);
    CHECK_EQ(res, RING_FULL);
    want_full++;
    struct ring_stats st;
    ring_stats(r, &st);
    struct ring_cpu_stats cs;
    CHECK_EQ(ring_cpu_stats(r, 0, &cs), 0);
    CHECK_EQ(cs.full, want_full);
    CHECK_EQ(st.offer_retries, want_retries);
    CHECK_EQ(st.offer_aborts, 0);  // fake CPUs: no section can abort
    // Take the next round's room, oldest first.
    size_t take = 1 + (size_t)(round + 1) % 4;
    for (size_t i = 0; i < take; i++, polled++) {
      uintptr_t v = 0;
      if (rec) {
        CHECK_EQ(ring_poll_record(r, buf), RING_OK);
        memcpy(&v, buf, sizeof v);
      } else {
        void *item;
        CHECK_EQ(ring_poll(r, &item), RING_OK);
        v = (uintptr_t)item;
      }
      CHECK_EQ(v, polled);
    }
  }
  ring_destroy(r);
}

// What an aborted section leaves behind (items written into the slots from the head
// on, and no commit) must never reach the consumer: the head says what is committed,
// and each later section writes over them. Planted the way such an abort leaves them,
// then each section goes over them, across the wrap.
static void test_leftovers(enum rseq_index index) {
  test_context("leftovers of an aborted batch index=%s", rseq_index_name(index));
  struct ring *r = make(RSEQ_MODE_RSEQ, index, 8, 0, UINTPTR_MAX - 5);
  rseq_fake_cpu_set(0);
  const uintptr_t planted = 0xdead0000;
  uintptr_t next = 1, polled = 1;
  for (int round = 0; round < 12; round++) {
    CHECK_EQ(ring_debug_plant_leftovers(r, 0, 1 + (size_t)round % 5, planted), 0);
    void *items[3] = {(void *)next, (void *)(next + 1), (void *)(next + 2)};
    size_t n = (size_t)round % 3 + 1;  // a single offer, a batch of 2, a batch of 3
    size_t done = n == 1 ? (ring_offer(r, items[0]) == RING_OK) : ring_offer_batch(r, items, n);
    CHECK_EQ(done, n);
    next += n;
    void *item;
    while (ring_poll(r, &item) == RING_OK) {
      CHECK((uintptr_t)item != planted, "round %d: a planted leftover was polled", round);
      CHECK_EQ((uintptr_t)item, polled);
      polled++;
    }
    CHECK_EQ(polled, next);
  }
  CHECK(ring_debug_plant_leftovers(r, 0, 8, planted) == -1 && errno == EINVAL, "too many");
  ring_destroy(r);
  struct ring_options o = {RSEQ_MODE_CAS, index, 0, 0};
  r = ring_create(8, &o);
  CHECK(r && ring_debug_plant_leftovers(r, 0, 1, planted) == -1 && errno == EINVAL, "CAS mode");
  ring_destroy(r);
}

// The same for record rings: records planted the way an aborted ring_offer_record or
// ring_offer_record_batch leaves them, then single and batch record offers over them,
// across the wrap; every record polled is the one offered, whole.
static void record_at(unsigned char *rec, size_t size, uintptr_t pos) {
  for (size_t b = 0; b < size; b++) rec[b] = (unsigned char)(pos * 7 + b * 3 + 1);
}

static void test_record_leftovers(enum rseq_index index) {
  static const size_t sizes[] = {12, 21, 32, 64};
  const uintptr_t planted = 0xdeadbeefdead0000;
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    size_t size = sizes[si];
    test_context("record leftovers index=%s record=%zu", rseq_index_name(index), size);
    struct ring *r = make(RSEQ_MODE_RSEQ, index, 8, size, UINTPTR_MAX - 5);
    rseq_fake_cpu_set(0);
    unsigned char plant[RING_RECORD_MAX], in[3 * RING_RECORD_MAX], want[RING_RECORD_MAX],
        out[2 * RING_RECORD_MAX];
    for (size_t b = 0; b < size; b++) plant[b] = (unsigned char)(planted >> (8 * (b % 8)));
    uintptr_t next = 1, polled = 1;
    for (int round = 0; round < 12; round++) {
      CHECK_EQ(ring_debug_plant_leftovers(r, 0, 1 + (size_t)round % 5, planted), 0);
      size_t n = (size_t)round % 3 + 1;  // a single offer, a batch of 2, a batch of 3
      for (size_t k = 0; k < n; k++) record_at(in + k * size, size, next + k);
      size_t done = n == 1 ? (ring_offer_record(r, in) == RING_OK)
                           : ring_offer_record_batch(r, in, n);
      CHECK_EQ(done, n);
      next += n;
      // Single polls on even rounds, batch polls of 2 on odd ones.
      for (;;) {
        long got = round % 2 ? ring_poll_record_batch(r, out, 2)
                             : (ring_poll_record(r, out) == RING_OK);
        if (got <= 0) break;
        for (long k = 0; k < got; k++, polled++) {
          const unsigned char *o = out + (size_t)k * size;
          CHECK(memcmp(o, plant, size) != 0, "round %d: a planted leftover was polled", round);
          record_at(want, size, polled);
          CHECK(memcmp(o, want, size) == 0, "round %d: record %lu polled wrong", round,
                (unsigned long)polled);
        }
      }
      CHECK_EQ(polled, next);
    }
    CHECK(ring_debug_plant_leftovers(r, 0, 8, planted) == -1 && errno == EINVAL, "too many");
    ring_destroy(r);
  }
  struct ring_options o = {RSEQ_MODE_CAS, index, 21, 0};
  struct ring *r = ring_create(8, &o);
  CHECK(r && ring_debug_plant_leftovers(r, 0, 1, planted) == -1 && errno == EINVAL,
        "CAS record ring");
  ring_destroy(r);
}

// A model of the ring: one FIFO per shard and the round-robin cursor.
#define MODEL_CAP 16
#define MODEL_SHARDS 64
struct model {
  uintptr_t q[MODEL_SHARDS][MODEL_CAP];
  int head[MODEL_SHARDS], len[MODEL_SHARDS];
  int next;
  int n;
};

// An empty model of ring r's shards (at most MODEL_SHARDS of them).
static void model_reset(struct model *m, const struct ring *r) {
  memset(m, 0, sizeof *m);
  m->n = ring_shards(r) < MODEL_SHARDS ? ring_shards(r) : MODEL_SHARDS;
}

static int model_offer(struct model *m, int c, uintptr_t v) {
  if (m->len[c] == MODEL_CAP) return RING_FULL;
  m->q[c][(m->head[c] + m->len[c]++) % MODEL_CAP] = v;
  return RING_OK;
}

static int model_poll(struct model *m, uintptr_t *v) {
  for (int i = 0; i < m->n; i++) {
    int c = (m->next + i) % m->n;
    if (m->len[c]) {
      *v = m->q[c][m->head[c]];
      m->head[c] = (m->head[c] + 1) % MODEL_CAP;
      m->len[c]--;
      m->next = (c + 1) % m->n;
      return RING_OK;
    }
  }
  return RING_EMPTY;
}

// The batch contract: round-robin from the cursor, at most max(max/shards + 1,
// RING_POLL_RUN_MIN) items from a shard per visit, until max items or a full pass over
// empty shards.
static long model_poll_batch(struct model *m, uintptr_t *out, size_t max) {
  size_t got = 0, chunk = max / (size_t)m->n + 1;
  if (chunk < RING_POLL_RUN_MIN) chunk = RING_POLL_RUN_MIN;
  int idle = 0, c = m->next;
  while (got < max && idle < m->n) {
    size_t want = max - got < chunk ? max - got : chunk, k = 0;
    for (; k < want && m->len[c]; k++) {
      out[got++] = m->q[c][m->head[c]];
      m->head[c] = (m->head[c] + 1) % MODEL_CAP;
      m->len[c]--;
    }
    idle = k ? 0 : idle + 1;
    c = (c + 1) % m->n;
  }
  m->next = c;
  return (long)got;
}

// The batch contract's share term, on any number of shards: with every shard full, a
// batch of 9 x shards takes runs of max/shards + 1 = 10 items, past RING_POLL_RUN_MIN
// (the random sequences reach that term only on machines of 3 CPUs or fewer). Shard c
// holds the values c * MODEL_CAP + 1 .. (c + 1) * MODEL_CAP.
static void test_batch_share(enum rseq_mode mode, enum rseq_index index) {
  test_context("batch share mode=%s index=%s", rseq_mode_name(mode), rseq_index_name(index));
  struct ring *r = make(mode, index, MODEL_CAP, 0, 0);
  static struct model m;
  model_reset(&m, r);
  for (int c = 0; c < m.n; c++) {
    rseq_fake_cpu_set(c);
    for (uintptr_t k = 1; k <= MODEL_CAP; k++) {
      uintptr_t v = (uintptr_t)c * MODEL_CAP + k;
      CHECK_EQ(ring_offer(r, (void *)v), RING_OK);
      CHECK_EQ(model_offer(&m, c, v), RING_OK);
    }
  }
  static void *batch[9 * MODEL_SHARDS];
  static uintptr_t want[9 * MODEL_SHARDS];
  size_t max = 9 * (size_t)m.n;
  for (int call = 0;; call++) {
    long n = ring_poll_batch(r, batch, max);
    long mn = model_poll_batch(&m, want, max);
    CHECK(n == mn, "call %d: batch of %zu gave %ld, model %ld (%d shards)", call, max, n, mn, m.n);
    for (long k = 0; k < n; k++)
      CHECK((uintptr_t)batch[k] == want[k], "call %d: item %ld: %lu, model %lu", call, k,
            (unsigned long)(uintptr_t)batch[k], (unsigned long)want[k]);
    if (call == 0 && m.n >= 2) {  // the first run: 10 items of one shard, then the next
      uintptr_t shard0 = ((uintptr_t)batch[0] - 1) / MODEL_CAP;
      for (int k = 1; k < 10; k++)
        CHECK(((uintptr_t)batch[k] - 1) / MODEL_CAP == shard0, "first run ended at %d", k);
      CHECK(((uintptr_t)batch[10] - 1) / MODEL_CAP != shard0, "first run longer than 10");
    }
    if (n == 0) break;
  }
  ring_destroy(r);
}

// The observable trace of a random sequence, as a hash; checked against the model.
static uint64_t run_sequence(enum rseq_mode mode, enum rseq_index index, uint64_t seed) {
  test_context("sequence mode=%s index=%s seed=%lu (TEST_SEED=%lu reproduces)",
               rseq_mode_name(mode), rseq_index_name(index), (unsigned long)seed,
               (unsigned long)seed);
  struct ring *r = make(mode, index, MODEL_CAP, 0, UINTPTR_MAX - 40);
  static struct model m;
  model_reset(&m, r);
  uint64_t rng = seed, hash = 1469598103934665603ULL;
  uintptr_t value = 1;
  for (int op = 0; op < 20000; op++) {
    uint64_t x = test_rand(&rng);
    int c = (int)(x % (uint64_t)m.n);
    rseq_fake_cpu_set(c);
    int res;
    uintptr_t got = 0;
    switch ((x >> 16) % 5) {
      case 4: {
        void *batch[6];
        size_t n = (x >> 24) % 7, want = 0;
        for (size_t k = 0; k < n; k++) batch[k] = (void *)(value + k);
        while (want < n && model_offer(&m, c, value + want) == RING_OK) want++;
        size_t got_n = ring_offer_batch(r, batch, n);
        CHECK(got_n == want, "op %d: batch offer of %zu on shard %d gave %zu, model %zu", op, n, c,
              got_n, want);
        value += n;
        res = (int)got_n;
        break;
      }
      case 0:
      case 1: {
        res = ring_offer(r, (void *)value);
        CHECK(res == model_offer(&m, c, value), "op %d: offer on shard %d", op, c);
        value++;
        break;
      }
      case 2: {
        void *item;
        res = ring_poll(r, &item);
        uintptr_t want;
        CHECK(res == model_poll(&m, &want), "op %d: poll", op);
        if (res == RING_OK) {
          got = (uintptr_t)item;
          CHECK(got == want, "op %d: polled %lu, model %lu", op, got, want);
        }
        break;
      }
      default: {
        void *batch[24];  // up to 24: past RING_POLL_RUN_MIN, so a visit's run can end
        uintptr_t want_items[24];  // at the chunk with items left in the shard (cap 16)
        size_t want_n = (x >> 24) % 25;
        long n = ring_poll_batch(r, batch, want_n);
        long mn = model_poll_batch(&m, want_items, want_n);
        CHECK(n == mn, "op %d: batch of %zu gave %ld, model %ld", op, want_n, n, mn);
        for (long k = 0; k < n; k++) {
          CHECK((uintptr_t)batch[k] == want_items[k], "op %d: batch item %ld", op, k);
          got ^= (uintptr_t)batch[k] * (uintptr_t)(k + 1);
        }
        res = (int)n;
        break;
      }
    }
    hash = (hash ^ (uint64_t)res ^ (got << 8)) * 1099511628211ULL;
  }
  // Drain and compare the leftovers.
  void *item;
  uintptr_t want;
  while (model_poll(&m, &want) == RING_OK) {
    CHECK_EQ(ring_poll(r, &item), RING_OK);
    CHECK((uintptr_t)item == want, "drain: %lu, model %lu", (unsigned long)(uintptr_t)item,
          (unsigned long)want);
    hash = (hash ^ (uintptr_t)item) * 1099511628211ULL;
  }
  CHECK_EQ(ring_poll(r, &item), RING_EMPTY);
  ring_destroy(r);
  return hash;
}

static struct ring *shared_ring;
__attribute__((unused)) static void *second_consumer(void *arg) {
  (void)arg;
  void *item;
  errno = 0;
  int rc = ring_poll(shared_ring, &item);
  return (void *)(intptr_t)(rc == -1 && errno == EPERM);
}

static void test_single_consumer(void) {
#ifdef NDEBUG
  printf("SKIPPED: single-consumer check: compiled out with NDEBUG\n");
#else
  shared_ring = make(RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID, 8, 0, 0);
  void *item;
  CHECK_EQ(ring_poll(shared_ring, &item), RING_EMPTY);  // we are the consumer now
  pthread_t t;
  void *refused;
  CHECK(pthread_create(&t, NULL, second_consumer, NULL) == 0);
  pthread_join(t, &refused);
  CHECK(refused == (void *)1, "a second consumer thread was not refused with EPERM");
  ring_consumer_release(shared_ring);
  CHECK(pthread_create(&t, NULL, second_consumer, NULL) == 0);
  pthread_join(t, &refused);
  CHECK(refused == (void *)0, "after ring_consumer_release another thread may consume");
  ring_destroy(shared_ring);
  printf("ok: a second consumer thread gets EPERM; ring_consumer_release hands over\n");
#endif
}

// A migration between the offer's index read and its section (played with fake
// CPUs): the section must abort and the offer retry on the new CPU's shard. An offer
// that computed its shard from one read and checked its section against another would
// commit into the old CPU's shard from the new CPU.
static void test_migration_mid_offer(enum rseq_index index) {
  // 0: a pointer, 16: a record, 32: a batch of 3 pointers, 48: a batch of 3 records
  for (size_t rec = 0; rec <= 48; rec += 16) {
    test_context("migration mid-offer index=%s case=%zu", rseq_index_name(index), rec);
    bool records = rec == 16 || rec == 48;
    struct ring *r = make(RSEQ_MODE_RSEQ, index, 8, records ? 16 : 0, 0);
    if (ring_shards(r) < 2) {
      printf("SKIPPED: migration mid-offer: one shard only\n");
      ring_destroy(r);
      return;
    }
    rseq_fake_cpu_set(0);
    rseq_fake_cpu_migrate_after_next_read(1);
    char record[16] = "migrated";
    char records3[3][16] = {"migrated", "record 2", "record 3"};
    void *three[3] = {(void *)7, (void *)8, (void *)9};
    // Liveness: after the permanent move the offer must commit at its first retry.
    test_liveness_begin(rec == 48   ? "ring_offer_record_batch after a migration"
                        : rec == 32 ? "ring_offer_batch after a migration"
                        : rec       ? "ring_offer_record after a migration"
                                    : "ring_offer after a migration",
                        4);
    if (rec == 48)
      CHECK_EQ(ring_offer_record_batch(r, records3, 3), 3);
    else if (rec == 32)
      CHECK_EQ(ring_offer_batch(r, three, 3), 3);
    else
      CHECK_EQ(rec ? ring_offer_record(r, record) : ring_offer(r, (void *)7), RING_OK);
    CHECK_EQ(test_liveness_end(), 1);
    CHECK_EQ(rseq_current_index(index), 1);
    struct ring_cpu_stats st0, st1;
    CHECK(ring_cpu_stats(r, 0, &st0) == 0 && ring_cpu_stats(r, 1, &st1) == 0);
    CHECK(st0.offered == 0 && st1.offered == (rec >= 32 ? 3 : 1),
          "shard 0 got %lu items and shard 1 %lu: the offer committed on the CPU it read first",
          (unsigned long)st0.offered, (unsigned long)st1.offered);
    struct ring_stats rs;
    ring_stats(r, &rs);
    CHECK_EQ(rs.offer_aborts, 1);  // the section saw the move
    if (records) {
      char got[16];
      CHECK_EQ(ring_poll_record(r, got), RING_OK);
      CHECK(!memcmp(got, record, sizeof got), "the first record after the move is torn");
    } else {
      void *item;
      int shard;
      CHECK_EQ(ring_poll_shard(r, &item, &shard), RING_OK);
      CHECK(item == (void *)7 && shard == 1, "item %p from shard %d", item, shard);
    }
    ring_destroy(r);
  }
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  test_watchdog(60);  // runs in a second; a full check that never clears spins for ever
  test_bad_arguments();
  test_single_consumer();
  if (!rseq_available()) test_skip("fake CPUs need rseq: %s", rseq_unavailable_reason());
  CHECK(rseq_fake_cpu_enter() == 0);
  for (int mode = RSEQ_MODE_RSEQ; mode <= RSEQ_MODE_CAS; mode++)
    for (int index = 0; index <= 1; index++) {
      struct rseq_percpu_mode m;
      const char *why;
      if (rseq_resolve_mode((enum rseq_mode)mode, (enum rseq_index)index, &m, &why) != 0) {
        printf("SKIPPED: mode %s index %s: %s\n", rseq_mode_name(mode), rseq_index_name(index),
               why);
        continue;
      }
      modes[nmodes].mode = (enum rseq_mode)mode;
      modes[nmodes++].index = (enum rseq_index)index;
    }
  for (int i = 0; i < nmodes; i++) {
    test_slot_bytes(modes[i].mode, modes[i].index);
    test_boundaries(modes[i].mode, modes[i].index, 0);
    test_boundaries(modes[i].mode, modes[i].index, UINTPTR_MAX - 11);  // wraps mid-test
    test_records(modes[i].mode, modes[i].index);
    test_offer_batch(modes[i].mode, modes[i].index, 0);
    test_offer_batch(modes[i].mode, modes[i].index, UINTPTR_MAX - 13);  // wraps mid-test
    test_batch_share(modes[i].mode, modes[i].index);
    if (modes[i].mode == RSEQ_MODE_RSEQ) {
      test_migration_mid_offer(modes[i].index);
      test_leftovers(modes[i].index);
      test_record_leftovers(modes[i].index);
      for (int w = 0; w < 2; w++) {
        uintptr_t initial = w ? UINTPTR_MAX - 9 : 0;  // wraps mid-test
        test_limit_refresh(modes[i].index, initial, 0, false);
        test_limit_refresh(modes[i].index, initial, 0, true);
        test_limit_refresh(modes[i].index, initial, 24, false);
        test_limit_refresh(modes[i].index, initial, 24, true);
      }
    }
    printf(
        "ok: mode=%s index=%s: slot sizes, boundaries, wrap-around, records, batch offers and "
        "polls, migration "
        "mid-offer, aborted-section leftovers, the cached limit (RSEQ)\n",
        rseq_mode_name(modes[i].mode), rseq_index_name(modes[i].index));
  }
  uint64_t seed0 = test_seed(42);
  for (uint64_t seed = seed0; seed < seed0 + 5; seed++) {
    uint64_t first = 0;
    for (int i = 0; i < nmodes; i++) {
      uint64_t h = run_sequence(modes[i].mode, modes[i].index, seed);
      if (i == 0) first = h;
      CHECK(h == first, "seed %lu: mode %s index %s trace differs from mode %s",
            (unsigned long)seed, rseq_mode_name(modes[i].mode), rseq_index_name(modes[i].index),
            rseq_mode_name(modes[0].mode));
    }
    printf("ok: seed %lu: %d modes gave identical traces, all matching the model\n",
           (unsigned long)seed, nmodes);
  }
  CHECK(rseq_fake_cpu_exit() == 0);
  printf("PASS\n");
  return 0;
}
