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
// ring_offer's steps jump to each other (see offer_attempt). Where the compiler cannot
// promise a tail call (GCC before 15), they are plain calls: correct, with a stack
// that grows by a frame per retry, and the register saves back in the fast path.
#if defined(__has_attribute)
#if __has_attribute(musttail)
#define RING_MUSTTAIL __attribute__((musttail))
#endif
#endif
#ifndef RING_MUSTTAIL
#define RING_MUSTTAIL
#endif
// What the producers, the consumer and the published tail are kept apart by: two
// lines, since the L2 prefetchers of x86 cores fetch lines in aligned pairs, and one
// side's writes would keep taking the other side's line along with its own.
#define SEPARATE 128

// One shard per CPU (or mm_cid): four parts, SEPARATE bytes apart, so the producers of
// a CPU, the consumer and the statistics never write a line another of them reads on
// their fast paths. RSEQ mode: producers and consumer meet in the slots and in `head`, which the
// consumer reads only when its cached copy says the shard is empty; the producers read
// `tail` only when their cached `limit` says the shard is full. CAS mode: they meet in
// the slots (see ring.h).
struct ring_shard {
  // The producers' line. RSEQ: `head` is the first uncommitted position, stored by the
  // sections' commit (and by nothing else); `limit` is tail + capacity as some producer
  // last read it, never ahead of the true one: positions below it are free. CAS: `head`
  // is the position producers claim with a CAS; `limit` is unused. The sections read
  // the words below at the offsets that follow the struct; slots, mask, stride and
  // record_size are constant after creation.
  _Alignas(SEPARATE) uintptr_t head;
  unsigned char *slots;
  uintptr_t mask;         // slots - 1 (RSEQ: 2 x capacity - 1)
  uintptr_t stride;       // bytes from one slot to the next
  uintptr_t record_size;  // bytes per record (record rings; 8 for pointers)
  uintptr_t limit;
  // The consumer's line: its own, read and written by the consumer only.
  _Alignas(SEPARATE) uintptr_t ctail;  // the tail
  unsigned char *cslots;  // the consumer's copy of slots
  uintptr_t chead;        // RSEQ: the consumer's copy of head, reread when it runs out
  // The tail as the consumer publishes it (once per run of items), for the producers'
  // limit refresh and the statistics: on a line of its own, so that a producer reading
  // it never takes away a line the consumer reads.
  _Alignas(SEPARATE) uintptr_t tail;
  // Relaxed counters: statistics, bumped on the slow paths only.
  _Alignas(SEPARATE) _Atomic uint64_t full;
  _Atomic uint64_t aborts;
  _Atomic uint64_t retries;
};

// The offsets the sections' asm uses.
#define RING_OFF_HEAD "0"
#define RING_OFF_SLOTS "8"
#define RING_OFF_MASK "16"
#define RING_OFF_STRIDE "24"
#define RING_OFF_RECORD_SIZE "32"
#define RING_OFF_LIMIT "40"
_Static_assert(offsetof(struct ring_shard, head) == 0, "asm offsets");
_Static_assert(offsetof(struct ring_shard, slots) == 8, "asm offsets");
_Static_assert(offsetof(struct ring_shard, mask) == 16, "asm offsets");
_Static_assert(offsetof(struct ring_shard, stride) == 24, "asm offsets");
_Static_assert(offsetof(struct ring_shard, record_size) == 32, "asm offsets");
_Static_assert(offsetof(struct ring_shard, limit) == 40, "asm offsets");

struct ring {
  struct rseq_percpu_mode mode;
  long index_off;  // the index field's offset in the rseq area
  const char *why_cas;
  size_t capacity;  // items per shard
  size_t nslots;    // slots per shard (see ring_create)
  uintptr_t mask;   // nslots - 1
  size_t record_size;   // 0: pointer items
  size_t payload_size;  // bytes copied per item
  size_t stride;        // bytes per slot (CAS: seq, then the payload): a power of two
  unsigned stride_shift;  // log2(stride)
  size_t payload_off;   // the payload's offset in a slot: CAS 8 (after seq), RSEQ 0
  uint32_t nshards;
  uintptr_t initial;
  struct ring_shard *shards;
  // Consumer state, on a line of its own: the consumer writes next_shard on every
  // poll, and the fields above are read by every offer.
  _Alignas(SEPARATE) int next_shard;
  void *_Atomic consumer;  // the consumer thread's token, or NULL
};

