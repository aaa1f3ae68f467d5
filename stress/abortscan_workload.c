// abortscan_workload: a deterministic single-thread workload that runs every critical
// section in the binary (the primitives directly, the per-CPU stacks through the
// allocator, the try-store sections through the ring), retrying aborted sections as
// their users do, and then checks its own invariants exactly. abortscan runs it under
// ptrace with one forced abort at a chosen instruction.
//   abortscan_workload [--index cpu|cid] [--list] [--window-actor]
// Prints the registry (with per-section counters) as one JSON line starting with
// "REGISTRY ", then "INVARIANTS OK" and exits 0, or "INVARIANT FAILED: ..." and exits 1.
//
// --window-actor (abortscan --window): a second thread, the actor, pinned to the same
// CPU, waits on fd 3. Each byte abortscan writes there while it holds the main thread
// stopped before a section makes the actor change the per-CPU state that section
// depends on, on the CPU (or cid) the main thread read: push onto its list or stack,
// add to its counter, append to its log, take blocks from its allocator cache and
// drain every cache. It answers with a byte on fd 4. Every invariant below counts the
// actor's changes in, so they must hold exactly however the two interleave; a section
// that used a value read before start_ip (stale after the actor ran) breaks them.
// The phases the actor covers set abortscan_window_armed: abortscan stops the main
// thread only while it is set. "WINDOW-ACTORS" names the sections they contain.
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

// The main thread's rseq area: the actor reads the main thread's index field there (the
// value the stopped thread's section will compare with: the kernel wrote it when the
// thread last returned to user space), to tell whether it acts on the same CPU or cid.
static struct rseq_abi *main_area;

// ---- The window actor (see the top of the file).
// abortscan reads this with PTRACE_PEEKDATA at a stop: volatile, and exported.
volatile int abortscan_window_armed __attribute__((used, visibility("default")));
static const char *const window_sections[] = {
    "rseq_addv", "rseq_offset_deref_addv", "rseq_cmpeqv_storev", "rseq_cmpeqv_trystorev_storev",
    "rseq_cmpeqv_trymemcpy_storev", "rseq_cmpnev_storeoffp_load", "rseq_percpu_stack_push",
    "rseq_percpu_stack_pop", "ccache_malloc_pop", "ccache_free_push", "ccache_refill_push",
    "ccache_overflow_pop", "ring_offer", "ring_offer_batch", "ring_offer_record",
    "ring_offer_record_batch"};
// What the actor does in the current phase, on its own index (seq_cst: paired with
// actor_busy in window_quiesce, a Dekker handshake).
static void (*_Atomic actor_action)(int c);
static _Atomic int actor_busy;
static _Atomic long actor_actions, actor_other_index;
static bool window_actor;

static int actor_stop[2];  // the main thread writes to [1] when it is done

static _Atomic int actor_ready;

static void *actor_main(void *arg) {
  (void)arg;
  char b;
  atomic_store(&actor_ready, 1);
  for (;;) {
    struct pollfd p[2] = {{3, POLLIN, 0}, {actor_stop[0], POLLIN, 0}};
    if (poll(p, 2, -1) < 0 || p[1].revents || read(3, &b, 1) != 1) break;
    atomic_store(&actor_busy, 1);
    void (*action)(int) = atomic_load(&actor_action);
    int c = rseq_current_index(idx);
    if (action) {
      // Relaxed: the kernel writes the field; the main thread is stopped (ptrace).
      uint32_t main_c = __atomic_load_n(idx == RSEQ_INDEX_MM_CID ? &main_area->mm_cid : &main_area->cpu_id,
                                        __ATOMIC_RELAXED);
      if ((uint32_t)c != main_c) atomic_fetch_add(&actor_other_index, 1);
      action(c);
      atomic_fetch_add(&actor_actions, 1);
    }
    atomic_store(&actor_busy, 0);
    if (write(4, &b, 1) != 1) break;
  }
  return NULL;
}

// Arms the window for a phase whose sections `action` disturbs.
static void window_arm(void (*action)(int)) {
  atomic_store(&actor_action, action);
  abortscan_window_armed = 1;
}

