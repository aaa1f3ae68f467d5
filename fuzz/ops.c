// ops.c: the operation-stream interpreters and their shadow models (see ops.h).
#include "fuzz/ops.h"

#include <errno.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator/ccache.h"
#include "ring/ring.h"
#include "sanitizers/sanitizers.h"

static const char *const alloc_kinds[] = {"malloc", "calloc", "realloc", "aligned", "free",
                                          "usable_size", "drain_cpu", "drain_all", "set_cpu"};
static const char *const ring_kinds[] = {"offer", "poll", "offer_batch", "poll_batch", "set_cpu"};
static const char *const prim_kinds[] = {"addv",      "cmpeqv_storev", "trystorev_storev",
                                         "trymemcpy", "list_push",     "list_pop",
                                         "set_cpu"};
enum { A_MALLOC, A_CALLOC, A_REALLOC, A_ALIGNED, A_FREE, A_USABLE, A_DRAIN, A_DRAIN_ALL, A_CPU, A_N };
enum { R_OFFER, R_POLL, R_OFFER_BATCH, R_POLL_BATCH, R_CPU, R_N };
enum { P_ADD, P_CMPEQ, P_TRYSTORE, P_MEMCPY, P_PUSH, P_POP, P_CPU, P_N };

const char *ops_family_name(enum ops_family f) {
  return f == FAMILY_ALLOC ? "alloc" : f == FAMILY_RING ? "ring" : "prim";
}

int ops_kind_count(enum ops_family f) { return f == FAMILY_ALLOC ? A_N : f == FAMILY_RING ? R_N : P_N; }

const char *ops_kind_name(enum ops_family f, int kind) {
  if (kind < 0 || kind >= ops_kind_count(f)) return "?";
  return f == FAMILY_ALLOC ? alloc_kinds[kind] : f == FAMILY_RING ? ring_kinds[kind] : prim_kinds[kind];
}

CCACHE_NO_COVERAGE size_t ops_decode(const uint8_t *data, size_t size, struct op *out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i + 10 <= size && n < max; i += 10, n++) {
    out[n].kind = data[i];
    out[n].cpu = data[i + 1];
    memcpy(&out[n].a, data + i + 2, 4);
    memcpy(&out[n].b, data + i + 6, 4);
  }
  return n;
}

static uint64_t next_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

void ops_generate(enum ops_family f, uint64_t seed, struct op *out, size_t n) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  int kinds = ops_kind_count(f);
  for (size_t i = 0; i < n; i++) {
    uint64_t x = next_rand(&s), y = next_rand(&s);
    int kind = (int)(x % 100);
    // Weighted toward the common operations.
    if (f == FAMILY_ALLOC)
      kind = kind < 40 ? A_MALLOC : kind < 45 ? A_CALLOC : kind < 52 ? A_REALLOC : kind < 56 ? A_ALIGNED
           : kind < 88 ? A_FREE : kind < 92 ? A_USABLE : kind < 93 ? A_DRAIN : kind < 94 ? A_DRAIN_ALL : A_CPU;
    else
      kind = (int)(x % (uint64_t)kinds);
    out[i].kind = (uint8_t)kind;
    out[i].cpu = (uint8_t)(x >> 8);
    out[i].a = (uint32_t)(y);
    out[i].b = (uint32_t)(y >> 32);
  }
}

void ops_trace_free(struct ops_trace *t) {
  free(t->v);
  memset(t, 0, sizeof *t);
}

// The decoder, the trace and its comparison are the harness, not code under test: no
// coverage hooks (their comparison hooks took a seventh of ring_diff_fuzzer's time).
CCACHE_NO_COVERAGE static void emit(struct ops_trace *t, uint64_t v) {
  if (!t) return;
  if (t->n == t->cap) {
    t->cap = t->cap ? 2 * t->cap : 1024;
    t->v = realloc(t->v, t->cap * sizeof *t->v);
  }
  t->v[t->n++] = v;
}

CCACHE_NO_COVERAGE long ops_trace_diff(const struct ops_trace *a, const struct ops_trace *b) {
  size_t n = a->n < b->n ? a->n : b->n;
  for (size_t i = 0; i < n; i++)
    if (a->v[i] != b->v[i]) return (long)i;
  return a->n == b->n ? -1 : (long)n;
}

