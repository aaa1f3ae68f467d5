// ring.c: the per-CPU MPSC ring. See ring.h for the layout and the guarantees.
#include "ring/ring.h"

#include <errno.h>
#include <stddef.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rseq/rseq_asm.h"
#include "sanitizers/sanitizers.h"

#define CACHELINE 64

// One shard per CPU (or mm_cid): four cache lines, so the producers of a CPU, the
// consumer and the statistics never write a line another of them reads on its fast
// path. The consumer reads the producers' head line once per run of items; the
// producers read the consumer's line only when the shard looks full.
struct ring_shard {
  // RSEQ: written only by the commit of an offer section on this CPU. CAS: claimed
  // with a CAS by any producer. Alone on its line: the consumer reads it, and nothing
  // else a producer reads is moved to the consumer's core by that read.
  _Alignas(CACHELINE) uintptr_t head;
  // The producers' private line: the sections read every word of it (at the offsets
  // below). RSEQ: the producers' copy of tail, so an offer reads the consumer's line
  // only when the shard looks full. It only ever holds a value tail had, so it is
  // never ahead of tail: a stale copy makes the full check conservative, never wrong.
  _Alignas(CACHELINE) uintptr_t tail_seen;
  unsigned char *slots;  // constant after creation, as are the three words below
  uintptr_t mask;        // capacity - 1
  uintptr_t stride;      // bytes from one slot to the next
  uintptr_t record_size; // bytes per record (RSEQ record rings)
  // The consumer's line: written by the consumer only.
  _Alignas(CACHELINE) uintptr_t tail;
  // RSEQ: the consumer's copy of head: items up to it are known to be committed, so the
  // consumer reads the producers' line once per run of items, not once per item.
  uintptr_t head_seen;
  unsigned char *cslots;  // the consumer's copy of slots
  // Relaxed counters: statistics, bumped on the rare paths only.
  _Alignas(CACHELINE) _Atomic uint64_t full;
  _Atomic uint64_t aborts;
  _Atomic uint64_t retries;
};

// The offsets the sections' asm uses.
#define RING_OFF_HEAD "0"
#define RING_OFF_TAIL_SEEN "64"
#define RING_OFF_SLOTS "72"
#define RING_OFF_MASK "80"
#define RING_OFF_STRIDE "88"
#define RING_OFF_RECORD_SIZE "96"
_Static_assert(offsetof(struct ring_shard, head) == 0, "asm offsets");
_Static_assert(offsetof(struct ring_shard, tail_seen) == 64, "asm offsets");
_Static_assert(offsetof(struct ring_shard, slots) == 72, "asm offsets");
_Static_assert(offsetof(struct ring_shard, mask) == 80, "asm offsets");
_Static_assert(offsetof(struct ring_shard, stride) == 88, "asm offsets");
_Static_assert(offsetof(struct ring_shard, record_size) == 96, "asm offsets");

struct ring {
  struct rseq_percpu_mode mode;
  long index_off;  // the index field's offset in the rseq area
  const char *why_cas;
  size_t capacity;
  uintptr_t mask;
  size_t record_size;   // 0: pointer items
  size_t payload_size;  // bytes copied per item
  size_t payload_off;   // a payload's offset in its slot: 8 in CAS mode (after seq), else 0
  size_t stride;        // bytes per slot, a multiple of 8
  uint32_t nshards;
  uintptr_t initial;
  struct ring_shard *shards;
  // Consumer state, on a line of its own: the consumer writes next_shard on every
  // poll, and the fields above are read by every offer.
  _Alignas(CACHELINE) int next_shard;
  void *_Atomic consumer;  // the consumer thread's token, or NULL
};

// A slot. RSEQ mode: the payload alone (pointer rings are arrays of pointers). CAS
// mode: the sequence number, then the payload.
static inline unsigned char *slot_at(const struct ring *r, unsigned char *slots, uintptr_t pos) {
  return slots + (pos & r->mask) * r->stride;
}
static inline uintptr_t *cas_seq(unsigned char *slot) { return (uintptr_t *)slot; }