// Disarms, and waits until the actor is not in the middle of an action (it answers
// late only on a very loaded machine, after the main thread went on), so that the
// checks that follow see all its changes.
static void window_quiesce(void) {
  abortscan_window_armed = 0;
  atomic_store(&actor_action, NULL);
  while (atomic_load(&actor_busy)) sched_yield();
}

struct node {
  long id;
  intptr_t next;
};

// The primitives' per-CPU data (indexed by the index value, & 1023), shared with the
// actor's actions.
static intptr_t sums[1024], base_sums[1024], deref_base, word[1024];
static intptr_t count[1024], items[1024][64], rcount[1024];
static unsigned char records[1024][64][24];
static struct rseq_list lists[1024] __attribute__((aligned(16)));
struct stack_region {  // the layout rseq_percpu_stack_* take: stopped, count, capacity
  intptr_t stopped, count, capacity;
  intptr_t slots[32];
};
static struct stack_region stacks[1024];
static const long count_off = offsetof(struct stack_region, count),
                  slots_off = offsetof(struct stack_region, slots);
// What the actor added (it alone writes these; read after window_quiesce).
static long actor_adds, actor_derefs, actor_incs, actor_logs, actor_pushes, actor_stack_pushes;
#define ACTOR_MAX 64  // actions per phase the actor's pools hold

// The actor's actions: each retries on abort as the main thread does, re-reading its
// index, and records what it added.
static void act_addv(int c) {
  while (rseq_addv(idx, &sums[c & 1023], 1, c) != RSEQ_COMMIT) c = rseq_current_index(idx);
  actor_adds++;
}
static void act_deref(int c) {
  while (rseq_offset_deref_addv(idx, &deref_base, (c & 1023) * (long)sizeof(intptr_t), 2, c) != RSEQ_COMMIT)
    c = rseq_current_index(idx);
  actor_derefs++;
}
static void act_word(int c) {
  for (;; c = rseq_current_index(idx)) {
    intptr_t v = word[c & 1023];
    if (rseq_cmpeqv_storev(idx, &word[c & 1023], v, v + 1, c) == RSEQ_COMMIT) break;
  }
  actor_incs++;
}
// Log entries 2000 + k and records whose first byte is 100 + k.
static void act_logs(int c) {
  if (actor_logs >= ACTOR_MAX) return;
  for (;; c = rseq_current_index(idx)) {
    intptr_t n = count[c & 1023];
    if (n >= 64) return;
    if (rseq_cmpeqv_trystorev_storev(idx, &count[c & 1023], n, &items[c & 1023][n], 2000 + actor_logs, n + 1, c) ==
        RSEQ_COMMIT)
      break;
  }
  unsigned char rec[24];
  for (int k = 0; k < 24; k++) rec[k] = (unsigned char)(100 + actor_logs + k);
  for (;; c = rseq_current_index(idx)) {
    intptr_t n = rcount[c & 1023];
    if (n >= 64) break;
    if (rseq_cmpeqv_trymemcpy_storev(idx, &rcount[c & 1023], n, records[c & 1023][n], rec, 21, n + 1, c) ==
        RSEQ_COMMIT)
      break;
  }
  actor_logs++;
}
static struct node actor_nodes[ACTOR_MAX];
static void act_list(int c) {
  if (actor_pushes >= ACTOR_MAX) return;
  struct rseq_percpu_mode m = {RSEQ_MODE_RSEQ, idx};
  struct node *n = &actor_nodes[actor_pushes];
  n->id = 100 + actor_pushes;
  while (rseq_list_push(&m, &lists[c & 1023], (intptr_t)n, offsetof(struct node, next), c) != RSEQ_COMMIT)
    c = rseq_current_index(idx);
  actor_pushes++;
}
// Items 100 + k; a full stack (capacity 32) takes nothing.
static void act_stack(int c) {
  if (actor_stack_pushes >= ACTOR_MAX) return;
  for (;; c = rseq_current_index(idx)) {
    int r = rseq_percpu_stack_push(idx, (char *)stacks, sizeof *stacks, count_off, slots_off,
                                   100 + actor_stack_pushes, c);
    if (r == RSEQ_COMMIT) break;
    if (r == RSEQ_CMPFAIL) return;
  }
  actor_stack_pushes++;
}

