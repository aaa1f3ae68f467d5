// cpuset_shrink_test: liveness when the CPU a thread read is taken out of its cpuset.
// A retry loop that re-uses an index read from before its abort spins for ever once the
// thread can never run on that CPU again; every loop must instead commit within a few
// retries on the CPU it was moved to.
//
// On real CPUs (the kernel's rseq registration, not fake CPUs): the thread runs pinned
// to CPU a and starts an operation; the enter hook of the counting variant, which runs
// after the operation's index read and right before its section, shrinks the thread's
// affinity to {b} (the kernel moves it before the call returns). The section then
// compares a with b and aborts (cpu_id), or finds the same cid (mm_cid: the move need
// not change it), and the operation must commit within the abort budget
// (rseq/test_liveness.h; a few, since real preemption can add aborts of its own). For
// each section, through the operation that runs it:
//   allocator: ccache_malloc_pop, ccache_free_push, ccache_refill_push, ccache_overflow_pop
//   ring:      ring_offer, ring_offer_record, ring_offer_batch, ring_offer_record_batch
// Checked: the operation committed within the budget; the thread now runs on b; with
// cpu_id at least one abort (the section saw the move) and the commit in b's cache or
// shard, not a's; the heap's invariants; every ring item polled once. Both indexes.
// Needs two allowed CPUs and rseq: skips with the reason otherwise.
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "allocator/ccache.h"
#include "allocator/test_fill.h"
#include "ring/ring.h"
#include "rseq/rseq.h"
#include "rseq/test_liveness.h"
#include "rseq/testing.h"

#define BUDGET 4  // aborts per operation: the move's, and a few from real preemption

static int cpu_a, cpu_b;
static int shrink_section = -1;  // the section whose next entry shrinks the cpuset
static int shrinks, shrink_errno;

// Counting variants only: right before the section's asm, after the caller's read. The
// thread is the only one.
static void enter_hook(int section_id, enum rseq_index index, int cpu) {
  (void)index;
  (void)cpu;
  if (section_id != shrink_section) return;
  shrink_section = -1;  // once: from now on the thread may run on b only
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu_b, &set);
  if (sched_setaffinity(0, sizeof set, &set) == 0)
    shrinks++;
  else
    shrink_errno = errno;
}


// Runs op with the cpuset shrunk from {a} to {b} at `section`'s entry; returns the aborts.
static int shrink_during(enum rseq_index index, const char *section, void (*op)(void *), void *arg) {
  test_context("index=%s section=%s (the cpuset shrinks from {%d} to {%d} at the section's entry)",
               rseq_index_name(index), section, cpu_a, cpu_b);
  CHECK(test_pin(cpu_a) == 0);
  shrinks = shrink_errno = 0;
  shrink_section = test_section_id(section);
  CHECK(shrink_section >= 0, "section %s is not in the registry", section);
  char what[160];
  snprintf(what, sizeof what, "%s after its CPU left the cpuset (index %s)", section, rseq_index_name(index));
  test_liveness_begin(what, BUDGET);
  op(arg);
  int aborts = test_liveness_end();
  CHECK(shrink_errno == 0, "sched_setaffinity({%d}) in the enter hook: %s", cpu_b, strerror(shrink_errno));
  CHECK(shrinks == 1, "the operation never entered %s", section);
  CHECK(sched_getcpu() == cpu_b, "on CPU %d after the shrink to {%d}", sched_getcpu(), cpu_b);
  if (index == RSEQ_INDEX_CPU_ID) CHECK(aborts >= 1, "the section did not see the move (0 aborts)");
  return aborts;
}

// ---- The allocator.
static struct ccache_heap *heap;
static void *held[512];
static int nheld;
static void *one;

static void op_malloc(void *arg) {
  (void)arg;
  one = ccache_malloc(heap, 64);
  CHECK(one != NULL);
}
static void op_free(void *arg) { ccache_free(heap, arg); }

static uint64_t cached(int idx) { return test_cached_bytes(heap, idx); }