__attribute__((noreturn, cold)) static void index_out_of_range(const struct ring *r, int idx) {
  fprintf(stderr, "ring: %s index %d outside [0, %u): the kernel's rseq area is inconsistent\n",
          rseq_index_name(r->mode.index), idx, r->nshards);
  abort();
}

// CAS mode: the shard of the caller's CPU (or mm_cid) when the rseq area says, else
// sched_getcpu() (just a hint there: any shard is correct).
static inline int cas_shard(const struct ring *r) {
  int idx = rseq_current_index(r->mode.index);
  if (idx < 0) {
    idx = sched_getcpu();
    if (idx < 0) idx = 0;
    return idx % (int)r->nshards;
  }
  if (__builtin_expect(idx >= (int)r->nshards, 0)) index_out_of_range(r, idx);
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
  struct ring *r = aligned_alloc(CACHELINE, sizeof *r);
  if (!r) return NULL;
  memset(r, 0, sizeof *r);
  r->mode = mode;
  r->index_off = rseq_index_offset(mode.index);
  r->why_cas = mode.mode == RSEQ_MODE_CAS ? why : "";
  r->capacity = capacity;
  r->mask = capacity - 1;
  r->record_size = o->record_size;
  r->payload_size = o->record_size ? o->record_size : sizeof(void *);
  r->payload_off = mode.mode == RSEQ_MODE_CAS ? sizeof(uintptr_t) : 0;
  r->stride = r->payload_off + ((r->payload_size + 7) & ~(size_t)7);
  r->nshards = (uint32_t)rseq_index_count(mode.index);
  r->initial = o->initial_position;
  r->shards = aligned_alloc(CACHELINE, sizeof *r->shards * r->nshards);
  if (!r->shards) {
    free(r);
    errno = ENOMEM;
    return NULL;
  }
  memset(r->shards, 0, sizeof *r->shards * r->nshards);
  for (uint32_t c = 0; c < r->nshards; c++) {
    struct ring_shard *s = &r->shards[c];
    s->head = s->tail = s->tail_seen = s->head_seen = r->initial;
    s->mask = r->mask;
    s->stride = r->stride;
    s->record_size = r->payload_size;
    size_t bytes = (capacity * r->stride + CACHELINE - 1) & ~(size_t)(CACHELINE - 1);
    s->slots = s->cslots = aligned_alloc(CACHELINE, bytes);
    if (!s->slots) {
      ring_destroy(r);
      errno = ENOMEM;
      return NULL;
    }
    memset(s->slots, 0, bytes);
    // CAS mode: the slot for position p is free for the producer of p when seq == p.
    if (mode.mode == RSEQ_MODE_CAS)
      for (size_t k = 0; k < capacity; k++)
        *cas_seq(slot_at(r, s->slots, r->initial + k)) = r->initial + k;
  }
  return r;
}

void ring_destroy(struct ring *r) {
  if (!r) return;
  if (r->shards)
    for (uint32_t c = 0; c < r->nshards; c++) free(r->shards[c].slots);
  free(r->shards);
  free(r);
}

enum rseq_mode ring_mode(const struct ring *r) { return r->mode.mode; }
enum rseq_index ring_index(const struct ring *r) { return r->mode.index; }
const char *ring_mode_reason(const struct ring *r) { return r->why_cas; }
int ring_shards(const struct ring *r) { return (int)r->nshards; }
size_t ring_capacity(const struct ring *r) { return r->capacity; }

// ---------------------------------------------------------------------------------
// CAS-mode producers: a bounded MPSC queue per shard. A producer claims positions with
// a CAS on head once their slots' seq say the consumer is done with their previous lap
// (seq == pos), writes the payloads, and publishes each with seq = pos + 1.