static void primitives(void) {
  intptr_t deref_check = 0;
  deref_base = (intptr_t)base_sums;
  int adds = 0;
  window_arm(act_addv);
  for (int i = 0; i < 50; i++, adds++)
    while (rseq_addv(idx, &sums[cpu() & 1023], 1, cpu()) != RSEQ_COMMIT) {
    }
  window_arm(act_deref);
  for (int i = 0; i < 50; i++)
    for (;;) {
      int c = cpu();
      if (rseq_offset_deref_addv(idx, &deref_base, (c & 1023) * (long)sizeof(intptr_t), 2, c) == RSEQ_COMMIT) break;
    }
  window_quiesce();
  intptr_t total = 0;
  for (int c = 0; c < 1024; c++) {
    total += sums[c];
    deref_check += base_sums[c];
  }
  EXPECT(total == adds + actor_adds, "addv: sum %ld, %d adds committed (%ld by the actor)", (long)total, adds,
         actor_adds);
  EXPECT(deref_check == 100 + 2 * actor_derefs, "offset_deref_addv: sum %ld, want %ld", (long)deref_check,
         100 + 2 * actor_derefs);

  // cmpeqv_storev: a counter advanced by compare-and-store.
  window_arm(act_word);
  for (int i = 0; i < 50; i++)
    for (;;) {
      int c = cpu();
      intptr_t v = word[c & 1023];
      if (rseq_cmpeqv_storev(idx, &word[c & 1023], v, v + 1, c) == RSEQ_COMMIT) break;
    }
  window_quiesce();
  total = 0;
  for (int c = 0; c < 1024; c++) total += word[c];
  EXPECT(total == 50 + actor_incs, "cmpeqv_storev: %ld increments, want %ld", (long)total, 50 + actor_incs);

  // trystorev_storev and trymemcpy_storev: per-CPU logs; each entry exactly once.
  window_arm(act_logs);
  for (int i = 0; i < 50; i++) {
    for (;;) {
      int c = cpu();
      intptr_t n = count[c & 1023];
      if (rseq_cmpeqv_trystorev_storev(idx, &count[c & 1023], n, &items[c & 1023][n], 1000 + i, n + 1, c) ==
          RSEQ_COMMIT)
        break;
    }
    unsigned char rec[24];
    for (int k = 0; k < 24; k++) rec[k] = (unsigned char)(i + k);
    for (;;) {
      int c = cpu();
      intptr_t n = rcount[c & 1023];
      // 21 bytes: the copy runs both its 8-byte loop and its byte tail.
      if (rseq_cmpeqv_trymemcpy_storev(idx, &rcount[c & 1023], n, records[c & 1023][n], rec, 21, n + 1, c) ==
          RSEQ_COMMIT)
        break;
    }
  }
  window_quiesce();
  int seen[50 + ACTOR_MAX] = {0}, rseen[100 + ACTOR_MAX] = {0};
  for (int c = 0; c < 1024; c++) {
    for (intptr_t k = 0; k < count[c]; k++) {
      intptr_t v = items[c][k] >= 2000 ? items[c][k] - 2000 + 50 : items[c][k] - 1000;
      EXPECT(v >= 0 && v < 50 + actor_logs && !seen[v], "trystorev log: bad or duplicate entry %ld",
             (long)items[c][k]);
      if (v >= 0 && v < 50 + actor_logs) seen[v]++;
    }
    for (intptr_t k = 0; k < rcount[c]; k++) {
      unsigned char *r = records[c][k];
      for (int j = 1; j < 21; j++) EXPECT(r[j] == (unsigned char)(r[0] + j), "trymemcpy: record torn");
      bool ok = r[0] < 50 || (r[0] >= 100 && r[0] < 100 + actor_logs);
      EXPECT(ok && !rseen[r[0]], "trymemcpy: bad or duplicate record %u", r[0]);
      if (ok) rseen[r[0]]++;
    }
  }
  for (int i = 0; i < 50; i++) EXPECT(seen[i] == 1 && rseen[i] == 1, "log entry %d missing", i);
  for (int k = 0; k < actor_logs; k++)
    EXPECT(seen[50 + k] == 1 && rseen[100 + k] == 1, "the actor's log entry %d missing", k);

  // Lists: push 20 nodes, pop them all (and the actor's); each exactly once.
  static struct node nodes[20];
  struct rseq_percpu_mode m = {RSEQ_MODE_RSEQ, idx};
  window_arm(act_list);
  for (int k = 0; k < 20; k++) {
    nodes[k].id = k;
    for (;;) {
      int c = cpu();
      if (rseq_list_push(&m, &lists[c & 1023], (intptr_t)&nodes[k], offsetof(struct node, next), c) == RSEQ_COMMIT)
        break;
    }
  }
  int popped[100 + ACTOR_MAX] = {0}, npopped = 0;
  for (int c = 0; c < 1024; c++) {
    // Pop each CPU's list from that CPU's data; the section checks the CPU, so pin by
    // retrying until we run there (only CPUs that hold nodes matter).
    while (lists[c].head) {
      intptr_t got;
      int now = cpu();
      if ((now & 1023) != c) {
        // Not on c: take the node directly, outside any section (the actor pushes only
        // onto the list of the index it runs on, which is the main thread's).
        got = lists[c].head;
        lists[c].head = ((struct node *)got)->next;
      } else if (rseq_list_pop(&m, &lists[c], offsetof(struct node, next), &got, now) != RSEQ_COMMIT) {
        continue;
      }
      long id = ((struct node *)got)->id;
      bool ok = (id >= 0 && id < 20) || (id >= 100 && id < 100 + ACTOR_MAX);
      EXPECT(ok && !popped[id], "list: node %ld twice or bad", id);
      if (ok) popped[id] = 1;
      npopped++;
    }
  }
  window_quiesce();
  for (int c = 0; c < 1024; c++)  // nodes the actor pushed after the pop loop passed c
    for (intptr_t got = lists[c].head; got; got = ((struct node *)got)->next) {
      long id = ((struct node *)got)->id;
      bool ok = id >= 100 && id < 100 + ACTOR_MAX;
      EXPECT(ok && !popped[id], "list: node %ld twice or bad", id);
      if (ok) popped[id] = 1;
      npopped++;
    }
  EXPECT(npopped == 20 + actor_pushes, "lists held %d of %ld nodes", npopped, 20 + actor_pushes);

  // Per-CPU array stacks (the generic primitive; the allocator has its own slab
  // sections): push 20 items, pop them all; each exactly once.
  for (int c = 0; c < 1024; c++) stacks[c].capacity = 32;
  window_arm(act_stack);
  for (intptr_t k = 1; k <= 20; k++)
    for (;;) {
      int c = cpu();
      if (rseq_percpu_stack_push(idx, (char *)stacks, sizeof *stacks, count_off, slots_off, k, c) == RSEQ_COMMIT) break;
    }
  int spopped[100 + ACTOR_MAX] = {0}, nspopped = 0;
  for (;;) {
    int c = cpu();
    intptr_t got;
    int r = rseq_percpu_stack_pop(idx, (char *)stacks, sizeof *stacks, count_off, slots_off, &got, c);
    if (r == RSEQ_ABORT) continue;
    if (r == RSEQ_CMPFAIL) break;  // this CPU's stack is empty: the rest is checked below
    bool ok = (got >= 1 && got <= 20) || (got >= 100 && got < 100 + ACTOR_MAX);
    EXPECT(ok && !spopped[got], "percpu stack: item %ld twice or bad", (long)got);
    if (ok) spopped[got] = 1;
    nspopped++;
  }
  window_quiesce();
  for (int c = 0; c < 1024; c++)  // items left on other CPUs' stacks (after a migration)
    for (intptr_t k = 0; k < stacks[c].count; k++) {
      intptr_t got = stacks[c].slots[k];
      bool ok = (got >= 1 && got <= 20) || (got >= 100 && got < 100 + ACTOR_MAX);
      EXPECT(ok && !spopped[got], "percpu stack: item %ld twice or bad", (long)got);
      if (ok) spopped[got] = 1;
      nspopped++;
    }
  EXPECT(nspopped == 20 + actor_stack_pushes, "percpu stacks held %d of %ld items", nspopped,
         20 + actor_stack_pushes);
}