// CAS mode: a slot is its sequence number, then the payload. For position p the
// slot's seq is
//   p             free for p (the consumer took p - capacity)
//   p + 1         committed: holds the item of p
//   p + capacity  taken by the consumer: free for p + capacity
// RSEQ mode: a slot is the payload alone. Positions [tail, head) are committed, the
// rest free; the head says so, not the slots, so an aborted section's stores past the
// head are never seen.
#define SEQ(slot) ((uintptr_t *)(slot))
#define PAYLOAD_OFF 8
static inline unsigned char *slot_at(const struct ring *r, unsigned char *slots, uintptr_t pos) {
  return slots + ((pos & r->mask) << r->stride_shift);
}

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
  struct ring *r = aligned_alloc(SEPARATE, sizeof *r);
  if (!r) return NULL;
  memset(r, 0, sizeof *r);
  r->mode = mode;
  r->index_off = rseq_index_offset(mode.index);
  r->why_cas = mode.mode == RSEQ_MODE_CAS ? why : "";
  r->capacity = capacity;
  r->record_size = o->record_size;
  r->payload_size = o->record_size ? o->record_size : sizeof(void *);
  // A power of two (8 to 128 bytes): no slot straddles two lines, so a producer and
  // the consumer share one line per slot at most. RSEQ slots have no seq: a pointer
  // ring packs 8 to a line.
  r->payload_off = mode.mode == RSEQ_MODE_CAS ? PAYLOAD_OFF : 0;
  r->stride = r->payload_off + ((r->payload_size + 7) & ~(size_t)7);
  if (r->stride <= CACHELINE)
    while (r->stride & (r->stride - 1)) r->stride += r->stride & -r->stride;
  else
    r->stride = 2 * CACHELINE;  // 8 + at most 64 bytes
  r->stride_shift = (unsigned)__builtin_ctzl(r->stride);
  // RSEQ: twice the capacity in slots. The shard is full at `capacity` items, as in
  // CAS mode, but a producer that fills it writes half a ring away from the slots the
  // consumer is reading, never into the same line: the consumer's slot lines are not
  // taken from under it when the producers are faster and the shard stays full.
  r->nslots = mode.mode == RSEQ_MODE_CAS ? capacity : 2 * capacity;
  r->mask = r->nslots - 1;
  r->nshards = (uint32_t)rseq_index_count(mode.index);
  r->initial = o->initial_position;
  r->shards = aligned_alloc(SEPARATE, sizeof *r->shards * r->nshards);
  if (!r->shards) {
    free(r);
    errno = ENOMEM;
    return NULL;
  }
  memset(r->shards, 0, sizeof *r->shards * r->nshards);
  for (uint32_t c = 0; c < r->nshards; c++) {
    struct ring_shard *s = &r->shards[c];
    s->head = s->tail = s->ctail = s->chead = r->initial;
    s->limit = r->initial + capacity;
    s->mask = r->mask;
    s->stride = r->stride;
    s->record_size = r->payload_size;
    size_t bytes = (r->nslots * r->stride + CACHELINE - 1) & ~(size_t)(CACHELINE - 1);
    s->slots = s->cslots = aligned_alloc(CACHELINE, bytes);
    if (!s->slots) {
      ring_destroy(r);
      errno = ENOMEM;
      return NULL;
    }
    memset(s->slots, 0, bytes);
    // CAS: every slot free for its first position.
    if (mode.mode == RSEQ_MODE_CAS)
      for (size_t k = 0; k < capacity; k++) *SEQ(slot_at(r, s->slots, r->initial + k)) = r->initial + k;
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
size_t ring_slot_bytes(const struct ring *r) { return r->stride; }

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
      uintptr_t seq = __atomic_load_n(SEQ(slot_at(r, s->slots, pos + k)), __ATOMIC_ACQUIRE);
      dif = (intptr_t)(seq - (pos + k));
#if CCACHE_SEEDED_BUG == 4  // test-only variant (ci/fuzz-teeth): one item too many
      if (k == 0 && dif == 1 - (intptr_t)r->capacity) dif = 0;  // claims the oldest unread item's slot
#endif
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
        __atomic_store_n(SEQ(slot), pos + i + 1, __ATOMIC_RELEASE);
      }
      return k;
    }
    atomic_fetch_add_explicit(&s->retries, 1, memory_order_relaxed);
  }
}

// ---------------------------------------------------------------------------------
// RSEQ-mode producers: a per-CPU buffer whose head only the sections move. Four
// sections, inlined at their one call site each (offer_attempt for ring_offer,
// ring_offer_record, offer_batch_rseq, offer_record_batch_rseq): an offer is one call
// with no locked instruction, and in the common case reads and writes only its CPU's
// producer line and the slots. Each:
//   if (cpu != current) abort;
//   h = s->head;  if (h - s->limit >= 0) goto cmpfail;    (full, as far as the cached
//                                                           limit knows)
//   [batches: k = min(n, s->limit - h)]
//   write the item(s) into slot h (.. h+k-1);             <- try-stores
//   s->head = h + k;                                      <- the commit (x86 keeps the
//                                                            stores in order: a release)
// The consumer reads head (acquire) and takes the slots below it, so nothing a section
// writes is visible before its commit, and an abort leaves head where it was: the
// retry (on this CPU or another) writes those slots again or not at all. cmpfail
// rereads the consumer's tail, stores limit = tail + capacity, and tells full from a
// stale limit. Injection points (inject variant): 1 right after the checks (in a
// batch section, before it takes the room it has from them), 2 right before the commit.
//
// Arguments: the thread's rseq area, its index field (&area->cpu_id or &area->mm_cid),
// the index (for the counting hooks), `cpu` (the value the caller read from that
// field) and the shard of `cpu`, which the caller computes from that same value: the
// section starts by comparing it with the field's current one, so the shard always
// belongs to the CPU the section runs on.

#define RING_SECTION_ARGS_ \
  struct rseq_abi *area, uint32_t *idx, enum rseq_index index, int cpu, struct ring_shard *s