// Claims up to n positions (n >= 1) of the caller's shard and writes payloads[0 .. k)
// (payload_size bytes each, back to back) into them. Returns k; 0 when full.
static size_t cas_offer(struct ring *r, const unsigned char *payloads, size_t n) {
  struct ring_shard *s = &r->shards[cas_shard(r)];
  // Relaxed: only a starting guess; the CAS below validates it.
  uintptr_t pos = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
  for (;;) {
    // How many slots from pos on are free for this lap (at most n).
    size_t k = 0;
    intptr_t dif = 0;
    while (k < n) {
      // Acquire: pairs with the consumer's release of seq, so its read of the slot's
      // previous item is done before we overwrite the payload.
      uintptr_t seq = __atomic_load_n(cas_seq(slot_at(r, s->slots, pos + k)), __ATOMIC_ACQUIRE);
      dif = (intptr_t)(seq - (pos + k));
      if (dif != 0) break;
      k++;
    }
    if (k == 0 && dif < 0) {
      // The slot still holds the unread item of position pos - capacity: full.
      atomic_fetch_add_explicit(&s->full, 1, memory_order_relaxed);
      return 0;
    }
    if (k == 0) {
      // Another producer claimed pos; start again from the current head.
      pos = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
      continue;
    }
    // Relaxed: claiming the positions publishes nothing; the release stores of seq do.
    if (__atomic_compare_exchange_n(&s->head, &pos, pos + k, true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
      for (size_t i = 0; i < k; i++) {
        unsigned char *slot = slot_at(r, s->slots, pos + i);
        memcpy(slot + r->payload_off, payloads + i * r->payload_size, r->payload_size);
        // Release: the payload is written before the consumer can see seq == pos + 1.
        __atomic_store_n(cas_seq(slot), pos + i + 1, __ATOMIC_RELEASE);
      }
      return k;
    }
    atomic_fetch_add_explicit(&s->retries, 1, memory_order_relaxed);
  }
}

// ---------------------------------------------------------------------------------
// RSEQ-mode producers: three critical sections, inlined at their one call site each
// (ring_offer, ring_offer_record, offer_batch_rseq), so the fast path is one call with
// no locked instruction and no write to a line the consumer reads on its fast path
// (it reads head once per run of items). Each section:
//   if (cpu != current) abort;
//   h = s->head;  if (h - s->tail_seen >= capacity) goto full;   (cmpfail)
//   write the item(s) into the free slot(s) from h on;   <- try-stores: invisible until
//   s->head = h + k;                                     <- the commit (x86 keeps the
//                                                           stores in order: a release)
// An abort leaves head unchanged, so the slots written are still free: the retry (on
// this CPU or another) writes them again or not at all. Injection points (inject
// variant): 1 after the checks, 2 right before the commit.
//
// Arguments: the thread's rseq area, its index field (&area->cpu_id or &area->mm_cid),
// the index (for the counting hooks), `cpu` (the value the caller read from that
// field) and the shard of `cpu`, which the caller computes from that same value: the
// section starts by comparing it with the field's current one, so the shard always
// belongs to the CPU the section runs on.

#define RING_SECTION_ARGS_ \
  struct rseq_abi *area, uint32_t *idx, enum rseq_index index, int cpu, struct ring_shard *s
#define RING_ASM_START_(name)                                                              \
  RSEQ_ASM_DEFINE_TABLE(name)                                                             \
  RSEQ_ASM_DEFINE_EXIT_POINT("1f", full)                                                  \
  RSEQ_ASM_START                                                                          \
  "movq " RING_OFF_HEAD "(%[s]), %[h]\n\t"
#define RING_ASM_COMMIT_                                                                   \
  RSEQ_ASM_CMP_CPU_TWICE                                                                  \
  "movq %[h], " RING_OFF_HEAD "(%[s])\n\t" /* the commit */                               \
  "2:\n\t"                                                                                \
  RSEQ_ASM_DEFINE_ABORT
#define RING_ASM_INPUTS_ [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [s] "r"(s)
#define RING_ASM_CLOBBERS_ "memory", "cc", "rax" RSEQ_INJECT_CLOBBER : abort, full RSEQ_ASM_GOTO_ERROR_CPU
#define RING_SECTION_EXITS_(name)                                                          \
  abort:                                                                                  \
  return RSEQ_ABORT; /* the caller counts it, on its slow path */                         \
  full:                                                                                   \
  return rseq_section_cmpfailed_(id, &s->head);                                           \
  RSEQ_ASM_ERROR_CPU_BLOCK(name, cpu)

// One pointer into the slot at head.
static inline __attribute__((always_inline)) int offer_section(RING_SECTION_ARGS_, intptr_t item) {
  enum { id = RSEQ_SECTION_ID_ring_offer };
  unsigned long h, n, slots;
  rseq_section_enter_(id, index, cpu, &s->head);
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer")
               "movq %[h], %[n]\n\t"
               "subq " RING_OFF_TAIL_SEEN "(%[s]), %[n]\n\t" /* items held, as tail_seen says */
               "cmpq " RING_OFF_MASK "(%[s]), %[n]\n\t"
               "ja %l[full]\n\t"                              /* held > mask: full */
               RSEQ_INJECT_ASM(1)
               "movq %[h], %[n]\n\t"
               "andq " RING_OFF_MASK "(%[s]), %[n]\n\t"
               "movq " RING_OFF_SLOTS "(%[s]), %[slots]\n\t"
               "movq %[item], (%[slots], %[n], 8)\n\t"       /* the try-store */
               "incq %[h]\n\t"
               RSEQ_INJECT_ASM(2)
               RING_ASM_COMMIT_
               : [h] "=&r"(h), [n] "=&r"(n), [slots] "=&r"(slots)
               : RING_ASM_INPUTS_, [item] "r"(item)
               : RING_ASM_CLOBBERS_);
  (void)h;
  (void)n;
  (void)slots;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer)
}