int ops_compare_modes(enum ops_family f, enum rseq_index index, const struct op *ops, size_t n,
                      char *why, size_t why_size) {
  // The two traces keep their buffers from one call to the next (emptied here): a
  // fuzzer compares thousands of streams a second, and growing fresh buffers cost the
  // ring_diff fuzzer a tenth of its time. Thread-local: each thread compares its own.
  static __thread struct ops_trace tr, tc;
  tr.n = tc.n = 0;
  struct ops_result rr, rc;
  ops_run(f, RSEQ_MODE_RSEQ, index, ops, n, &tr, &rr);
  ops_run(f, RSEQ_MODE_CAS, index, ops, n, &tc, &rc);
  int failed = 1;
  if (rr.failed) {
    snprintf(why, why_size, "rseq mode, %s index: op %zu: %s", rseq_index_name(index), rr.failed_op, rr.message);
  } else if (rc.failed) {
    snprintf(why, why_size, "cas mode, %s index: op %zu: %s", rseq_index_name(index), rc.failed_op, rc.message);
  } else {
    long d = ops_trace_diff(&tr, &tc);
    if (d >= 0)
      snprintf(why, why_size, "%s index: rseq and cas traces diverge at value %ld (%#lx vs %#lx)",
               rseq_index_name(index), d, (unsigned long)(d < (long)tr.n ? tr.v[d] : 0),
               (unsigned long)(d < (long)tc.n ? tc.v[d] : 0));
    else
      failed = 0;
  }
  return failed;
}

void ops_print(enum ops_family f, const struct op *ops, size_t n, FILE *out) {
  for (size_t i = 0; i < n; i++)
    fprintf(out, "  %zu: %s %s cpu=%u a=%u b=%u\n", i, ops_family_name(f),
            ops_kind_name(f, ops[i].kind % ops_kind_count(f)), ops[i].cpu, ops[i].a, ops[i].b);
}

static int fail(struct ops_result *r, size_t op, const char *fmt, ...) {
  if (r->failed) return -1;
  r->failed = 1;
  r->failed_op = op;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, ap);
  va_end(ap);
  return -1;
}

static int ncpus_for(enum rseq_index index) {
  int n = rseq_index_count(index);
  return n > 0 ? n : 1;
}

// ---------------------------------------------------------------------------------
// Allocator streams.

#define MAX_LIVE 256

struct block {
  unsigned char *p;
  size_t size;
  size_t usable;  // at hand-out: the model's record of the block's class
  bool large;     // the model's prediction: a mapping of its own, not a class's block
  uint8_t seed;
};

// Where the allocator must put a block (the model's rule, as the README's "Large
// blocks" and ccache_aligned_alloc state it): a request over CCACHE_MAX_SMALL, or
// aligned beyond the 8 KiB page its spans start on, gets a mapping of its own; anything
// else is a block of a class.
#define MODEL_SPAN_PAGE ((size_t)8192)
static bool model_large(size_t size, size_t align) {
  return size > CCACHE_MAX_SMALL || align > MODEL_SPAN_PAGE;
}

// The byte loops that write and check blocks are the checks, not the code under test
// (see CCACHE_NO_COVERAGE).
#define CHECK_LOOP CCACHE_NO_COVERAGE

// The bytes of a block that are written and checked: the first and last 64. Enough to
// catch a lost, shifted or overwritten byte at either end (check_new_block catches
// overlaps by address, ASan overflows); a large block's middle pages are never touched,
// so they cost no page faults.
#define PATTERN_EDGE 64
static size_t pattern_next(size_t i, size_t n) {
  i++;
  return i == PATTERN_EDGE && n > 2 * PATTERN_EDGE ? n - PATTERN_EDGE : i;
}

CHECK_LOOP static void pattern(unsigned char *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i = pattern_next(i, n)) p[i] = (unsigned char)(seed + i * 13);
}

// `written` is the size the pattern was written for; only bytes below `upto` count
// (a realloc keeps a prefix).
CHECK_LOOP static long pattern_mismatch_upto(const unsigned char *p, size_t written, size_t upto,
                                             uint8_t seed) {
  for (size_t i = 0; i < written && i < upto; i = pattern_next(i, written))
    if (p[i] != (unsigned char)(seed + i * 13)) return (long)i;
  return -1;
}

CHECK_LOOP static long first_nonzero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return (long)i;
  return -1;
}

static long pattern_mismatch(const unsigned char *p, size_t n, uint8_t seed) {
  return pattern_mismatch_upto(p, n, n, seed);
}

// Request sizes: mostly small, some medium, a few large (> 256 KiB): 13, 2 and 1 in 16
// of uniformly random `a`. The kind comes from the top bits of a hash of
// `a`, not from its low bits: the integers in fuzzer-made inputs end in zero bits far
// more often than one time in 16 (zero bytes, shifted and dictionary values), and while
// the low nibble chose, the allocator fuzzers' inputs held about 12 large blocks each,
// each costing more than ten small ones (a mapping, its shadow, its faults).
static size_t pick_size(uint32_t a) {
  switch ((uint32_t)(a * 0x9E3779B1u) >> 28) {
    case 1:
      return 256 * 1024 + (a >> 4) % (1 << 20);
    case 2:
    case 3:
      return (a >> 4) % 70000;
    default:
      return (a >> 4) % 1100;
  }
}

