// abortscan_workload: a deterministic single-thread workload that runs every critical
// section in the binary (the primitives directly, the per-CPU stacks through the
// allocator, the try-store sections through the ring), retrying aborted sections as
// their users do, and then checks its own invariants exactly. abortscan runs it under
// ptrace with one forced abort at a chosen instruction.
//   abortscan_workload [--index cpu|cid] [--list]
// Prints the registry (with per-section counters) as one JSON line starting with
// "REGISTRY ", then "INVARIANTS OK" and exits 0, or "INVARIANT FAILED: ..." and exits 1.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator/ccache.h"
#include "ring/ring.h"
#include "rseq/rseq.h"
#include "stress/pin.h"

static enum rseq_index idx = RSEQ_INDEX_CPU_ID;
static int failures;

#define EXPECT(cond, ...)                  \
  do {                                     \
    if (!(cond)) {                         \
      printf("INVARIANT FAILED: " __VA_ARGS__); \
      printf("\n");                        \
      failures++;                          \
    }                                      \
  } while (0)

static int cpu(void) { return rseq_current_index(idx); }

struct node {
  long id;
  intptr_t next;
};

static void primitives(void) {
  static intptr_t sums[1024], base_sums[1024];
  intptr_t deref_base = (intptr_t)base_sums;
  int adds = 0;
  for (int i = 0; i < 50; i++, adds++)
    while (rseq_addv(idx, &sums[cpu() & 1023], 1, cpu()) != RSEQ_COMMIT) {
    }
  for (int i = 0; i < 50; i++)
    for (;;) {
      int c = cpu();
      if (rseq_offset_deref_addv(idx, &deref_base, c * (long)sizeof(intptr_t), 2, c) == RSEQ_COMMIT) break;
    }
  intptr_t total = 0, dtotal = 0;
  for (int c = 0; c < 1024; c++) {
    total += sums[c];
    dtotal += base_sums[c];
  }
  EXPECT(total == adds, "addv: sum %ld, %d adds committed", (long)total, adds);
  EXPECT(dtotal == 100, "offset_deref_addv: sum %ld, want 100", (long)dtotal);

  // cmpeqv_storev: a counter advanced by compare-and-store.
  static intptr_t word[1024];
  for (int i = 0; i < 50; i++)
    for (;;) {
      int c = cpu();
      intptr_t v = word[c];
      if (rseq_cmpeqv_storev(idx, &word[c], v, v + 1, c) == RSEQ_COMMIT) break;
    }
  total = 0;
  for (int c = 0; c < 1024; c++) total += word[c];
  EXPECT(total == 50, "cmpeqv_storev: %ld increments, want 50", (long)total);

  // trystorev_storev and trymemcpy_storev: per-CPU logs; each entry exactly once.
  static intptr_t count[1024], items[1024][64], rcount[1024];
  static unsigned char records[1024][64][24];
  for (int i = 0; i < 50; i++) {
    for (;;) {
      int c = cpu();
      intptr_t n = count[c];
      if (rseq_cmpeqv_trystorev_storev(idx, &count[c], n, &items[c][n], 1000 + i, n + 1, c) == RSEQ_COMMIT) break;
    }
    unsigned char rec[24];
    for (int k = 0; k < 24; k++) rec[k] = (unsigned char)(i + k);
    for (;;) {
      int c = cpu();
      intptr_t n = rcount[c];
      // 21 bytes: the copy runs both its 8-byte loop and its byte tail.
      if (rseq_cmpeqv_trymemcpy_storev(idx, &rcount[c], n, records[c][n], rec, 21, n + 1, c) == RSEQ_COMMIT) break;
    }
  }
  int seen[50] = {0}, rseen[50] = {0};
  for (int c = 0; c < 1024; c++) {
    for (intptr_t k = 0; k < count[c]; k++) {
      intptr_t v = items[c][k] - 1000;
      EXPECT(v >= 0 && v < 50 && !seen[v], "trystorev log: bad or duplicate entry %ld", (long)items[c][k]);
      if (v >= 0 && v < 50) seen[v]++;
    }
    for (intptr_t k = 0; k < rcount[c]; k++) {
      unsigned char *r = records[c][k];
      for (int j = 1; j < 21; j++) EXPECT(r[j] == (unsigned char)(r[0] + j), "trymemcpy: record torn");
      EXPECT(r[0] < 50 && !rseen[r[0]], "trymemcpy: duplicate record %u", r[0]);
      if (r[0] < 50) rseen[r[0]]++;
    }
  }
  for (int i = 0; i < 50; i++) EXPECT(seen[i] == 1 && rseen[i] == 1, "log entry %d missing", i);

  // Lists: push 20 nodes, pop them all; each exactly once.
  static struct rseq_list lists[1024] __attribute__((aligned(16)));
  static struct node nodes[20];
  struct rseq_percpu_mode m = {RSEQ_MODE_RSEQ, idx};
  for (int k = 0; k < 20; k++) {
    nodes[k].id = k;
    for (;;) {
      int c = cpu();
      if (rseq_list_push(&m, &lists[c], (intptr_t)&nodes[k], offsetof(struct node, next), c) == RSEQ_COMMIT) break;
    }
  }
  int popped[20] = {0}, npopped = 0;
  for (int c = 0; c < 1024; c++) {
    // Pop each CPU's list from that CPU's data; the section checks the CPU, so pin by
    // retrying until we run there (only CPUs that hold nodes matter).
    while (lists[c].head) {
      intptr_t got;
      int now = cpu();
      if (now != c) {
        // Not on c: take the node directly, single-threaded and outside any section.
        got = lists[c].head;
        lists[c].head = ((struct node *)got)->next;
      } else if (rseq_list_pop(&m, &lists[c], offsetof(struct node, next), &got, c) != RSEQ_COMMIT) {
        continue;
      }
      long id = ((struct node *)got)->id;
      EXPECT(id >= 0 && id < 20 && !popped[id], "list: node %ld twice", id);
      if (id >= 0 && id < 20) popped[id] = 1;
      npopped++;
    }
  }
  EXPECT(npopped == 20, "lists held %d of 20 nodes", npopped);

  // Per-CPU array stacks (the generic primitive; the allocator has its own slab
  // sections): push 20 items, pop them all; each exactly once.
  struct stack_region {  // the layout rseq_percpu_stack_* take: stopped, count, capacity
    intptr_t stopped, count, capacity;
    intptr_t slots[32];
  };
  static struct stack_region stacks[1024];
  for (int c = 0; c < 1024; c++) stacks[c].capacity = 32;
  long count_off = offsetof(struct stack_region, count), slots_off = offsetof(struct stack_region, slots);
  for (intptr_t k = 1; k <= 20; k++)
    for (;;) {
      int c = cpu();
      if (rseq_percpu_stack_push(idx, (char *)stacks, sizeof *stacks, count_off, slots_off, k, c) == RSEQ_COMMIT) break;
    }
  int spopped[21] = {0}, nspopped = 0;
  for (;;) {
    int c = cpu();
    intptr_t got;
    int r = rseq_percpu_stack_pop(idx, (char *)stacks, sizeof *stacks, count_off, slots_off, &got, c);
    if (r == RSEQ_ABORT) continue;
    if (r == RSEQ_CMPFAIL) break;  // this CPU's stack is empty: the rest is checked below
    EXPECT(got >= 1 && got <= 20 && !spopped[got], "percpu stack: item %ld twice or bad", (long)got);
    if (got >= 1 && got <= 20) spopped[got] = 1;
    nspopped++;
  }
  for (int c = 0; c < 1024; c++)  // items left on other CPUs' stacks (after a migration)
    for (intptr_t k = 0; k < stacks[c].count; k++) {
      intptr_t got = stacks[c].slots[k];
      EXPECT(got >= 1 && got <= 20 && !spopped[got], "percpu stack: item %ld twice or bad", (long)got);
      if (got >= 1 && got <= 20) spopped[got] = 1;
      nspopped++;
    }
  EXPECT(nspopped == 20, "percpu stacks held %d of 20 items", nspopped);
}