// One record of record_size bytes into the slot at head: whole words, then the bytes
// left (the source is read within its record_size bytes only).
static inline __attribute__((always_inline)) int offer_record_section(RING_SECTION_ARGS_,
                                                                      const void *src) {
  enum { id = RSEQ_SECTION_ID_ring_offer_record };
  unsigned long h, dst, i;
  rseq_section_enter_(id, index, cpu, &s->head);
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer_record")
               "movq %[h], %[dst]\n\t"
               "subq " RING_OFF_TAIL_SEEN "(%[s]), %[dst]\n\t"
               "cmpq " RING_OFF_MASK "(%[s]), %[dst]\n\t"
               "ja %l[full]\n\t"
               RSEQ_INJECT_ASM(1)
               "movq %[h], %[dst]\n\t"
               "andq " RING_OFF_MASK "(%[s]), %[dst]\n\t"
               "imulq " RING_OFF_STRIDE "(%[s]), %[dst]\n\t"
               "addq " RING_OFF_SLOTS "(%[s]), %[dst]\n\t"    /* the slot at head */
               "xorl %k[i], %k[i]\n\t"
               "81:\n\t"                                       /* whole words */
               "leaq 8(%[i]), %%rax\n\t"
               "cmpq " RING_OFF_RECORD_SIZE "(%[s]), %%rax\n\t"
               "ja 82f\n\t"
               "movq (%[src], %[i]), %%rax\n\t"
               "movq %%rax, (%[dst], %[i])\n\t"                /* try-stores */
               "addq $8, %[i]\n\t"
               "jmp 81b\n\t"
               "82:\n\t"                                       /* the bytes left */
               "cmpq " RING_OFF_RECORD_SIZE "(%[s]), %[i]\n\t"
               "jae 83f\n\t"
               "movzbl (%[src], %[i]), %%eax\n\t"
               "movb %%al, (%[dst], %[i])\n\t"
               "incq %[i]\n\t"
               "jmp 82b\n\t"
               "83:\n\t"
               "incq %[h]\n\t"
               RSEQ_INJECT_ASM(2)
               RING_ASM_COMMIT_
               : [h] "=&r"(h), [dst] "=&r"(dst), [i] "=&r"(i)
               : RING_ASM_INPUTS_, [src] "r"(src)
               : RING_ASM_CLOBBERS_);
  (void)h;
  (void)dst;
  (void)i;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer_record)
}