CHECK_LOOP static int check_new_block(struct block *live, int n, const unsigned char *p, size_t size,
                           size_t usable, size_t align, struct ops_result *r, size_t op) {
  if (((uintptr_t)p & (align - 1)) != 0) return fail(r, op, "block %p not aligned to %zu", (void *)p, align);
  if (usable < size) return fail(r, op, "usable size %zu < requested %zu", usable, size);
  for (int i = 0; i < n; i++) {
    // No overlap with any live block (intervals by usable size are checked one way
    // here: the new block's start and end against each live block's request).
    const unsigned char *q = live[i].p;
    size_t qs = live[i].size ? live[i].size : 1;
    if (p < q + qs && q < p + (size ? size : 1))
      return fail(r, op, "new block %p+%zu overlaps live block %p+%zu", (void *)p, size, (void *)q, qs);
  }
  return 0;
}

// The heap's statistics: hashed into the trace (both modes must agree on them, and on
// the refill and drain counts), and checked exactly against the model:
//   - every class's in_use, and the large-block count, equal the live blocks' (by the
//     class their usable size at hand-out is);
//   - on fake CPUs no section can abort (the thread is not registered: nothing ever
//     rewrites its IP), so every abort counter, the heap's and the registry's, is 0.
static void emit_stats(struct ccache_heap *h, struct ops_trace *t, const struct block *live,
                       int nlive, struct ops_result *r, size_t op) {
  static struct ccache_stats st;
  ccache_get_stats(h, &st);
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    const struct ccache_class_stats *cs = &st.classes[c];
    uint64_t v[4] = {cs->in_use, cs->cached_cpu, cs->central, cs->spans};
    for (int k = 0; k < 4; k++) hash = (hash ^ v[k]) * 1099511628211ULL;
  }
  emit(t, hash);
  emit(t, st.in_use_bytes);
  emit(t, st.large_count);
  emit(t, st.refills);
  emit(t, st.drains);
  if (r->failed) return;
  static uint64_t model[CCACHE_NUM_CLASSES];
  memset(model, 0, sizeof model);
  uint64_t large = 0;
  for (int k = 0; k < nlive; k++) {
    size_t usable = live[k].usable;
    if (live[k].large) {
      large++;
      continue;
    }
    unsigned lo = 0, hi = CCACHE_NUM_CLASSES - 1;  // the class of that size: a search
    while (lo < hi) {
      unsigned mid = (lo + hi) / 2;
      if (ccache_class_size(mid) < usable) lo = mid + 1;
      else hi = mid;
    }
    if (ccache_class_size(lo) != usable) {
      fail(r, op, "block %p of %zu B: usable size %zu is no class's size", (void *)live[k].p,
           live[k].size, usable);
      return;
    }
    model[lo]++;
  }
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++)
    if (st.classes[c].in_use != model[c]) {
      fail(r, op, "stats: class %u (%zu B) has %lu blocks in use, the model %lu", c,
           st.classes[c].size, (unsigned long)st.classes[c].in_use, (unsigned long)model[c]);
      return;
    }
  if (st.large_count != large) {
    fail(r, op, "stats: %lu large blocks, the model %lu", (unsigned long)st.large_count,
         (unsigned long)large);
    return;
  }
  if (rseq_thread_owner() != RSEQ_OWNER_FAKE) return;
  uint64_t registry_aborts = 0;
  for (int id = 0; id < RSEQ_SECTION_MAX_IDS; id++) {
    struct rseq_section_counters sc;
    rseq_section_counters_get(id, &sc);
    registry_aborts += sc.aborted;
  }
  if (st.pop_aborts || st.push_aborts || registry_aborts)
    fail(r, op, "stats: on fake CPUs no section can abort, but the heap counts %lu pop and %lu "
                "push aborts, the registry %lu", (unsigned long)st.pop_aborts,
         (unsigned long)st.push_aborts, (unsigned long)registry_aborts);
}

// Heaps for the fuzzers: by default each stream gets a fresh heap. With
// ops_reuse_heaps(N), a heap per mode and index serves up to N streams in a row (each
// stream frees everything it allocated, so the next finds it empty but warm: spans
// carved, pages faulted in), which is what made the allocator fuzzers ~100 times
// faster. After a model failure the heap is destroyed, never reused.
static unsigned reuse_max;
// A fuzzing heap's reservation (see heap_get).
#define FUZZ_RESERVE ((size_t)48 << 20)
struct heap_slot {
  struct ccache_heap *heap;
  unsigned uses;
};
static struct heap_slot heap_pool[2][2];  // [mode == CAS][index == MM_CID]