// The allocator's actor: takes three 48-byte blocks from the cache of the index it
// runs on (the main thread's), fills them with 0xa5 and keeps them; then drains every
// CPU cache (the remote drain: stop, fence, take, restore). A section that used a cur
// read before start_ip hands out a block the actor holds (the drain does not clear
// the slots above the new cur).
static struct ccache_heap *actor_heap;
static unsigned char *actor_blocks[3 * ACTOR_MAX];
static _Atomic int nactor_blocks;  // release/acquire: publishes actor_blocks[i] and its bytes
static long actor_drains;
static void act_alloc(int c) {
  (void)c;  // ccache_malloc reads the index itself
  int n = atomic_load_explicit(&nactor_blocks, memory_order_relaxed);
  for (int k = 0; k < 3 && n < 3 * ACTOR_MAX; k++, n++) {
    unsigned char *p = ccache_malloc(actor_heap, 48);
    if (!p) break;
    memset(p, 0xa5, 48);
    actor_blocks[n] = p;
    atomic_store_explicit(&nactor_blocks, n + 1, memory_order_release);
  }
  if (ccache_drain_all(actor_heap) == 0) actor_drains++;
}

static bool actor_holds(const void *p) {
  int n = atomic_load_explicit(&nactor_blocks, memory_order_acquire);
  for (int k = 0; k < n; k++)
    if (actor_blocks[k] == p) return true;
  return false;
}