// Up to n pointers (n >= 1) into the free slots from head on, in one commit.
//   k = capacity - (h - tail_seen);  if (k <= 0) goto full;  k = min(k, n);
// *offered = k: items[0 .. k) are committed, in order.
static inline __attribute__((always_inline)) int offer_batch_section(RING_SECTION_ARGS_,
                                                                     void *const *items,
                                                                     unsigned long n,
                                                                     unsigned long *offered) {
  enum { id = RSEQ_SECTION_ID_ring_offer_batch };
  unsigned long h, k, slots, i, v;
  rseq_section_enter_(id, index, cpu, &s->head);
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer_batch")
               "movq " RING_OFF_MASK "(%[s]), %[k]\n\t"
               "incq %[k]\n\t"                                 /* capacity */
               "addq " RING_OFF_TAIL_SEEN "(%[s]), %[k]\n\t"
               "subq %[h], %[k]\n\t"                           /* free slots */
               "jle %l[full]\n\t"  /* signed: a stale tail_seen may make it negative */
               "cmpq %[n], %[k]\n\t"
               "cmovaq %[n], %[k]\n\t"
               RSEQ_INJECT_ASM(1)
               "movq " RING_OFF_SLOTS "(%[s]), %[slots]\n\t"
               "xorl %k[i], %k[i]\n\t"
               "81:\n\t"
               "leaq (%[h], %[i]), %%rax\n\t"
               "andq " RING_OFF_MASK "(%[s]), %%rax\n\t"
               "movq (%[items], %[i], 8), %[v]\n\t"
               "movq %[v], (%[slots], %%rax, 8)\n\t"            /* try-stores */
               "incq %[i]\n\t"
               "cmpq %[k], %[i]\n\t"
               "jb 81b\n\t"
               "addq %[k], %[h]\n\t"
               RSEQ_INJECT_ASM(2)
               RING_ASM_COMMIT_
               : [h] "=&r"(h), [k] "=&r"(k), [slots] "=&r"(slots), [i] "=&r"(i), [v] "=&r"(v)
               : RING_ASM_INPUTS_, [items] "r"(items), [n] "r"(n)
               : RING_ASM_CLOBBERS_);
  (void)h;
  (void)slots;
  (void)i;
  (void)v;
  *offered = k;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer_batch)
}

// The index for a section, read inline; -1 when the area cannot give it yet.
static inline int offer_index(const struct ring *r, struct rseq_abi **area, uint32_t **idx) {
  struct rseq_abi *a = rseq_tls_area_;
  if (__builtin_expect(a == NULL, 0)) return -1;
  uint32_t *f = rseq_index_field(a, r->index_off);
  // Relaxed: the kernel writes the field on return to user space; any current value
  // will do, since the section compares it again.
  uint32_t cpu = __atomic_load_n(f, __ATOMIC_RELAXED);
  if (__builtin_expect(cpu >= r->nshards, 0)) return -1;
  *area = a;
  *idx = f;
  return (int)cpu;
}

// The slow path of the index read: registers the thread, plays fake-CPU migrations.
// The section then runs with the index this read gave, as with the inline read.
__attribute__((noinline, cold)) static int offer_no_index(const struct ring *r,
                                                         struct rseq_abi **area, uint32_t **idx) {
  int cpu = rseq_current_index(r->mode.index);
  if (cpu < 0 || cpu >= (int)r->nshards) index_out_of_range(r, cpu);
  *area = rseq_thread_area();
  *idx = rseq_index_field(*area, r->index_off);
  return cpu;
}

// The kernel aborted a section (preempted, migrated, signalled).
__attribute__((noinline, cold)) static void offer_aborted(struct ring_shard *s, int id) {
  rseq_count_aborted(id);
  atomic_fetch_add_explicit(&s->aborts, 1, memory_order_relaxed);
}