void ops_reuse_heaps(unsigned max_streams) {
  reuse_max = max_streams;
  for (int m = 0; m < 2; m++)
    for (int x = 0; x < 2; x++) {
      ccache_heap_destroy(heap_pool[m][x].heap);
      heap_pool[m][x].heap = NULL;
      heap_pool[m][x].uses = 0;
    }
}

unsigned ops_heap_uses(enum rseq_mode mode, enum rseq_index index) {
  return heap_pool[mode == RSEQ_MODE_CAS][index == RSEQ_INDEX_MM_CID].uses;
}

static struct ccache_heap *heap_get(enum rseq_mode mode, enum rseq_index index) {
  struct heap_slot *slot = &heap_pool[mode == RSEQ_MODE_CAS][index == RSEQ_INDEX_MM_CID];
  if (reuse_max && slot->heap && slot->uses < reuse_max) {
    slot->uses++;
    return slot->heap;
  }
  ccache_heap_destroy(slot->heap);
  slot->heap = NULL;
  slot->uses = 0;
  // A small reservation: a fresh heap must be cheap to map and unmap (under ASan,
  // unmapping clears the shadow of the whole range). Exhausting it is an ENOMEM,
  // observable and identical in both modes.
  struct ccache_options o = {.mode = mode, .index = index, .reserve_bytes = FUZZ_RESERVE};
  struct ccache_heap *h = ccache_heap_create(&o);
  if (h && reuse_max) {
    slot->heap = h;
    slot->uses = 1;
  }
  return h;
}

static void heap_put(struct ccache_heap *h, enum rseq_mode mode, enum rseq_index index,
                     bool failed) {
  struct heap_slot *slot = &heap_pool[mode == RSEQ_MODE_CAS][index == RSEQ_INDEX_MM_CID];
  if (slot->heap == h && !failed) return;  // kept for the next stream
  if (slot->heap == h) slot->heap = NULL, slot->uses = 0;
  ccache_heap_destroy(h);
}