static void allocator(void) {
  // Small CPU caches (5 blocks of 48 B): the frees overflow them, so every allocator
  // section runs: the malloc pop and free push, the refill push and the overflow pop.
  struct ccache_options o = {.mode = RSEQ_MODE_RSEQ, .index = idx, .reserve_bytes = (size_t)1 << 30,
                             .cpu_cache_bytes = 4096};
  struct ccache_heap *h = ccache_heap_create(&o);
  EXPECT(h != NULL, "heap creation failed");
  if (!h) return;
  unsigned char *p[100];
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 100; i++) {
      p[i] = ccache_malloc(h, 48);
      EXPECT(p[i] != NULL, "malloc failed");
      memset(p[i], i, 48);
    }
    for (int i = 0; i < 100; i++)
      for (int j = i + 1; j < 100; j++) EXPECT(p[i] != p[j], "malloc returned %p twice", (void *)p[i]);
    for (int i = 0; i < 100; i++) {
      for (int k = 0; k < 48; k++) EXPECT(p[i][k] == i, "block %d corrupted", i);
      ccache_free(h, p[i]);
    }
  }
  EXPECT(ccache_check_heap(h) == 0, "heap invariants");
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  EXPECT(st.in_use_bytes == 0, "in use after freeing all: %lu", (unsigned long)st.in_use_bytes);
  ccache_heap_destroy(h);
}