static void allocator(void) {
  // Small CPU caches (5 blocks of 48 B): the frees overflow them, so every allocator
  // section runs: the malloc pop and free push, the refill push and the overflow pop.
  struct ccache_options o = {.mode = RSEQ_MODE_RSEQ, .index = idx, .reserve_bytes = (size_t)1 << 30,
                             .cpu_cache_bytes = 4096};
  struct ccache_heap *h = ccache_heap_create(&o);
  EXPECT(h != NULL, "heap creation failed");
  if (!h) return;
  actor_heap = h;
  unsigned char *p[100];
  for (int round = 0; round < 3; round++) {
    // From the second round on the caches hold blocks: the actor has something to take.
    if (round == 1) window_arm(act_alloc);
    for (int i = 0; i < 100; i++) {
      p[i] = ccache_malloc(h, 48);
      EXPECT(p[i] != NULL, "malloc failed");
      EXPECT(!actor_holds(p[i]), "round %d: malloc returned %p, a block the actor holds", round, (void *)p[i]);
      memset(p[i], i, 48);
    }
    for (int i = 0; i < 100; i++)
      for (int j = i + 1; j < 100; j++) EXPECT(p[i] != p[j], "malloc returned %p twice", (void *)p[i]);
    for (int i = 0; i < 100; i++) {
      for (int k = 0; k < 48; k++) EXPECT(p[i][k] == i, "block %d corrupted", i);
      ccache_free(h, p[i]);
    }
  }
  window_quiesce();
  int n = atomic_load_explicit(&nactor_blocks, memory_order_acquire);
  for (int k = 0; k < n; k++) {
    for (int j = 0; j < 48; j++) EXPECT(actor_blocks[k][j] == 0xa5, "the actor's block %p corrupted", (void *)actor_blocks[k]);
    ccache_free(h, actor_blocks[k]);
  }
  EXPECT(ccache_check_heap(h) == 0, "heap invariants");
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  EXPECT(st.in_use_bytes == 0, "in use after freeing all: %lu", (unsigned long)st.in_use_bytes);
  ccache_heap_destroy(h);
}

// An aborted section leaves items written into the slots from the head on, and no
// commit: the consumer must never take them (it takes what is below the head), and
// the next sections on that CPU write over them. Only an abort in the middle of a
// batch writes more than one, and abortscan forces one abort per run, so the state is
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