// Arm, compare the CPU, load the head into h; cmpfail unless h is below the limit.
// Positions are free-running: the comparison is of the signed difference (they wrap).
// rax is left holding h - limit (negative): the batch sections take the room they
// have from it. The limit is loaded once per section: any thread may store a lower one
// meanwhile (offer_refresh_limit), and a second load could see it below h, which made
// limit - h a huge unsigned room, a run of n committed past the capacity, over unread
// items (until 2026-12-04; found by review, shown by //ring:stale_limit_test).
#define RING_ASM_START_(name)                                     \
  RSEQ_ASM_DEFINE_TABLE(name)                                     \
  RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)                       \
  RSEQ_ASM_START                                                  \
  "movq " RING_OFF_HEAD "(%[s]), %[h]\n\t"                        \
  "movq %[h], %%rax\n\t"                                          \
  "subq " RING_OFF_LIMIT "(%[s]), %%rax\n\t"                      \
  "jns %l[cmpfail]\n\t"
#define RING_ASM_COMMIT_                                          \
  RSEQ_INJECT_ASM(2)                                              \
  RSEQ_ASM_CMP_CPU_TWICE                                          \
  "movq %[h], " RING_OFF_HEAD "(%[s])\n\t" /* the commit */      \
  "2:\n\t"                                                        \
  RSEQ_ASM_DEFINE_ABORT
#define RING_ASM_INPUTS_ [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [s] "r"(s)
#define RING_ASM_CLOBBERS_ "memory", "cc", "rax" RSEQ_INJECT_CLOBBER : abort, cmpfail RSEQ_ASM_GOTO_ERROR_CPU
#define RING_SECTION_EXITS_(name)                                 \
  abort:                                                          \
  return RSEQ_ABORT; /* the caller counts it, on its slow path */ \
  cmpfail:                                                        \
  return rseq_section_cmpfailed_(id, &s->head);                   \
  RSEQ_ASM_ERROR_CPU_BLOCK(name, cpu)

// The slot of the position in %[a]: its address, into %[a].
#define RING_ASM_SLOT_                                            \
  "andq " RING_OFF_MASK "(%[s]), %[a]\n\t"                        \
  "imulq " RING_OFF_STRIDE "(%[s]), %[a]\n\t"                     \
  "addq " RING_OFF_SLOTS "(%[s]), %[a]\n\t"
// Copies the record at %[src] (the operand named) into the slot at %[a]: whole words,
// then the bytes left, so that the source is read within its record_size bytes only.
// Clobbers %[i] and rax.
#define RING_ASM_COPY_RECORD_(src)                                \
  "xorl %k[i], %k[i]\n\t"                                         \
  "81:\n\t" /* whole words */                                    \
  "leaq 8(%[i]), %%rax\n\t"                                       \
  "cmpq " RING_OFF_RECORD_SIZE "(%[s]), %%rax\n\t"                \
  "ja 82f\n\t"                                                    \
  "movq (%[" src "], %[i]), %%rax\n\t"                            \
  "movq %%rax, (%[a], %[i])\n\t" /* try-stores */                \
  "addq $8, %[i]\n\t"                                             \
  "jmp 81b\n\t"                                                   \
  "82:\n\t" /* the bytes left */                                 \
  "cmpq " RING_OFF_RECORD_SIZE "(%[s]), %[i]\n\t"                 \
  "jae 83f\n\t"                                                   \
  "movzbl (%[" src "], %[i]), %%eax\n\t"                          \
  "movb %%al, (%[a], %[i])\n\t"                                   \
  "incq %[i]\n\t"                                                 \
  "jmp 82b\n\t"                                                   \
  "83:\n\t"

// One pointer into slot h (8-byte slots: pointer rings in RSEQ mode have no seq).
static inline __attribute__((always_inline)) int offer_section(RING_SECTION_ARGS_, intptr_t item) {
  enum { id = RSEQ_SECTION_ID_ring_offer };
  unsigned long h;
  rseq_section_enter_(id, index, cpu, &s->head);
  // The slot's address in rax alone: few registers, so that ring_offer needs no saves.
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer")
               RSEQ_INJECT_ASM(1)
               "movq %[h], %%rax\n\t"
               "andq " RING_OFF_MASK "(%[s]), %%rax\n\t"
               "shlq $3, %%rax\n\t"
               "addq " RING_OFF_SLOTS "(%[s]), %%rax\n\t"
               "movq %[item], (%%rax)\n\t"                    /* the try-store */
               "incq %[h]\n\t"
               RING_ASM_COMMIT_
               : [h] "=&r"(h)
               : RING_ASM_INPUTS_, [item] "r"(item)
               : RING_ASM_CLOBBERS_);
  (void)h;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer)
}