// An aborted batch section leaves the slots after its first one written (seq and
// item) but uncommitted; the next section on that CPU must clear the slot after the
// ones it commits, or the consumer would take those items. Only an abort in the middle
// of a batch makes that state, and abortscan forces one abort per run, so the state is
// planted here the way such an abort leaves it (ring_debug_plant_leftovers), and then
// a batch of one, a single offer and a shorter batch go over it. No planted item may
// ever be polled.
static void leftovers(void) {
  struct ring_options o = {RSEQ_MODE_RSEQ, idx, 0, 0};
  struct ring *r = ring_create(16, &o);
  EXPECT(r != NULL, "leftover ring creation failed");
  if (!r) return;
  const uintptr_t planted = 0xdead0000;
  uintptr_t next = 1;
  int got = 0, want = 0;
  for (int round = 0; round < 3; round++) {
    EXPECT(ring_debug_plant_leftovers(r, cpu(), 4, planted) == 0, "planting leftovers");
    void *items[2] = {(void *)next, (void *)(next + 1)};
    size_t done = round == 0   ? ring_offer_batch(r, items, 1)
                  : round == 1 ? (ring_offer(r, items[0]) == RING_OK)
                               : ring_offer_batch(r, items, 2);
    EXPECT(done == (round == 2 ? 2u : 1u), "leftover round %d: %zu offered", round, done);
    next += done;
    want += (int)done;
    void *item;
    while (ring_poll(r, &item) == RING_OK) {
      EXPECT((uintptr_t)item != planted, "leftover round %d: a planted item was polled", round);
      got++;
    }
  }
  EXPECT(got == want, "leftover ring: %d of %d items polled", got, want);
  ring_destroy(r);
}

static void ring(void) {
  struct ring_options o = {RSEQ_MODE_RSEQ, idx, 0, 0};
  struct ring *r = ring_create(64, &o);
  EXPECT(r != NULL, "ring creation failed");
  if (!r) return;
  for (uintptr_t i = 1; i <= 40; i++) EXPECT(ring_offer(r, (void *)i) == RING_OK, "offer %lu", (unsigned long)i);
  uintptr_t last[1024] = {0};
  int got = 0, shard;
  void *item;
  while (ring_poll_shard(r, &item, &shard) == RING_OK) {
    EXPECT((uintptr_t)item > last[shard], "ring: FIFO broken or duplicate %lu", (unsigned long)(uintptr_t)item);
    last[shard] = (uintptr_t)item;
    got++;
  }
  EXPECT(got == 40, "ring: %d of 40 items", got);
  // Batch offers: ten runs of 5, then a run of 20 of which exactly 14 fit (the shard
  // holds 64), then a full shard; the slots wrap around. The consumer must see
  // 41..104, each once, in order per shard.
  void *batch[20];
  uintptr_t next = 41;
  size_t offered = 0;
  int c0 = cpu();
  for (int b = 0; b < 11; b++) {
    size_t n = b < 10 ? 5 : 20;
    for (size_t k = 0; k < n; k++) batch[k] = (void *)(next + k);
    size_t done = ring_offer_batch(r, batch, n);
    next += done;
    offered += done;
  }
  // One thread on one CPU (abortscan pins it): all of it went to one shard.
  EXPECT(cpu() != c0 || offered == 64, "batch offers: %zu of 64 fitted", offered);
  EXPECT(cpu() != c0 || ring_offer(r, (void *)1) == RING_FULL, "offer into a full shard");
  memset(last, 0, sizeof last);
  got = 0;
  while (ring_poll_shard(r, &item, &shard) == RING_OK) {
    EXPECT((uintptr_t)item >= 41 && (uintptr_t)item > last[shard],
           "batch ring: FIFO broken or duplicate %lu", (unsigned long)(uintptr_t)item);
    last[shard] = (uintptr_t)item;
    got++;
  }
  EXPECT((size_t)got == offered, "batch ring: %d of %zu items", got, offered);
  ring_destroy(r);
  // Records of 21 bytes: the section copies two words and five bytes.
  struct ring_options ro = {RSEQ_MODE_RSEQ, idx, 21, 0};
  r = ring_create(64, &ro);
  unsigned char rec[21], out[21];
  for (int i = 0; i < 40; i++) {
    for (int k = 0; k < 21; k++) rec[k] = (unsigned char)(i * 3 + k);
    EXPECT(ring_offer_record(r, rec) == RING_OK, "record offer");
  }
  got = 0;
  while (ring_poll_record(r, out) == RING_OK) {
    for (int k = 1; k < 21; k++) EXPECT(out[k] == (unsigned char)(out[0] + k), "record torn");
    got++;
  }
  EXPECT(got == 40, "record ring: %d of 40", got);
  ring_destroy(r);
}

int main(int argc, char **argv) {
  int list = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--index") && i + 1 < argc) idx = (enum rseq_index)rseq_index_parse(argv[++i]);
    else if (!strcmp(argv[i], "--list")) list = 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!rseq_available()) {
    printf("SKIPPED: rseq unavailable: %s\n", rseq_unavailable_reason());
    return 0;
  }
  pin_to_first_allowed_cpu();  // deterministic section counts (see pin.h)
  if (!list) {
    primitives();
    allocator();
    ring();
    leftovers();
  }
  printf("REGISTRY ");
  rseq_registry_dump_json(stdout);
  if (failures) return 1;
  printf("INVARIANTS OK\n");
  return 0;
}