// A 21-byte record of the shape the torn-record checks read: each byte one more than
// the first.
static void record_shape(unsigned char *rec, unsigned first) {
  for (int k = 0; k < 21; k++) rec[k] = (unsigned char)(first + (unsigned)k);
}

// The first byte of a polled 21-byte record that breaks record_shape's shape, or 0
// when the record is whole.
static int record_torn_at(const unsigned char *rec) {
  for (int k = 1; k < 21; k++)
    if (rec[k] != (unsigned char)(rec[0] + k)) return k;
  return 0;
}

// leftovers() for the record sections: 21-byte records planted the way an aborted
// ring_offer_record or ring_offer_record_batch leaves them (their bytes 00 00 ad de ...,
// not a record_shape), then a record batch of one, a single record offer and a batch
// of two go over them. Every record polled must be one offered, whole.
static void record_leftovers(void) {
  struct ring_options o = {RSEQ_MODE_RSEQ, idx, 21, 0};
  struct ring *r = ring_create(16, &o);
  EXPECT(r != NULL, "leftover record ring creation failed");
  if (!r) return;
  const uintptr_t planted = 0xdead0000dead0000;
  int got = 0, want = 0;
  for (int round = 0; round < 3; round++) {
    EXPECT(ring_debug_plant_leftovers(r, cpu(), 4, planted) == 0, "planting record leftovers");
    unsigned char recs[2][21], out[21];
    for (int j = 0; j < 2; j++) record_shape(recs[j], (unsigned)(10 + (want + j) * 5));
    size_t done = round == 0   ? ring_offer_record_batch(r, recs, 1)
                  : round == 1 ? (ring_offer_record(r, recs[0]) == RING_OK)
                               : ring_offer_record_batch(r, recs, 2);
    EXPECT(done == (round == 2 ? 2u : 1u), "record leftover round %d: %zu offered", round, done);
    want += (int)done;
    while (ring_poll_record(r, out) == RING_OK) {
      EXPECT(out[0] == (unsigned char)(10 + got * 5),
             "record leftover round %d: record %d starts %u (planted: 0)", round, got, out[0]);
      int torn = record_torn_at(out);
      EXPECT(!torn, "record leftover round %d: record %d torn at byte %d", round, got, torn);
      got++;
    }
  }
  EXPECT(got == want, "leftover record ring: %d of %d records polled", got, want);
  ring_destroy(r);
}

// The ring's actor: one offer into the ring in use, on the shard of the index it runs
// on (the main thread's, abortscan checks): pointers ACTOR_ITEM + k, or 21-byte records 200 + k, 201 +
// k, ... (the same "each byte one more than the first" shape the torn-record check
// reads). Only the main thread polls.
#define ACTOR_ITEM ((uintptr_t)1 << 40)
static struct ring *_Atomic actor_ring;
static bool actor_ring_records;
static long actor_ring_offers;  // offers that went in, since the ring was set
static void act_ring(int c) {
  (void)c;  // the offer reads the index itself
  struct ring *r = atomic_load(&actor_ring);
  if (actor_ring_records) {
    unsigned char rec[21];
    record_shape(rec, (unsigned)(200 + actor_ring_offers));
    if (actor_ring_offers < 50 && ring_offer_record(r, rec) == RING_OK) actor_ring_offers++;
  } else if (ring_offer(r, (void *)(ACTOR_ITEM + (uintptr_t)actor_ring_offers + 1)) == RING_OK) {
    actor_ring_offers++;
  }
}

static void ring_set_actor(struct ring *r, bool records) {
  window_quiesce();
  atomic_store(&actor_ring, r);
  actor_ring_records = records;
  actor_ring_offers = 0;
  if (r) window_arm(act_ring);
}