// One record of record_size bytes into slot h: whole words, then the bytes left (the
// source is read within its record_size bytes only).
static inline __attribute__((always_inline)) int offer_record_section(RING_SECTION_ARGS_,
                                                                      const void *src) {
  enum { id = RSEQ_SECTION_ID_ring_offer_record };
  unsigned long h, a, i;
  rseq_section_enter_(id, index, cpu, &s->head);
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer_record")
               RSEQ_INJECT_ASM(1)
               "movq %[h], %[a]\n\t"                           /* slot h */
               RING_ASM_SLOT_
               RING_ASM_COPY_RECORD_("src")
               "incq %[h]\n\t"
               RING_ASM_COMMIT_
               : [h] "=&r"(h), [a] "=&r"(a), [i] "=&r"(i)
               : RING_ASM_INPUTS_, [src] "r"(src)
               : RING_ASM_CLOBBERS_);
  (void)h;
  (void)a;
  (void)i;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer_record)
}

// Up to n pointers (n >= 1) into slots h, h+1, ... with one commit: k = min(n,
// limit - h) of them. *offered = k: items[0 .. k) are committed, in order.
static inline __attribute__((always_inline)) int offer_batch_section(RING_SECTION_ARGS_,
                                                                     void *const *items,
                                                                     unsigned long n,
                                                                     unsigned long *offered) {
  enum { id = RSEQ_SECTION_ID_ring_offer_batch };
  unsigned long h, a, b, k, p;
  rseq_section_enter_(id, index, cpu, &s->head);
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer_batch")
               RSEQ_INJECT_ASM(1)
               "movq %%rax, %[k]\n\t"  /* k = min(n, limit - h): h - limit is in rax */
               "negq %[k]\n\t"
               "cmpq %[n], %[k]\n\t"
               "jbe 84f\n\t"
               "movq %[n], %[k]\n\t"
               "84:\n\t"
               "movq " RING_OFF_SLOTS "(%[s]), %[a]\n\t"
               "xorl %k[p], %k[p]\n\t"
               "85:\n\t"                                       /* slots h .. h+k-1 */
               "leaq (%[h], %[p]), %[b]\n\t"
               "andq " RING_OFF_MASK "(%[s]), %[b]\n\t"
               "movq (%[items], %[p], 8), %%rax\n\t"
               "movq %%rax, (%[a], %[b], 8)\n\t"               /* try-stores */
               "incq %[p]\n\t"
               "cmpq %[k], %[p]\n\t"
               "jb 85b\n\t"
               "addq %[k], %[h]\n\t"
               RING_ASM_COMMIT_
               : [h] "=&r"(h), [a] "=&r"(a), [b] "=&r"(b), [k] "=&r"(k), [p] "=&r"(p)
               : RING_ASM_INPUTS_, [items] "r"(items), [n] "r"(n)
               : RING_ASM_CLOBBERS_);
  (void)h;
  (void)a;
  (void)b;
  (void)p;
  *offered = k;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer_batch)
}

// Up to n records (n >= 1), back to back from `src` (record_size bytes each), into
// slots h, h+1, ... with one commit: k = min(n, limit - h) of them, each copied as in
// offer_record_section. *offered = k: records [0, k) are committed, in order. k and
// the source pointer are the asm's in-out operands, so that the section fits in the
// registers the frame pointer and the inject variant's delay loop leave.
static inline __attribute__((always_inline)) int offer_record_batch_section(
    RING_SECTION_ARGS_, const void *src, unsigned long n, unsigned long *offered) {
  enum { id = RSEQ_SECTION_ID_ring_offer_record_batch };
  unsigned long h, a, i, p, k = n;
  const unsigned char *from = src;
  rseq_section_enter_(id, index, cpu, &s->head);
  __asm__ __volatile__ goto(RING_ASM_START_("ring_offer_record_batch")
               RSEQ_INJECT_ASM(1)
               /* k = min(n, limit - h): h - limit is in rax, from the check */
               "negq %%rax\n\t"
               "cmpq %[k], %%rax\n\t"
               "jae 84f\n\t"
               "movq %%rax, %[k]\n\t"
               "84:\n\t"
               "xorl %k[p], %k[p]\n\t"
               "86:\n\t"                                       /* record p into slot h+p */
               "leaq (%[h], %[p]), %[a]\n\t"
               RING_ASM_SLOT_
               RING_ASM_COPY_RECORD_("from")
               "addq " RING_OFF_RECORD_SIZE "(%[s]), %[from]\n\t"
               "incq %[p]\n\t"
               "cmpq %[k], %[p]\n\t"
               "jb 86b\n\t"
               "addq %[k], %[h]\n\t"
               RING_ASM_COMMIT_
               : [h] "=&r"(h), [a] "=&r"(a), [i] "=&r"(i), [p] "=&r"(p), [k] "+&r"(k),
                 [from] "+&r"(from)
               : RING_ASM_INPUTS_
               : RING_ASM_CLOBBERS_);
  (void)h;
  (void)a;
  (void)i;
  (void)p;
  (void)from;
  *offered = k;
  return rseq_section_committed_(id, &s->head);
  RING_SECTION_EXITS_(ring_offer_record_batch)
}
// Where an offer's section runs: the thread's rseq area and the index it read there.
// Two words, returned in registers.
struct offer_where {
  struct rseq_abi *area;
  long cpu;
};

// The slow path of the index read: registers the thread, plays fake-CPU migrations.
// The section then runs with the index this read gave, as with the inline read.
__attribute__((noinline, cold)) static struct offer_where offer_no_index(const struct ring *r) {
  int cpu = rseq_current_index(r->mode.index);
  if (cpu < 0 || cpu >= (int)r->nshards) index_out_of_range(r, cpu);
  return (struct offer_where){rseq_thread_area(), cpu};
}