static void run_alloc(enum rseq_mode mode, enum rseq_index index, const struct op *ops, size_t n,
                      struct ops_trace *t, struct ops_result *r) {
  struct ccache_heap *h = heap_get(mode, index);
  if (!h) {
    fail(r, 0, "ccache_heap_create(%s, %s): errno %d", rseq_mode_name(mode), rseq_index_name(index), errno);
    return;
  }
  int ncpus = ncpus_for(index);
  // The page heap's release threshold, chosen by the stream (the top two bits of its
  // first op's cpu byte): half the streams keep every free page (the whole reservation:
  // no madvise, no page faults to fault them back; measured 7% more inputs per second),
  // a quarter give pages back past the default 4 MiB, a quarter give back every free
  // run at once. The same stream gets the same threshold in both modes.
  static const size_t thresholds[4] = {FUZZ_RESERVE, FUZZ_RESERVE, (size_t)4 << 20, 0};
  ccache_set_release_threshold(h, thresholds[n ? ops[0].cpu >> 6 : 0]);
  // OPS_VERBOSE=1 prints every operation and its observable result (for reproducers).
  const char *env = getenv("OPS_VERBOSE");
  bool verbose = env && *env == '1';
  struct block live[MAX_LIVE];
  int nlive = 0;
  rseq_fake_cpu_set(0);
  for (size_t i = 0; i < n && !r->failed; i++) {
    const struct op *op = &ops[i];
    int kind = op->kind % A_N;
    uint64_t obs = (uint64_t)kind << 56;
    switch (kind) {
      case A_MALLOC:
      case A_CALLOC:
      case A_ALIGNED: {
        if (nlive == MAX_LIVE) break;
        size_t size = pick_size(op->a), align = 16;
        unsigned char *p;
        if (kind == A_MALLOC) {
          p = ccache_malloc(h, size);
        } else if (kind == A_CALLOC) {
          size = op->a % 4096;
          p = ccache_calloc(h, 1, size);
          long nz = p ? first_nonzero(p, size) : -1;
          if (nz >= 0) fail(r, i, "calloc(%zu): byte %ld is %u", size, nz, p[nz]);
        } else {
          // Up to 32 KiB: past the 8 KiB page, aligned blocks are large ones with a
          // mapping of their own (the slack, the spare of an over-aligned block).
          align = (size_t)16 << (op->b % 12);
          size = op->a % 20000;
          p = ccache_aligned_alloc(h, align, size);
        }
        if (!p) {
          obs |= 1ULL << 48;  // failure is observable, and must match
          break;
        }
        size_t usable = ccache_malloc_usable_size(h, p);
        if (check_new_block(live, nlive, p, size, usable, align, r, i)) break;
        uint8_t seed = (uint8_t)(i * 7 + 1);
        pattern(p, size, seed);
        live[nlive++] = (struct block){p, size, usable, model_large(size, align), seed};
        obs |= usable;
        break;
      }
      case A_REALLOC: {
        if (!nlive) break;
        struct block *b = &live[op->a % (uint32_t)nlive];
        size_t size = pick_size(op->b);
        if (size == 0) size = 1;  // realloc(p, 0) frees: not this op
        unsigned char *q = ccache_realloc(h, b->p, size);
        if (!q) {
          obs |= 1ULL << 48;
          break;
        }
        size_t keep = size < b->size ? size : b->size;
        long bad = pattern_mismatch_upto(q, b->size, keep, b->seed);
        if (bad >= 0) {
          fail(r, i, "realloc(%zu -> %zu) lost byte %ld", b->size, size, bad);
          break;
        }
        // In place, a block stays what it was (a large block that still fits, wasting
        // under half, stays one); moved, it is what a malloc of the new size gets.
        bool large = q == b->p ? b->large : model_large(size, 16);
        b->p = NULL;  // excluded from the overlap check against itself
        size_t usable = ccache_malloc_usable_size(h, q);
        struct block tmp = *b;
        *b = live[--nlive];
        if (check_new_block(live, nlive, q, size, usable, 16, r, i)) break;
        tmp.p = q;
        tmp.size = size;
        tmp.usable = usable;
        tmp.large = large;
        pattern(q, size, tmp.seed);
        live[nlive++] = tmp;
        obs |= usable;
        break;
      }
      case A_FREE:
      case A_USABLE: {
        if (!nlive) break;
        int k = (int)(op->a % (uint32_t)nlive);
        long bad = pattern_mismatch(live[k].p, live[k].size, live[k].seed);
        if (bad >= 0) {
          fail(r, i, "block %p+%zu: byte %ld changed while live", (void *)live[k].p, live[k].size, bad);
          break;
        }
        if (kind == A_USABLE) {
          obs |= ccache_malloc_usable_size(h, live[k].p);
          break;
        }
        if (op->b & 1)
          ccache_free_sized(h, live[k].p, live[k].size);
        else
          ccache_free(h, live[k].p);
        live[k] = live[--nlive];
        break;
      }
      case A_DRAIN:
        obs |= (uint64_t)(ccache_drain_cpu(h, (int)(op->a % (uint32_t)ncpus)) != 0);
        break;
      case A_DRAIN_ALL:
        obs |= (uint64_t)(ccache_drain_all(h) != 0);
        break;
      case A_CPU:
        rseq_fake_cpu_set(op->cpu % ncpus);
        obs |= op->cpu % (unsigned)ncpus;
        break;
    }
    emit(t, obs);
    if (verbose) fprintf(stderr, "op %zu %s a=%u b=%u -> %#lx (live %d)\n", i, alloc_kinds[kind], op->a, op->b, (unsigned long)obs, nlive);
    if (i % 64 == 63) emit_stats(h, t, live, nlive, r, i);
  }
  // The whole-heap walk costs in proportion to the heap, not to the stream: on a reused
  // heap it runs on every 16th stream (and the first). A broken invariant stays broken
  // until then, and the report says how many earlier streams the heap had served.
  unsigned uses = ops_heap_uses(mode, index);
  bool walk = !reuse_max || uses <= 1 || uses % 16 == 0;
  if (!r->failed) {
    emit_stats(h, t, live, nlive, r, n);
    if (walk && ccache_check_heap(h) != 0) fail(r, n, "heap invariants broken (see stderr)");
  }
  // After a model failure the shadow set may be stale: leave the blocks to the heap's
  // destruction rather than free a pointer the model got wrong.
  for (int k = 0; k < nlive && !r->failed; k++) ccache_free(h, live[k].p);
  if (!r->failed) {
    struct ccache_stats st;
    ccache_get_stats(h, &st);
    if (st.in_use_bytes != 0) fail(r, n, "%lu bytes in use after freeing everything", (unsigned long)st.in_use_bytes);
    else if (walk && ccache_check_heap(h) != 0)
      fail(r, n, "heap invariants broken after freeing everything");
  }
  heap_put(h, mode, index, r->failed);
}

// ---------------------------------------------------------------------------------
// Ring streams: a model FIFO per shard, round-robin polling.

#define RING_CAP 16  // past RING_POLL_RUN_MIN: a batch poll's run can end with items left in its shard
#define MODEL_SHARDS 64

struct ring_model {
  uintptr_t q[MODEL_SHARDS][RING_CAP];
  int head[MODEL_SHARDS], len[MODEL_SHARDS];
  int next, n;
};