// Polls r until it is empty: the main thread's items (FIFO per shard, above `floor`)
// and the actor's (FIFO among themselves); returns how many of the main's.
static int drain_ring(struct ring *r, uintptr_t floor, const char *what) {
  uintptr_t last[1024] = {0}, actor_last = 0;
  int got = 0, shard;
  long actor_got = 0;
  void *item;
  while (ring_poll_shard(r, &item, &shard) == RING_OK) {
    uintptr_t v = (uintptr_t)item;
    if (v > ACTOR_ITEM) {
      EXPECT(v > actor_last, "%s: the actor's items out of order (%lu after %lu)", what,
             (unsigned long)(v - ACTOR_ITEM), (unsigned long)(actor_last ? actor_last - ACTOR_ITEM : 0));
      actor_last = v;
      actor_got++;
      continue;
    }
    EXPECT(v >= floor && v > last[shard & 1023], "%s: FIFO broken or duplicate %lu", what, (unsigned long)v);
    last[shard & 1023] = v;
    got++;
  }
  window_quiesce();  // the actor acts only while the main thread is held: done by now
  EXPECT(actor_got == actor_ring_offers, "%s: %ld of the actor's %ld items polled", what, actor_got,
         actor_ring_offers);
  return got;
}

// drain_ring for the 21-byte record ring: polls r until it is empty, every record
// whole; the actor's (first byte 200 on) must all come out. Returns how many of the
// main thread's.
static int drain_records(struct ring *r, const char *what) {
  unsigned char out[21];
  int got = 0;
  long actor_got = 0;
  while (ring_poll_record(r, out) == RING_OK) {
    int torn = record_torn_at(out);
    EXPECT(!torn, "%s: record torn at byte %d", what, torn);
    if (out[0] >= 200) actor_got++;
    else got++;
  }
  window_quiesce();
  EXPECT(actor_got == actor_ring_offers, "%s: %ld of the actor's %ld records polled", what, actor_got,
         actor_ring_offers);
  return got;
}

static void ring(void) {
  struct ring_options o = {RSEQ_MODE_RSEQ, idx, 0, 0};
  struct ring *r = ring_create(64, &o);
  EXPECT(r != NULL, "ring creation failed");
  if (!r) return;
  ring_set_actor(r, false);
  for (uintptr_t i = 1; i <= 40; i++) EXPECT(ring_offer(r, (void *)i) == RING_OK, "offer %lu", (unsigned long)i);
  int got = drain_ring(r, 1, "ring");
  EXPECT(got == 40, "ring: %d of 40 items", got);
  // Batch offers: ten runs of 5, then a run of 20 of which exactly 14 fit (the shard
  // holds 64), then a full shard; the slots wrap around. The consumer must see
  // 41..104, each once, in order per shard (and the actor's items).
  ring_set_actor(r, false);
  void *batch[20];
  uintptr_t next = 41;
  size_t offered = 0;
  int c0 = cpu();
  struct ring_cpu_stats before, after;
  EXPECT(ring_cpu_stats(r, c0, &before) == 0, "ring_cpu_stats(%d)", c0);
  for (int b = 0; b < 11; b++) {
    size_t n = b < 10 ? 5 : 20;
    for (size_t k = 0; k < n; k++) batch[k] = (void *)(next + k);
    size_t done = ring_offer_batch(r, batch, n);
    next += done;
    offered += done;
  }
  window_quiesce();
  // One thread on one CPU (abortscan pins it): all of it went to one shard, which the
  // actor's offer shares when it ran on the same index; the shard holds 64.
  EXPECT(ring_cpu_stats(r, c0, &after) == 0, "ring_cpu_stats(%d)", c0);
  EXPECT(cpu() != c0 || after.offered - before.offered == 64,
         "batch offers: %zu fitted, the actor offered %ld, shard %d took %lu of 64", offered, actor_ring_offers, c0,
         (unsigned long)(after.offered - before.offered));
  EXPECT(cpu() != c0 || ring_offer(r, (void *)1) == RING_FULL, "offer into a full shard");
  got = drain_ring(r, 41, "batch ring");
  EXPECT((size_t)got == offered, "batch ring: %d of %zu items", got, offered);
  ring_set_actor(NULL, false);
  ring_destroy(r);
  // Records of 21 bytes: the section copies two words and five bytes.
  struct ring_options ro = {RSEQ_MODE_RSEQ, idx, 21, 0};
  r = ring_create(64, &ro);
  ring_set_actor(r, true);
  unsigned char rec[21], out[21];
  for (int i = 0; i < 40; i++) {
    record_shape(rec, (unsigned)(i * 3));
    EXPECT(ring_offer_record(r, rec) == RING_OK, "record offer");
  }
  got = drain_records(r, "record ring");
  EXPECT(got == 40, "record ring: %d of 40 records", got);
  // Record batches: 8 runs of 3 records of the same shape, each run one section
  // (ring_offer_record_batch); every record must come out whole, none twice.
  ring_set_actor(r, true);
  unsigned char recs[3][21];
  size_t batched = 0;
  for (int b = 0; b < 8; b++) {
    for (int j = 0; j < 3; j++) record_shape(recs[j], (unsigned)((b * 3 + j) * 7));
    batched += ring_offer_record_batch(r, recs, 3);
  }
  EXPECT(batched == 24, "record batches: %zu of 24 records offered", batched);
  got = drain_records(r, "record batch ring");
  EXPECT((size_t)got == batched, "record batch ring: %d of %zu records", got, batched);
  ring_set_actor(NULL, false);
  ring_destroy(r);
  // A record batch that the shard's room cuts short: of 3 records, 2 fit in a shard of
  // 4 that holds two; the section commits them, and the run's next section finds the
  // shard full.
  r = ring_create(4, &ro);
  EXPECT(r != NULL, "small record ring creation failed");
  if (!r) return;
  for (int i = 0; i < 2; i++) {
    record_shape(rec, (unsigned)(100 + i * 10));
    EXPECT(ring_offer_record(r, rec) == RING_OK, "record offer into the small ring");
  }
  for (int j = 0; j < 3; j++) record_shape(recs[j], (unsigned)(120 + j * 10));
  EXPECT(ring_offer_record_batch(r, recs, 3) == 2, "a record batch cut short by the room");
  got = 0;
  while (ring_poll_record(r, out) == RING_OK) {
    EXPECT(out[0] == (unsigned char)(100 + got * 10), "small ring: record %d is %u", got, out[0]);
    int torn = record_torn_at(out);
    EXPECT(!torn, "small ring: batched record %d torn at byte %d", got, torn);
    got++;
  }
  EXPECT(got == 4, "small record ring: %d of 4 records", got);
  ring_destroy(r);
}