// The index for a section, read inline from the thread's rseq area: the index, with
// *area and *idx (the field it came from); -1 when the area cannot give it yet (then
// offer_no_index does).
static inline __attribute__((always_inline)) long offer_index_inline(const struct ring *r,
                                                                    struct rseq_abi **area,
                                                                    uint32_t **idx) {
  struct rseq_abi *a = rseq_tls_area_;
  if (__builtin_expect(a == NULL, 0)) return -1;
  uint32_t *f = rseq_index_field(a, r->index_off);
  // Relaxed: the kernel writes the field on return to user space; any current value
  // will do, since the section compares it again.
  uint32_t cpu = __atomic_load_n(f, __ATOMIC_RELAXED);
  if (__builtin_expect(cpu >= r->nshards, 0)) return -1;
  *area = a;
  *idx = f;
  return cpu;
}

// The index for a section, inline or by the slow path; *idx gets its field.
static inline __attribute__((always_inline)) struct offer_where offer_index(const struct ring *r,
                                                                           uint32_t **idx) {
  struct offer_where w;
  w.cpu = offer_index_inline(r, &w.area, idx);
  if (__builtin_expect(w.cpu >= 0, 1)) return w;
  w = offer_no_index(r);
  *idx = rseq_index_field(w.area, r->index_off);
  return w;
}

// The kernel aborted a section (preempted, migrated, signalled).
__attribute__((noinline, cold)) static void offer_aborted(struct ring_shard *s, int id) {
  rseq_count_aborted(id);
  atomic_fetch_add_explicit(&s->aborts, 1, memory_order_relaxed);
}

// A section found its CPU's shard full as far as the cached limit knows. Rereads the
// consumer's tail and stores the limit it gives: true when the offer should go again,
// false when the shard is full (counted). Any thread, any CPU: a limit stored here is
// some tail the consumer published, plus the capacity, so it is never ahead of the
// true one; a store that races another can only make it lower (more cmpfails, never
// an overwrite of an unread item).
__attribute__((noinline)) static bool offer_refresh_limit(const struct ring *r, struct ring_shard *s) {
  // Head first, then tail, so that a FULL answer held at the moment tail was read
  // (head can only have grown since). Acquire: keeps the tail load after this one (on
  // x86 no load passes an earlier load anyway: it costs nothing).
  uintptr_t h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
  // Acquire: pairs with the consumer's release of tail: its reads of the slots below
  // the new limit are done before our sections overwrite them.
  uintptr_t t = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
  // Relaxed: the limit is a producer-side cache of tail (see the struct).
  __atomic_store_n(&s->limit, t + r->capacity, __ATOMIC_RELAXED);
  if ((intptr_t)(h - t) >= (intptr_t)r->capacity) {  // t may be past h: signed
    atomic_fetch_add_explicit(&s->full, 1, memory_order_relaxed);
    return false;
  }
  atomic_fetch_add_explicit(&s->retries, 1, memory_order_relaxed);
  return true;
}

__attribute__((noinline, cold)) static int wrong_kind(void) {
  errno = EINVAL;
  return -1;
}

// The retry loop around one inlined section (a call site of its own in
// ring_offer_record and offer_batch_rseq; ring_offer is written out below, with tail
// calls): read the index, run `call` on that CPU's shard (area, idx, cpu and s are
// in scope for it); after a commit return `committed`; after an abort go again; when
// the section found the cached limit reached, refresh it and go again, or return
// `full`.
#define RING_OFFER_LOOP_(id, call, committed, full)                          \
  for (;;) {                                                                \
    uint32_t *idx;                                                          \
    struct offer_where w = offer_index(r, &idx);                            \
    struct rseq_abi *area = w.area;                                         \
    int cpu = (int)w.cpu;                                                   \
    struct ring_shard *s = &r->shards[cpu];                                 \
    int res = call;                                                         \
    if (__builtin_expect(res == RSEQ_COMMIT, 1)) return committed;          \
    if (res == RSEQ_ABORT)                                                  \
      offer_aborted(s, id);                                                 \
    else if (!offer_refresh_limit(r, s))                                    \
      return full;                                                          \
  }

// CAS mode's single offers, out of the RSEQ fast path's way (the item's address is
// taken here, not in ring_offer's frame).
__attribute__((noinline)) static int cas_offer_one(struct ring *r, const void *payload) {
  return cas_offer(r, payload, 1) ? RING_OK : RING_FULL;
}
__attribute__((noinline)) static int cas_offer_pointer(struct ring *r, void *item) {
  return cas_offer_one(r, &item);
}