// The model's side of an offer of `count` items from `value` on shard `cpu`: how many
// it takes. The model's loops are checks, not code under test (CHECK_LOOP): their
// comparison hooks took over half of the ring fuzzers' time.
CHECK_LOOP static int model_offer(struct ring_model *m, int cpu, uintptr_t value, int count) {
  int want = 0;
  while (want < count && m->len[cpu] < RING_CAP) {
    m->q[cpu][(m->head[cpu] + m->len[cpu]++) % RING_CAP] = value + (uintptr_t)want;
    want++;
  }
  return want;
}

// The model's side of a poll (one item, the next shard with one, round-robin) or a
// batch poll of up to `count` (at most max(count/shards + 1, RING_POLL_RUN_MIN) per
// shard visit): the items it gives, into expect; returns how many.
CHECK_LOOP static int model_poll(struct ring_model *m, bool single, int count, uintptr_t *expect) {
  size_t chunk = single ? 1 : (size_t)count / (size_t)m->n + 1;
  if (!single && chunk < RING_POLL_RUN_MIN) chunk = RING_POLL_RUN_MIN;
  int max = single ? 1 : count, idle = 0, c = m->next, want = 0;
  while (want < max && idle < m->n) {
    int took = 0;
    while ((size_t)took < chunk && want < max && m->len[c]) {
      expect[want++] = m->q[c][m->head[c]];
      m->head[c] = (m->head[c] + 1) % RING_CAP;
      m->len[c]--;
      took++;
    }
    idle = took ? 0 : idle + 1;
    c = (c + 1) % m->n;
    if (single && took) break;
  }
  m->next = c;
  return want;
}

// The first k < n where items[k] != expect[k]; n if none.
CHECK_LOOP static long first_difference(void *const *items, const uintptr_t *expect, long n) {
  long k = 0;
  while (k < n && (uintptr_t)items[k] == expect[k]) k++;
  return k;
}

// Record rings: the record of position value v holds v in its first 8 bytes and the
// blocks' byte pattern seeded with v in the rest (every byte of it: records are far
// shorter than the pattern's two edges), so that a torn or shifted copy shows.
static const size_t ring_record_sizes[4] = {12, 21, 32, 64};
static void record_of(unsigned char *rec, size_t size, uintptr_t v) {
  memcpy(rec, &v, sizeof v);
  pattern(rec + sizeof v, size - sizeof v, (uint8_t)v);
}
// The value of a polled record, or 0 (no position is 0 here) when it is not whole.
static uintptr_t record_value(const unsigned char *rec, size_t size) {
  uintptr_t v;
  memcpy(&v, rec, sizeof v);
  return pattern_mismatch(rec + sizeof v, size - sizeof v, (uint8_t)v) < 0 ? v : 0;
}