static void allocator(enum rseq_index index) {
  struct ccache_options o = {.mode = RSEQ_MODE_RSEQ, .index = index, .cpu_cache_bytes = 4096};
  heap = ccache_heap_create(&o);
  CHECK(heap != NULL);
  if (ccache_heap_mode(heap) != RSEQ_MODE_RSEQ) {
    printf("SKIPPED: allocator, index %s: CAS mode: %s\n", rseq_index_name(index), ccache_heap_mode_reason(heap));
    ccache_heap_destroy(heap);
    return;
  }
  bool cpu = index == RSEQ_INDEX_CPU_ID;
  // malloc pop: both CPUs' caches warm.
  for (int k = 0; k < 2; k++) {
    CHECK(test_pin(k ? cpu_a : cpu_b) == 0);
    void *p[4];
    for (int i = 0; i < 4; i++) p[i] = ccache_malloc(heap, 64);
    for (int i = 0; i < 4; i++) ccache_free(heap, p[i]);
  }
  uint64_t a0 = cached(cpu_a), b0 = cached(cpu_b);
  int n = shrink_during(index, "ccache_malloc_pop", op_malloc, NULL);
  if (cpu)
    CHECK(cached(cpu_a) == a0 && cached(cpu_b) < b0, "CPU %d's cache %lu -> %lu, CPU %d's %lu -> %lu: the pop did not "
          "commit on the CPU it was moved to", cpu_a, (unsigned long)a0, (unsigned long)cached(cpu_a), cpu_b,
          (unsigned long)b0, (unsigned long)cached(cpu_b));
  printf("ok: index=%s: ccache_malloc_pop, cpuset shrunk at its entry: %d aborts\n", rseq_index_name(index), n);
  // free push: the block goes back, to b's cache.
  a0 = cached(cpu_a);
  b0 = cached(cpu_b);
  n = shrink_during(index, "ccache_free_push", op_free, one);
  if (cpu) CHECK(cached(cpu_a) == a0 && cached(cpu_b) > b0, "the push did not commit in CPU %d's cache", cpu_b);
  printf("ok: index=%s: ccache_free_push, cpuset shrunk at its entry: %d aborts\n", rseq_index_name(index), n);
  // refill push: every cache empty.
  CHECK(ccache_drain_all(heap) == 0);
  n = shrink_during(index, "ccache_refill_push", op_malloc, NULL);
  if (cpu) CHECK(cached(cpu_a) == 0 && cached(cpu_b) > 0, "the refill did not land in CPU %d's cache", cpu_b);
  printf("ok: index=%s: ccache_refill_push, cpuset shrunk at its entry: %d aborts\n", rseq_index_name(index), n);
  void *keep = one;
  // overflow pop: a's cache full (free until one free overflowed, then until the cached
  // bytes are back at their peak), b's warm.
  CHECK(test_pin(cpu_a) == 0);
  int idx_a = rseq_current_index(index);
  nheld = 0;
  for (int k = 0; k < 512; k++) held[nheld++] = ccache_malloc(heap, 64);
  CHECK(test_fill_cache(heap, idx_a, held, &nheld), "could not fill cache %d", idx_a);
  n = shrink_during(index, "ccache_overflow_pop", op_free, keep);
  printf("ok: index=%s: ccache_overflow_pop, cpuset shrunk at its entry: %d aborts\n", rseq_index_name(index), n);
  while (nheld) ccache_free(heap, held[--nheld]);
  CHECK(ccache_check_heap(heap) == 0);
  struct ccache_stats st;
  ccache_get_stats(heap, &st);
  CHECK(st.in_use_bytes == 0, "%lu bytes still in use", (unsigned long)st.in_use_bytes);
  ccache_heap_destroy(heap);
}

// ---- The ring.
static struct ring *ring;
static unsigned char record[32];
static void op_offer(void *arg) { CHECK_EQ(ring_offer(ring, arg), RING_OK); }
static void op_offer_record(void *arg) {
  (void)arg;
  CHECK_EQ(ring_offer_record(ring, record), RING_OK);
}
static void op_offer_batch(void *arg) {
  (void)arg;
  void *three[3] = {(void *)11, (void *)12, (void *)13};
  CHECK_EQ(ring_offer_batch(ring, three, 3), 3);
}

static void op_offer_record_batch(void *arg) {
  (void)arg;
  static unsigned char three[3][32];
  CHECK_EQ(ring_offer_record_batch(ring, three, 3), 3);
}

static void ring_case(enum rseq_index index, const char *section, size_t record_size, void (*op)(void *),
                      uint64_t items) {
  struct ring_options o = {RSEQ_MODE_RSEQ, index, record_size, 0};
  ring = ring_create(64, &o);
  CHECK(ring != NULL);
  if (index == RSEQ_INDEX_CPU_ID && ring_shards(ring) <= cpu_b) {  // shards are CPUs here
    printf("SKIPPED: %s: %d shards\n", section, ring_shards(ring));
    ring_destroy(ring);
    return;
  }
  int n = shrink_during(index, section, op, (void *)7);
  if (index == RSEQ_INDEX_CPU_ID) {
    struct ring_cpu_stats sa, sb;
    CHECK(ring_cpu_stats(ring, cpu_a, &sa) == 0 && ring_cpu_stats(ring, cpu_b, &sb) == 0);
    CHECK(sa.offered == 0 && sb.offered == items, "shard %d got %lu items and shard %d %lu", cpu_a,
          (unsigned long)sa.offered, cpu_b, (unsigned long)sb.offered);
  }
  uint64_t got = 0;
  unsigned char out[32];
  void *item;
  while ((record_size ? ring_poll_record(ring, out) : ring_poll(ring, &item)) == RING_OK) got++;
  CHECK(got == items, "polled %lu of %lu items", (unsigned long)got, (unsigned long)items);
  printf("ok: index=%s: %s, cpuset shrunk at its entry: %d aborts\n", rseq_index_name(index), section, n);
  ring_destroy(ring);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  test_watchdog(60);  // a retry loop that never ends is what this test looks for
  if (!rseq_available()) test_skip("needs rseq: %s", rseq_unavailable_reason());
  if (!rseq_stats_enabled()) test_skip("needs a counting variant of rseq (the enter hook)");
  int cpus[1024];
  int ncpus = test_allowed_cpus(cpus, 1024);
  if (ncpus < 2) test_skip("needs two allowed CPUs, has %d", ncpus);
  cpu_a = cpus[0];
  cpu_b = cpus[1];
  CHECK(rseq_set_enter_hook(enter_hook) == 0);
  for (int index = RSEQ_INDEX_CPU_ID; index <= RSEQ_INDEX_MM_CID; index++) {
    if (index == RSEQ_INDEX_MM_CID && !rseq_mm_cid_available()) {
      printf("SKIPPED: index mm_cid: not available on this kernel\n");
      continue;
    }
    allocator((enum rseq_index)index);
    ring_case((enum rseq_index)index, "ring_offer", 0, op_offer, 1);
    ring_case((enum rseq_index)index, "ring_offer_record", 32, op_offer_record, 1);
    ring_case((enum rseq_index)index, "ring_offer_batch", 0, op_offer_batch, 3);
    ring_case((enum rseq_index)index, "ring_offer_record_batch", 32, op_offer_record_batch, 3);
  }
  CHECK(test_unpin(cpus, ncpus) == 0);
  printf("PASS\n");
  return 0;
}