// ring_offer: one attempt, and tail calls. The attempt (offer_attempt) and its slow
// paths are functions of one type that jump to each other (musttail: no stack grows,
// in any build with clang), so that the attempt calls nothing and keeps its values in scratch
// registers: no register saves, hence no stores but the section's own. A producer that
// does more stores per item than it needs falls behind the consumer (see the README's
// "where an offer's time goes"). What a slow path needs from the attempt, and the
// attempt from a slow path, goes in the two last arguments, never in memory: a signal
// handler that offers on the same thread between two of them changes nothing.
//   offer_attempt(r, item, area, cpu): the section with the index read inline, or with
//     the slow read's (area, cpu) when area is not NULL;
//   offer_retry(r, item, s, res): after an abort (res RSEQ_ABORT) or the limit running
//     out on shard s;
//   offer_slow_index(r, item, -, -): the index read's slow path (offer_no_index).
typedef int offer_step_fn(struct ring *r, void *item, void *p, long v);
static offer_step_fn offer_retry, offer_slow_index;

__attribute__((noinline)) static int offer_attempt(struct ring *r, void *item, void *p, long v) {
  struct rseq_abi *area = p;
  uint32_t *idx;
  int cpu;
  if (__builtin_expect(area != NULL, 0)) {  // the slow index read's
    cpu = (int)v;
    idx = rseq_index_field(area, r->index_off);
  } else {
    long c = offer_index_inline(r, &area, &idx);
    if (__builtin_expect(c < 0, 0)) {
      RING_MUSTTAIL return offer_slow_index(r, item, NULL, 0);
    }
    cpu = (int)c;
  }
  struct ring_shard *s = &r->shards[cpu];
  int res = offer_section(area, idx, r->mode.index, cpu, s, (intptr_t)item);
  if (__builtin_expect(res == RSEQ_COMMIT, 1)) return RING_OK;
  RING_MUSTTAIL return offer_retry(r, item, s, res);
}

__attribute__((noinline, cold)) static int offer_slow_index(struct ring *r, void *item, void *p,
                                                            long v) {
  (void)p;
  (void)v;
  struct offer_where w = offer_no_index(r);
  RING_MUSTTAIL return offer_attempt(r, item, w.area, w.cpu);
}

// Count the abort, or refresh the limit (FULL when the shard is full), and go again.
__attribute__((noinline)) static int offer_retry(struct ring *r, void *item, void *p, long v) {
  struct ring_shard *s = p;
  if (v == RSEQ_ABORT)
    offer_aborted(s, RSEQ_SECTION_ID_ring_offer);
  else if (!offer_refresh_limit(r, s))
    return RING_FULL;
  RING_MUSTTAIL return offer_attempt(r, item, NULL, 0);
}

int ring_offer(struct ring *r, void *item) {
  if (__builtin_expect(r->record_size != 0, 0)) return wrong_kind();
  if (r->mode.mode == RSEQ_MODE_CAS) return cas_offer_pointer(r, item);
  return offer_attempt(r, item, NULL, 0);  // a jump, where the compiler optimizes
}

int ring_offer_record(struct ring *r, const void *record) {
  if (__builtin_expect(r->record_size == 0, 0)) return wrong_kind();
  if (r->mode.mode == RSEQ_MODE_CAS) return cas_offer_one(r, record);
  RING_OFFER_LOOP_(RSEQ_SECTION_ID_ring_offer_record,
                   offer_record_section(area, idx, r->mode.index, cpu, s, record), RING_OK,
                   RING_FULL)
}

// A batch section writes at most this many slots: any preemption, migration or signal
// aborts a section and the retry starts over, so one that ran for longer than a
// scheduler slice might never commit. ring_offer_batch goes on with the rest.
#define RING_BATCH_MAX 64

// RSEQ mode: up to n items (n >= 1) in one section; 0 when the shard is full.
__attribute__((noinline)) static size_t offer_batch_rseq(struct ring *r, void *const *items,
                                                         size_t n) {
  unsigned long k;
  if (n > RING_BATCH_MAX) n = RING_BATCH_MAX;
  RING_OFFER_LOOP_(RSEQ_SECTION_ID_ring_offer_batch,
                   offer_batch_section(area, idx, r->mode.index, cpu, s, items, n, &k), k, 0)
}

// RSEQ mode: up to n records (n >= 1) in one section; 0 when the shard is full.
__attribute__((noinline)) static size_t offer_record_batch_rseq(struct ring *r,
                                                                const unsigned char *records,
                                                                size_t n) {
  unsigned long k;
  if (n > RING_BATCH_MAX) n = RING_BATCH_MAX;
  RING_OFFER_LOOP_(RSEQ_SECTION_ID_ring_offer_record_batch,
                   offer_record_batch_section(area, idx, r->mode.index, cpu, s, records, n, &k),
                   k, 0)
}

// Offers payloads [0, n) (payload_size bytes each, back to back) in runs: each call
// commits a run that fits in the shard of the CPU it runs on, until one finds the
// shard full.
static size_t offer_runs(struct ring *r, const unsigned char *payloads, size_t n) {
  size_t done = 0;
  while (done < n) {
    const unsigned char *from = payloads + done * r->payload_size;
    size_t k = r->mode.mode == RSEQ_MODE_CAS ? cas_offer(r, from, n - done)
               : r->record_size              ? offer_record_batch_rseq(r, from, n - done)
                                             : offer_batch_rseq(r, (void *const *)from, n - done);
    if (k == 0) break;  // full
    done += k;
  }
  return done;
}