static void run_ring(enum rseq_mode mode, enum rseq_index index, const struct op *ops, size_t n,
                     struct ops_trace *t, struct ops_result *r) {
  // Pointer items, or records (ring_offer_record[_batch], ring_poll_record[_batch]) of
  // one of four sizes: the stream's first op's cpu byte chooses (the top bit, then the
  // two below it), the same in both modes.
  size_t rs = n && (ops[0].cpu & 0x80) ? ring_record_sizes[(ops[0].cpu >> 5) & 3] : 0;
  struct ring_options o = {mode, index, rs, UINTPTR_MAX - 20};  // positions wrap early
  struct ring *ring = ring_create(RING_CAP, &o);
  if (!ring) {
    fail(r, 0, "ring_create(%s, %s): errno %d", rseq_mode_name(mode), rseq_index_name(index), errno);
    return;
  }
  static struct ring_model m;
  memset(&m, 0, sizeof m);
  m.n = ring_shards(ring) < MODEL_SHARDS ? ring_shards(ring) : MODEL_SHARDS;
  int cpu = 0;
  rseq_fake_cpu_set(0);
  uintptr_t value = 1;
  static unsigned char recs[12 * RING_RECORD_MAX];  // record rings: an op's records
  for (size_t i = 0; i < n && !r->failed; i++) {
    const struct op *op = &ops[i];
    int kind = op->kind % R_N;
    uint64_t obs = (uint64_t)kind << 56;
    int count = kind == R_OFFER || kind == R_POLL ? 1 : (int)(op->a % 12);
    if (kind == R_CPU) {
      cpu = op->cpu % m.n;
      rseq_fake_cpu_set(cpu);
      obs |= (uint64_t)cpu;
    } else if (kind == R_OFFER || kind == R_OFFER_BATCH) {
      void *items[12];
      for (int k = 0; k < count; k++) {
        items[k] = (void *)(value + (uintptr_t)k);
        if (rs) record_of(recs + (size_t)k * rs, rs, value + (uintptr_t)k);
      }
      size_t done;
      if (count == 1 && kind == R_OFFER)
        done = (rs ? ring_offer_record(ring, recs) : ring_offer(ring, items[0])) == RING_OK;
      else
        done = rs ? ring_offer_record_batch(ring, recs, (size_t)count)
                  : ring_offer_batch(ring, items, (size_t)count);
      int want = model_offer(&m, cpu, value, count);
      if ((int)done != want) fail(r, i, "offer of %d on shard %d: %zu accepted, model %d", count, cpu, done, want);
      value += (uintptr_t)count;
      obs |= done;
    } else {
      void *items[12];
      long got;
      if (kind == R_POLL) {
        got = (rs ? ring_poll_record(ring, recs) : ring_poll(ring, &items[0])) == RING_OK;
      } else {
        got = rs ? ring_poll_record_batch(ring, recs, (size_t)count)
                 : ring_poll_batch(ring, items, (size_t)count);
      }
      for (long k = 0; rs && k < got; k++) {
        items[k] = (void *)record_value(recs + (size_t)k * rs, rs);
        if (!items[k]) {
          fail(r, i, "poll item %ld: a torn %zu-byte record", k, rs);
          break;
        }
      }
      if (r->failed) break;
      // The model: one item per shard per turn for single polls; the batch contract
      // (at most max(max/shards + 1, RING_POLL_RUN_MIN) per visit) for batches.
      uintptr_t expect[12];
      int max = kind == R_POLL ? 1 : count;
      int want = model_poll(&m, kind == R_POLL, count, expect);
      if (got != want) {
        fail(r, i, "poll of %d: ring gave %ld, model %d", max, got, want);
        break;
      }
      long k = first_difference(items, expect, got);
      if (k < got) {
        fail(r, i, "poll item %ld: ring %lu, model %lu", k, (unsigned long)(uintptr_t)items[k], (unsigned long)expect[k]);
        break;
      }
      for (k = 0; k < got; k++) emit(t, (uintptr_t)items[k]);
      obs |= (uint64_t)got;
    }
    emit(t, obs);
  }
  if (!r->failed) {
    for (int c = 0; c < m.n; c++) {
      struct ring_cpu_stats st;
      ring_cpu_stats(ring, c, &st);
      emit(t, st.offered);
      emit(t, st.polled);
      emit(t, st.full);
      if (st.offered - st.polled != (uint64_t)m.len[c])
        fail(r, n, "shard %d: %lu offered, %lu polled, model holds %d", c, (unsigned long)st.offered,
             (unsigned long)st.polled, m.len[c]);
    }
  }
  ring_destroy(ring);
}

// ---------------------------------------------------------------------------------
// Primitive streams: per-CPU words, lists and logs against a model.

#define PRIM_NODES 32

struct prim_node {
  long id;
  intptr_t next;
};