int main(int argc, char **argv) {
  int list = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--index") && i + 1 < argc) idx = (enum rseq_index)rseq_index_parse(argv[++i]);
    else if (!strcmp(argv[i], "--list")) list = 1;
    else if (!strcmp(argv[i], "--window-actor")) window_actor = true;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!rseq_available()) {
    printf("SKIPPED: rseq unavailable: %s\n", rseq_unavailable_reason());
    return 0;
  }
  pin_to_first_allowed_cpu();  // deterministic section counts (see pin.h)
  cpu();  // registers the thread: its area is there from now on
  main_area = rseq_thread_area();
  pthread_t actor;
  // Created after the pin: the actor runs on the main thread's CPU.
  if (window_actor && (pipe(actor_stop) != 0 || pthread_create(&actor, NULL, actor_main, NULL) != 0)) {
    printf("INVARIANT FAILED: cannot start the window actor\n");
    return 1;
  }
  // Under ptrace a new thread starts stopped until the tracer lets it go: wait until the
  // actor runs, or the first request could find it still stopped.
  while (window_actor && !atomic_load(&actor_ready)) sched_yield();
  if (!list) {
    primitives();
    allocator();
    ring();
    leftovers();
    record_leftovers();
  }
  printf("WINDOW-ACTORS");
  for (size_t k = 0; k < sizeof window_sections / sizeof *window_sections; k++) printf(" %s", window_sections[k]);
  printf("\n");
  if (window_actor) {
    // Closing fd 3 would not wake a read blocked on it: the actor polls a pipe of ours too.
    if (write(actor_stop[1], "x", 1) != 1 || pthread_join(actor, NULL) != 0) failures++;
    printf("WINDOW-ACTOR actions=%ld other-index=%ld drains=%ld\n", atomic_load(&actor_actions),
           atomic_load(&actor_other_index), actor_drains);
  }
  printf("REGISTRY ");
  rseq_registry_dump_json(stdout);
  if (failures) return 1;
  printf("INVARIANTS OK\n");
  return 0;
}