size_t ring_offer_batch(struct ring *r, void *const *items, size_t n) {
  if (r->record_size != 0) {
    errno = EINVAL;
    return 0;
  }
  return offer_runs(r, (const unsigned char *)items, n);
}

size_t ring_offer_record_batch(struct ring *r, const void *records, size_t n) {
  if (r->record_size == 0) {
    errno = EINVAL;
    return 0;
  }
  return offer_runs(r, records, n);
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

// RSEQ mode: how many committed items shard s holds from position t (its tail) on, at
// most `max`: those below the head. The consumer's copy of the head is reread only
// when it does not cover `max` items.
static inline __attribute__((always_inline)) size_t committed_rseq(struct ring_shard *s,
                                                                   uintptr_t t, size_t max) {
  uintptr_t n = s->chead - t;  // ours alone
  if (n < max) {
    // Acquire: pairs with the sections' commit of head (a store in asm: a release on
    // x86, which TSan cannot see: the producer released s->head before its section and
    // we acquire it below); the slots below it are written.
    uintptr_t h = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
    n = h - t;
    if (n) {  // else h == t == chead already: no store on an empty shard's visit
      s->chead = h;
      CCACHE_TSAN_ACQUIRE(&s->head);
    }
  }
  return n < max ? n : max;
}

// How many committed items shard s holds from position t (its tail) on, at most
// `max`. RSEQ: committed_rseq. CAS: the slots in order while their seq says committed.
static inline size_t committed_from(const struct ring *r, struct ring_shard *s, uintptr_t t,
                                    size_t max) {
  if (r->mode.mode != RSEQ_MODE_CAS) return committed_rseq(s, t, max);
  size_t n = 0;
  // Acquire: pairs with the producer's release of seq; the payload is written.
  while (n < max && __atomic_load_n(SEQ(slot_at(r, s->cslots, t + n)), __ATOMIC_ACQUIRE) == t + n + 1)
    n++;
  return n;
}

// Take n committed items from shard s, starting at its tail, into out (payload_size
// each), and publish the new tail once. CAS: each slot is freed for the next lap with
// its seq; RSEQ: the tail alone frees them (producers read it when their limit runs
// out). The mode and the payload kind are chosen once per run: an RSEQ pointer ring's
// slots are bare pointers, copied with one masked load and store each.
static inline void take(struct ring *r, struct ring_shard *s, uintptr_t t, size_t n,
                        unsigned char *out) {
  if (r->mode.mode != RSEQ_MODE_CAS && r->record_size == 0) {
    void **slots = (void **)s->cslots, **items = (void **)out;
    uintptr_t mask = r->mask;
    for (size_t k = 0; k < n; k++) items[k] = slots[(t + k) & mask];
  } else {
    for (size_t k = 0; k < n; k++) {
      unsigned char *slot = slot_at(r, s->cslots, t + k);
      if (r->record_size == 0)
        ((void **)out)[k] = *(void **)(slot + r->payload_off);
      else
        memcpy(out + k * r->payload_size, slot + r->payload_off, r->payload_size);
      // Release: we are done reading the payload before a producer may reuse the slot.
      if (r->mode.mode == RSEQ_MODE_CAS) __atomic_store_n(SEQ(slot), t + k + r->capacity, __ATOMIC_RELEASE);
    }
  }
  // Release: pairs with the acquire of tail by the producers' limit refresh (RSEQ: our
  // reads of these slots are done before they are overwritten) and by the statistics.
  s->ctail = t + n;
  __atomic_store_n(&s->tail, t + n, __ATOMIC_RELEASE);
}

static int poll_into(struct ring *r, void *out, int *shard) {
  if (check_consumer(r) != 0) return -1;
  int c = r->next_shard;
  for (uint32_t i = 0; i < r->nshards; i++) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->ctail;  // ours alone
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

// RSEQ mode, one pointer: poll_into's walk with nothing else in it (no record copy,
// no call), so the consumer's loop does few stores besides the item, its tail and its
// cursor.
static inline __attribute__((always_inline)) int poll_rseq_pointer(struct ring *r, void **item) {
  uint32_t n = r->nshards, c = (uint32_t)r->next_shard;
  for (uint32_t i = 0; i < n; i++) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->ctail;  // ours alone
    if (!committed_rseq(s, t, 1)) {
      if (++c == n) c = 0;
      continue;
    }
    *item = ((void **)s->cslots)[t & r->mask];  // RSEQ pointer slots: 8 bytes, no seq
    s->ctail = t + 1;
    // Release: as take()'s publication of tail.
    __atomic_store_n(&s->tail, t + 1, __ATOMIC_RELEASE);
    r->next_shard = c + 1 == n ? 0 : (int)(c + 1);  // round-robin, as poll_into
    return RING_OK;
  }
  return RING_EMPTY;
}

int ring_poll(struct ring *r, void **item) {
  if (r->record_size != 0) return wrong_kind();
  if (r->mode.mode == RSEQ_MODE_CAS) return poll_into(r, item, NULL);
  if (check_consumer(r) != 0) return -1;
  return poll_rseq_pointer(r, item);
}

int ring_poll_shard(struct ring *r, void **item, int *shard) {
  if (r->record_size != 0) return wrong_kind();
  return poll_into(r, item, shard);
}

int ring_poll_record(struct ring *r, void *record) {
  if (r->record_size == 0) return wrong_kind();
  return poll_into(r, record, NULL);
}

// Round-robin in chunks: each visit takes a run of up to a chunk and publishes the
// shard's tail once, and the next call starts at the shard after the last one visited,
// so none starves across calls (within one call, a share of max / shards + 1 each when
// that is the larger). A chunk is at least
// RING_POLL_RUN_MIN items (a line of pointer slots): with a share of max / shards + 1
// alone, a batch of 16 on a 16-CPU machine took 2 items per visit, and paid a head
// read, a slot line and a tail publication for every 2 (see the README's 16-CPU table).
static long poll_batch_into(struct ring *r, unsigned char *out, size_t max) {
  if (check_consumer(r) != 0) return -1;
  size_t got = 0;
  size_t chunk = max / (size_t)r->nshards + 1;
  if (chunk < RING_POLL_RUN_MIN) chunk = RING_POLL_RUN_MIN;
  int idle = 0;
  int c = r->next_shard;
  while (got < max && idle < (int)r->nshards) {
    struct ring_shard *s = &r->shards[c];
    uintptr_t t = s->ctail;  // ours alone
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
  if (r->record_size != 0) return wrong_kind();
  return poll_batch_into(r, (unsigned char *)items, max);
}

long ring_poll_record_batch(struct ring *r, void *records, size_t max) {
  if (r->record_size == 0) return wrong_kind();
  return poll_batch_into(r, records, max);
}

int ring_debug_plant_leftovers(struct ring *r, int shard, size_t n, uintptr_t value) {
  if (r->mode.mode != RSEQ_MODE_RSEQ || shard < 0 || shard >= (int)r->nshards) {
    errno = EINVAL;
    return -1;
  }
  struct ring_shard *s = &r->shards[shard];
  // Relaxed: tests only, while no producer offers into this shard.
  uintptr_t h = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
  // Acquire: pairs with the consumer's release of tail.
  uintptr_t t = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
  if (n >= r->capacity - (h - t)) {  // h - t <= capacity; room for one offer after them
    errno = EINVAL;
    return -1;
  }
  // What an aborted section leaves: its try-stores into the slots from the head on,
  // and no commit. A record gets the bytes of `value` over and over, record_size of them.
  unsigned char rec[RING_RECORD_MAX];
  for (size_t b = 0; b < r->payload_size; b++) rec[b] = (unsigned char)(value >> (8 * (b % 8)));
  for (size_t k = 0; k < n; k++)
    memcpy(slot_at(r, s->slots, h + k) + r->payload_off, rec, r->payload_size);
  return 0;
}

int ring_debug_store_stale_limit(struct ring *r, int shard, uint64_t polled_before) {
  if (r->mode.mode != RSEQ_MODE_RSEQ || shard < 0 || shard >= (int)r->nshards) {
    errno = EINVAL;
    return -1;
  }
  struct ring_shard *s = &r->shards[shard];
  uintptr_t stale = r->initial + (uintptr_t)polled_before;
  // Acquire: pairs with the consumer's release of tail, as offer_refresh_limit's load.
  uintptr_t t = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
  if ((intptr_t)(t - stale) < 0) {  // not a tail the consumer ever published
    errno = EINVAL;
    return -1;
  }
  // Relaxed: as offer_refresh_limit's store, delayed after its load of tail.
  __atomic_store_n(&s->limit, stale + r->capacity, __ATOMIC_RELAXED);
  return 0;
}

// ---------------------------------------------------------------------------------
// Statistics.

// The committed position count of a shard: RSEQ mode, the head; CAS mode, the claimed
// positions.
static uintptr_t offered_until(struct ring_shard *s) {
  // Relaxed: statistics; positions count every commit since creation.
  return __atomic_load_n(&s->head, __ATOMIC_RELAXED);
}

int ring_cpu_stats(const struct ring *r, int shard, struct ring_cpu_stats *out) {
  if (shard < 0 || shard >= (int)r->nshards) {
    errno = EINVAL;
    return -1;
  }
  struct ring_shard *s = &r->shards[shard];
  // Relaxed: statistics. Tail first: an item polled in between then counts as offered
  // but not yet polled, never the other way round.
  out->polled = __atomic_load_n(&s->tail, __ATOMIC_RELAXED) - r->initial;
  out->offered = offered_until(s) - r->initial;
  out->full = atomic_load_explicit(&s->full, memory_order_relaxed);
  return 0;
}

void ring_stats(const struct ring *r, struct ring_stats *out) {
  memset(out, 0, sizeof *out);
  out->offer_section = r->mode.mode == RSEQ_MODE_CAS ? "(cas: no section)"
                       : r->record_size ? "ring_offer_record (ring_offer_record_batch for batches)"
                                        : "ring_offer (ring_offer_batch for batches)";
  for (uint32_t c = 0; c < r->nshards; c++) {
    struct ring_shard *s = &r->shards[c];
    out->offer_commits += offered_until(s) - r->initial;
    out->offer_aborts += atomic_load_explicit(&s->aborts, memory_order_relaxed);
    out->offer_retries += atomic_load_explicit(&s->retries, memory_order_relaxed);
  }
}