static void run_prim(enum rseq_mode mode, enum rseq_index index, const struct op *ops, size_t n,
                     struct ops_trace *t, struct ops_result *r) {
  struct rseq_percpu_mode m;
  const char *why;
  if (rseq_resolve_mode(mode, index, &m, &why) != 0) {
    fail(r, 0, "mode %s index %s: %s", rseq_mode_name(mode), rseq_index_name(index), why);
    return;
  }
  int ncpus = ncpus_for(index);
  if (ncpus > 64) ncpus = 64;
  intptr_t words[64] = {0}, model_words[64] = {0};
  struct rseq_list *lists = aligned_alloc(16, sizeof *lists * 64);
  memset(lists, 0, sizeof *lists * 64);
  static struct prim_node nodes[PRIM_NODES];
  int model_list[64][PRIM_NODES], model_len[64] = {0};
  int held[PRIM_NODES], nheld = 0;
  for (int k = 0; k < PRIM_NODES; k++) {
    nodes[k].id = k;
    held[nheld++] = k;
  }
  _Alignas(8) unsigned char buf[64][24];
  unsigned char model_buf[64][24];
  memset(buf, 0, sizeof buf);
  memset(model_buf, 0, sizeof model_buf);
  int cpu = 0;
  rseq_fake_cpu_set(0);
  const long off = (long)offsetof(struct prim_node, next);
  for (size_t i = 0; i < n && !r->failed; i++) {
    const struct op *op = &ops[i];
    int kind = op->kind % P_N;
    uint64_t obs = (uint64_t)kind << 56;
    int res = RSEQ_COMMIT;
    switch (kind) {
      case P_ADD:
        res = rseq_percpu_addv(&m, &words[cpu], (intptr_t)(int32_t)op->a, cpu);
        model_words[cpu] += (intptr_t)(int32_t)op->a;
        break;
      case P_CMPEQ: {
        intptr_t expect = (op->b & 1) ? words[cpu] : (intptr_t)op->b;
        res = rseq_percpu_cmpeqv_storev(&m, &words[cpu], expect, (intptr_t)op->a, cpu);
        if (model_words[cpu] == expect) model_words[cpu] = (intptr_t)op->a;
        else if (res != RSEQ_CMPFAIL) fail(r, i, "cmpeqv_storev committed on a mismatch");
        break;
      }
      case P_TRYSTORE:
      case P_MEMCPY: {
        // A per-CPU "log" of one slot: v counts writes, the slot holds the last one.
        intptr_t expect = (op->b & 1) ? words[cpu] : (intptr_t)op->b;
        unsigned char src[24];
        for (int k = 0; k < 24; k++) src[k] = (unsigned char)(op->a + (uint32_t)k);
        size_t len = kind == P_MEMCPY ? op->a % 25 : sizeof(intptr_t);
        if (kind == P_TRYSTORE) {
          res = m.mode == RSEQ_MODE_CAS ? rseq_cas_cmpeqv_trystorev_storev(&words[cpu], expect, (intptr_t *)buf[cpu], (intptr_t)op->a, expect + 1)
                                        : rseq_cmpeqv_trystorev_storev(m.index, &words[cpu], expect, (intptr_t *)buf[cpu], (intptr_t)op->a, expect + 1, cpu);
        } else {
          res = m.mode == RSEQ_MODE_CAS ? rseq_cas_cmpeqv_trymemcpy_storev(&words[cpu], expect, buf[cpu], src, len, expect + 1)
                                        : rseq_cmpeqv_trymemcpy_storev(m.index, &words[cpu], expect, buf[cpu], src, len, expect + 1, cpu);
        }
        if (model_words[cpu] == expect) {
          model_words[cpu] = expect + 1;
          if (kind == P_TRYSTORE) memcpy(model_buf[cpu], &(intptr_t){(intptr_t)op->a}, sizeof(intptr_t));
          else memcpy(model_buf[cpu], src, len);
        }
        if (memcmp(buf[cpu], model_buf[cpu], sizeof buf[cpu]) != 0)
          fail(r, i, "cpu %d: try-store slot differs from the model", cpu);
        break;
      }
      case P_PUSH:
        if (!nheld) break;
        {
          int slot = (int)(op->a % (uint32_t)nheld), k = held[slot];
          res = rseq_list_push(&m, &lists[cpu], (intptr_t)&nodes[k], off, cpu);
          if (res == RSEQ_COMMIT) {
            model_list[cpu][model_len[cpu]++] = k;
            nheld--;
            held[slot] = held[nheld];
          }
        }
        break;
      case P_POP: {
        intptr_t got = 0;
        res = rseq_list_pop(&m, &lists[cpu], off, &got, cpu);
        if (model_len[cpu] == 0) {
          if (res != RSEQ_CMPFAIL) fail(r, i, "pop from an empty list on cpu %d committed", cpu);
        } else {
          int k = model_list[cpu][--model_len[cpu]];
          if (res != RSEQ_COMMIT || got != (intptr_t)&nodes[k])
            fail(r, i, "pop on cpu %d: %s, node %ld; model node %d", cpu, rseq_result_name(res),
                 res == RSEQ_COMMIT ? ((struct prim_node *)got)->id : -1L, k);
          held[nheld++] = k;
          obs |= (uint64_t)k << 8;
        }
        break;
      }
      case P_CPU:
        cpu = op->cpu % ncpus;
        rseq_fake_cpu_set(cpu);
        obs |= (uint64_t)cpu;
        break;
    }
    if (res == RSEQ_ABORT) fail(r, i, "%s aborted on a fake CPU", prim_kinds[kind]);
    if (words[cpu] != model_words[cpu])
      fail(r, i, "%s: cpu %d word %ld, model %ld", prim_kinds[kind], cpu, (long)words[cpu], (long)model_words[cpu]);
    obs |= (uint64_t)res << 48;
    emit(t, obs);
    emit(t, (uint64_t)words[cpu]);
  }
  free(lists);
}

void ops_run(enum ops_family f, enum rseq_mode mode, enum rseq_index index, const struct op *ops,
             size_t n, struct ops_trace *trace, struct ops_result *result) {
  memset(result, 0, sizeof *result);
  switch (f) {
    case FAMILY_ALLOC:
      run_alloc(mode, index, ops, n, trace, result);
      break;
    case FAMILY_RING:
      run_ring(mode, index, ops, n, trace, result);
      break;
    default:
      run_prim(mode, index, ops, n, trace, result);
  }
}