// A section found shard s full as its tail_seen says. Reads the consumer's tail and
// refreshes tail_seen: true when the shard has room after all (the offer goes again),
// false when it is full (counted).
__attribute__((noinline)) static bool offer_full(const struct ring *r, struct ring_shard *s) {
  // Acquire: pairs with the consumer's release of tail: the slots it freed are no
  // longer being read when a section overwrites them.
  uintptr_t t = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
  // Relaxed: only a producer stores tail_seen; a store that lost a race to a newer one
  // leaves it behind tail, which only makes the full check conservative. Release: a
  // section on another thread that reads this copy overwrites slots the consumer freed.
  uintptr_t seen = __atomic_load_n(&s->tail_seen, __ATOMIC_RELAXED);
  if ((intptr_t)(t - seen) > 0) __atomic_store_n(&s->tail_seen, t, __ATOMIC_RELEASE);
  // Relaxed: head moves only through sections on this shard's CPU; a stale value can
  // only make this look fuller, and then the caller reports full, which it was.
  uintptr_t h = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
#if CCACHE_SEEDED_BUG == 4  // test-only variant (ci/fuzz-teeth): one item too many
  if (h - t > r->capacity) {
#else
  if (h - t >= r->capacity) {
#endif
    atomic_fetch_add_explicit(&s->full, 1, memory_order_relaxed);
    return false;
  }
  atomic_fetch_add_explicit(&s->retries, 1, memory_order_relaxed);
  return true;
}

static int wrong_kind(void) {
  errno = EINVAL;
  return -1;
}

int ring_offer(struct ring *r, void *item) {
  if (__builtin_expect(r->record_size != 0, 0)) return wrong_kind();
  if (r->mode.mode == RSEQ_MODE_CAS) return cas_offer(r, (unsigned char *)&item, 1) ? RING_OK : RING_FULL;
  for (;;) {
    struct rseq_abi *area;
    uint32_t *idx;
    int cpu = offer_index(r, &area, &idx);
    if (__builtin_expect(cpu < 0, 0)) cpu = offer_no_index(r, &area, &idx);
    struct ring_shard *s = &r->shards[cpu];
    int res = offer_section(area, idx, r->mode.index, cpu, s, (intptr_t)item);
    if (__builtin_expect(res == RSEQ_COMMIT, 1)) return RING_OK;
    if (res == RSEQ_ABORT)
      offer_aborted(s, RSEQ_SECTION_ID_ring_offer);
    else if (!offer_full(r, s))
      return RING_FULL;
  }
}

int ring_offer_record(struct ring *r, const void *record) {
  if (__builtin_expect(r->record_size == 0, 0)) return wrong_kind();
  if (r->mode.mode == RSEQ_MODE_CAS) return cas_offer(r, record, 1) ? RING_OK : RING_FULL;
  for (;;) {
    struct rseq_abi *area;
    uint32_t *idx;
    int cpu = offer_index(r, &area, &idx);
    if (__builtin_expect(cpu < 0, 0)) cpu = offer_no_index(r, &area, &idx);
    struct ring_shard *s = &r->shards[cpu];
    int res = offer_record_section(area, idx, r->mode.index, cpu, s, record);
    if (__builtin_expect(res == RSEQ_COMMIT, 1)) return RING_OK;
    if (res == RSEQ_ABORT)
      offer_aborted(s, RSEQ_SECTION_ID_ring_offer_record);
    else if (!offer_full(r, s))
      return RING_FULL;
  }
}

// RSEQ mode: up to n items (n >= 1) in one section; 0 when the shard is full.
__attribute__((noinline)) static size_t offer_batch_rseq(struct ring *r, void *const *items,
                                                         size_t n) {
  for (;;) {
    struct rseq_abi *area;
    uint32_t *idx;
    int cpu = offer_index(r, &area, &idx);
    if (__builtin_expect(cpu < 0, 0)) cpu = offer_no_index(r, &area, &idx);
    struct ring_shard *s = &r->shards[cpu];
    unsigned long k;
    int res = offer_batch_section(area, idx, r->mode.index, cpu, s, items, n, &k);
    if (__builtin_expect(res == RSEQ_COMMIT, 1)) return k;
    if (res == RSEQ_ABORT)
      offer_aborted(s, RSEQ_SECTION_ID_ring_offer_batch);
    else if (!offer_full(r, s))
      return 0;
  }
}

size_t ring_offer_batch(struct ring *r, void *const *items, size_t n) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return 0;
  }
  size_t done = 0;
  while (done < n) {
    // Each call commits a run that fits in the shard of the CPU it runs on.
    size_t k = r->mode.mode == RSEQ_MODE_CAS
                   ? cas_offer(r, (const unsigned char *)(items + done), n - done)
                   : offer_batch_rseq(r, items + done, n - done);
    if (k == 0) break;  // full
    done += k;
  }
  return done;
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
  while (n < max &&
         __atomic_load_n(cas_seq(slot_at(r, s->cslots, t + n)), __ATOMIC_ACQUIRE) == t + n + 1)
    n++;
  return n;
}

// Take n committed items from shard s, starting at its tail, into out (payload_size
// each), and publish the new tail once.
static inline void take(struct ring *r, struct ring_shard *s, uintptr_t t, size_t n,
                        unsigned char *out) {
  if (r->mode.mode == RSEQ_MODE_RSEQ && r->record_size == 0) {
    // Pointer slots are an array: at most two runs, split where the positions wrap.
    void **slots = (void **)s->cslots, **dst = (void **)out;
    size_t at = (size_t)(t & r->mask), first = r->capacity - at < n ? r->capacity - at : n;
    memcpy(dst, slots + at, first * sizeof *slots);
    memcpy(dst + first, slots, (n - first) * sizeof *slots);
  } else {
    for (size_t k = 0; k < n; k++) {
      unsigned char *slot = slot_at(r, s->cslots, t + k);
      memcpy(out + k * r->payload_size, slot + r->payload_off, r->payload_size);
      if (r->mode.mode == RSEQ_MODE_CAS)
        // Release: we are done reading the payload before a producer may reuse the slot.
        __atomic_store_n(cas_seq(slot), t + k + r->capacity, __ATOMIC_RELEASE);
    }
  }
  // Release: pairs with the producers' acquire of tail (offer_full): the slots are read.
  __atomic_store_n(&s->tail, t + n, __ATOMIC_RELEASE);
}

static int poll_into(struct ring *r, void *out, int *shard) {
  if (check_consumer(r) != 0) return -1;
  int c = r->next_shard;
  for (uint32_t i = 0; i < r->nshards; i++) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->tail;  // ours alone
    if (committed_from(r, s, t, 1) == 1) {
      take(r, s, t, 1, out);
      if (shard) *shard = c;
      // Round-robin: the next poll starts at the next shard, so none starves.
      r->next_shard = c + 1 == (int)r->nshards ? 0 : c + 1;
#if CCACHE_SEEDED_BUG == 5  // test-only variant (ci/fuzz-teeth): CAS mode starves shards
      if (r->mode.mode == RSEQ_MODE_CAS) r->next_shard = 0;
#endif
      return RING_OK;
    }
    if (++c == (int)r->nshards) c = 0;
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

// Round-robin in chunks, a fair share per shard per pass so none starves; each visit
// takes a run of up to a chunk and publishes the shard's tail once.
static long poll_batch_into(struct ring *r, unsigned char *out, size_t max) {
  if (check_consumer(r) != 0) return -1;
  size_t got = 0;
  size_t chunk = max / (size_t)r->nshards + 1;
  int idle = 0;
  int c = r->next_shard;
  while (got < max && idle < (int)r->nshards) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->tail;
    size_t want = max - got < chunk ? max - got : chunk;
    size_t n = committed_from(r, s, t, want);
    if (n) {
      take(r, s, t, n, out + got * r->payload_size);
      got += n;
      idle = 0;
    } else {
      idle++;
    }
    if (++c == (int)r->nshards) c = 0;
  }
  r->next_shard = c;
  return (long)got;
}

long ring_poll_batch(struct ring *r, void **items, size_t max) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return -1;
  }
  return poll_batch_into(r, (unsigned char *)items, max);
}

long ring_poll_record_batch(struct ring *r, void *records, size_t max) {
  if (r->record_size == 0) {
    errno = EINVAL;
    return -1;
  }
  return poll_batch_into(r, records, max);
}

// ---------------------------------------------------------------------------------
// Statistics.

int ring_cpu_stats(const struct ring *r, int shard, struct ring_cpu_stats *out) {
  if (shard < 0 || shard >= (int)r->nshards) {
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
                       : r->record_size               ? "ring_offer_record"
                                                      : "ring_offer (ring_offer_batch for batches)";
  for (uint32_t c = 0; c < r->nshards; c++) {
    struct ring_shard *s = &r->shards[c];
    out->offer_commits += __atomic_load_n(&s->head, __ATOMIC_RELAXED) - r->initial;
    out->offer_aborts += atomic_load_explicit(&s->aborts, memory_order_relaxed);
    out->offer_retries += atomic_load_explicit(&s->retries, memory_order_relaxed);
  }
}
