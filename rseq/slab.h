// slab.h: per-CPU slabs of pointers, the layout of the allocator's CPU caches, and the
// four critical sections that push and pop them, written to be inlined where they are
// used (tcmalloc's percpu slab technique).
//
// Layout: one region per CPU (or mm_cid), RSEQ_SLAB_BYTES apart from `regions`.
//
//   region + 0     two words the sections never touch (the allocator keeps its miss
//                  count there)
//   region + 16    header of class 0, class 1, ... (8 bytes each):
//                    u32 cur    first free slot (a word index from the region start)
//                    u16 begin  the class's first slot: the stack is empty at cur == begin
//                    u16 end    one past its last slot: the stack is full at cur == end
//                  cur is 32 bits, loaded and stored whole: x86 cores forward a 32- or
//                  64-bit store to the next load of it at once (Zen 4 renames it),
//                  where a 16-bit one costs about 8 cycles per malloc+free pair.
//   slots          8-byte items; class k holds words [begin_k, end_k) and its cached
//                  items are [begin_k, cur_k), the top at cur_k - 1.
//
// cur is the only word a section commits; begin and end are only read by sections.
// Pops fail when cur <= begin, pushes when cur >= end. A remote drainer stops a class
// by storing begin = 0xffff, end = 0 (RSEQ_SLAB_STOPPED; then every section of that
// class fails without a store) and fences the CPU (membarrier RSEQ): after the fence no
// section that read the old bounds is still running, and cur is the drainer's. It
// puts cur back to begin first, then the bounds. Folding the stop into the bounds
// check costs the sections nothing: no separate flag to load and test.
//
// Every section loads the bound it checks BEFORE it loads cur. The drainer stores cur
// before it puts the bounds back, and x86 keeps both the stores and the loads in
// order, so a section that sees the restored bounds sees the drainer's cur too. The
// other order (cur, then the bound) lets a section that starts right after the fence
// read the old cur and the restored bound, and pop a block the drainer already took.
// (The cur and bounds halves of the header are separate loads: one 64-bit load of
// both would defeat the store forwarding of the 32-bit cur.) Injection point 3 sits
// between the two loads: allocator/drain_fence_test drains while sections wait there.
//
// Injection points (inject variant): 1 after the checks, 2 right before the commit,
// 3 between the bound's load and cur's.
//
// Inlining: each RSEQ_SLAB_DEFINE_* expands to a static always-inline function that
// holds one asm statement: a section with its own descriptor (__rseq_cs), pointer
// (__rseq_cs_ptr_array), exit points, abort handler (__rseq_failure, after the
// signature) and registry entry, under the name and id given (rseq_internal.h lists
// them). Call each function from exactly one place, in a function that is not itself
// inlined twice: one call site, one section.
//
// Arguments: the thread's rseq area, its index field (&area->cpu_id or &area->mm_cid,
// rseq_index_field()), the index (for the counting hooks), `cpu` (the value the caller
// read from that field), the region of `cpu` and the class. The per-CPU pointer
// `region` is computed by the caller from `cpu`; the section starts by comparing that
// same value with the field's current one, so the region always belongs to the CPU
// the section runs on.
#ifndef CCACHE_RSEQ_SLAB_H_
#define CCACHE_RSEQ_SLAB_H_

#include <stdint.h>

#include "rseq/rseq.h"
#include "rseq/rseq_asm.h"

#define RSEQ_SLAB_SHIFT 17
#define RSEQ_SLAB_BYTES ((size_t)1 << RSEQ_SLAB_SHIFT)
#define RSEQ_SLAB_HEADERS_OFF 16  // byte offset of class 0's header
// Slot indexes are u16 words: a region holds at most 2^16 words (512 KiB).
_Static_assert(RSEQ_SLAB_BYTES / 8 <= 65536, "slab slot index must fit 16 bits");

struct rseq_slab_header {
  uint32_t cur;
  uint16_t begin, end;
};

// The bounds word (begin | end << 16) of a stopped class.
#define RSEQ_SLAB_STOPPED 0x0000ffffu

static inline uint32_t *rseq_slab_bounds(struct rseq_slab_header *h) {
  return (uint32_t *)&h->begin;
}

static inline struct rseq_slab_header *rseq_slab_header(char *region, unsigned long cls) {
  return (struct rseq_slab_header *)(region + RSEQ_SLAB_HEADERS_OFF) + cls;
}


// The C around each asm statement (see rseq_asm.h): counters and TSan edges in the
// counting variants, nothing in the release build. An abort returns RSEQ_ABORT
// uncounted: the caller counts it with RSEQ_SLAB_COUNT_ABORT(name) (in C, after the
// asm, in every variant), on its slow path, so that the fast path makes no call.
#define RSEQ_SLAB_COUNT_ABORT(name) rseq_count_aborted(RSEQ_SECTION_ID_##name)

// The single-item sections keep their scratch values in r10 and r11 (see the pop).
// The inject variant's delay loops use r10 themselves: there the compiler chooses.
#ifdef RSEQ_INJECT
#define RSEQ_SLAB_REG_(r)
#else
#define RSEQ_SLAB_REG_(r) __asm__(r)
#endif

#define RSEQ_SLAB_ENTER_(id, index, cpu, region, cls) \
  rseq_section_enter_((id), (index), (cpu), rseq_slab_header((region), (cls)))

// The pieces every slab section shares: its tables and start (the descriptor, pointer,
// registry entry and name; the exit to cmpfail; arm, then compare the CPU), its end
// (compare twice in the debug variants, the commit of cur, the abort handler), its
// clobbers and exits, and the C after it.
#define RSEQ_SLAB_ASM_START_(name)                \
  RSEQ_ASM_DEFINE_TABLE(#name)                    \
  RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)       \
  RSEQ_ASM_START
#define RSEQ_SLAB_ASM_COMMIT_                                       \
  RSEQ_ASM_CMP_CPU_TWICE                                            \
  "movl %k[cur], 16(%[region], %[cls], 8)\n\t" /* the commit */   \
  "2:\n\t"                                                        \
  RSEQ_ASM_DEFINE_ABORT
#define RSEQ_SLAB_CLOBBERS_ "memory", "cc", "rax" RSEQ_INJECT_CLOBBER : abort, cmpfail RSEQ_ASM_GOTO_ERROR_CPU
#define RSEQ_SLAB_EXITS_(name)                                                             \
  abort:                                                                                   \
  return RSEQ_ABORT; /* the caller counts it: RSEQ_SLAB_COUNT_ABORT, on its slow path */   \
  cmpfail:                                                                                 \
  return rseq_section_cmpfailed_(id, rseq_slab_header(region, cls));                       \
  RSEQ_ASM_ERROR_CPU_BLOCK(name, cpu) /* compare-twice variants only */

// --------------------------------------------------------------------------------
// Pop one item.
//   if (cpu != current) abort;
//   n = h->cur;  if (n <= h->begin) goto cmpfail;       (empty, or stopped)
//   item = slots[n - 1];                                 (a register: repeatable)
//   h->cur = n - 1;                                      <- commit (32-bit store)
// Abort leaves the slab unchanged. Returns RSEQ_COMMIT (*out set), RSEQ_CMPFAIL
// (empty or stopped) or RSEQ_ABORT.
#define RSEQ_SLAB_DEFINE_POP(fn, name)                                                        \
  static inline __attribute__((always_inline)) int fn(                                       \
      struct rseq_abi *area, uint32_t *idx, enum rseq_index index, int cpu, char *region,    \
      unsigned long cls,                                                                      \
      intptr_t *out) {                                                                        \
    enum { id = RSEQ_SECTION_ID_##name };                                                     \
    /* r10, r11: scratch registers no argument arrives in, so the caller's values */        \
    /* stay where they are and the fast path needs no callee-saved register. */               \
    register intptr_t item RSEQ_SLAB_REG_("r11");                                             \
    register unsigned long cur RSEQ_SLAB_REG_("r10");                                         \
    RSEQ_SLAB_ENTER_(id, index, cpu, region, cls);                                            \
    __asm__ goto(RSEQ_SLAB_ASM_START_(name)                                                   \
                 "movzwl 20(%[region], %[cls], 8), %%eax\n\t" /* begin, then cur */           \
                 RSEQ_INJECT_ASM(3)                                                           \
                 "movl 16(%[region], %[cls], 8), %k[cur]\n\t"                               \
                 "cmpl %%eax, %k[cur]\n\t"                                                     \
                 "jbe %l[cmpfail]\n\t"                                                         \
                 RSEQ_INJECT_ASM(1)                                                           \
                 "movq -8(%[region], %[cur], 8), %[item]\n\t"                                 \
                 "decl %k[cur]\n\t"                                                           \
                 RSEQ_INJECT_ASM(2)                                                           \
                 RSEQ_SLAB_ASM_COMMIT_                                                        \
                 : [item] "=&r"(item), [cur] "=&r"(cur)                                       \
                 : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area),            \
                   [region] "r"(region), [cls] "r"(cls)                                       \
                 : RSEQ_SLAB_CLOBBERS_);                                                      \
    *out = item;                                                                              \
    return rseq_section_committed_(id, rseq_slab_header(region, cls));                        \
  RSEQ_SLAB_EXITS_(name)                                                                      \
  }

// --------------------------------------------------------------------------------
// Push one item.
//   if (cpu != current) abort;
//   n = h->cur;  if (n >= h->end) goto cmpfail;         (full, or stopped)
//   slots[n] = item;            <- try-store above the top: invisible until the commit
//   h->cur = n + 1;             <- commit (x86 keeps the two stores in order)
// Abort leaves the slab unchanged (slots[n] is above the top).
#define RSEQ_SLAB_DEFINE_PUSH(fn, name)                                                       \
  static inline __attribute__((always_inline)) int fn(                                       \
      struct rseq_abi *area, uint32_t *idx, enum rseq_index index, int cpu, char *region,    \
      unsigned long cls,                                                                      \
      intptr_t item) {                                                                        \
    enum { id = RSEQ_SECTION_ID_##name };                                                     \
    register unsigned long cur RSEQ_SLAB_REG_("r10"); /* as in the pop */                     \
    RSEQ_SLAB_ENTER_(id, index, cpu, region, cls);                                            \
    __asm__ goto(RSEQ_SLAB_ASM_START_(name)                                                   \
                 "movzwl 22(%[region], %[cls], 8), %%eax\n\t" /* end, then cur */             \
                 RSEQ_INJECT_ASM(3)                                                           \
                 "movl 16(%[region], %[cls], 8), %k[cur]\n\t"                               \
                 "cmpl %%eax, %k[cur]\n\t"                                                     \
                 "jae %l[cmpfail]\n\t"                                                         \
                 RSEQ_INJECT_ASM(1)                                                           \
                 "movq %[item], (%[region], %[cur], 8)\n\t"                                   \
                 "incl %k[cur]\n\t"                                                           \
                 RSEQ_INJECT_ASM(2)                                                           \
                 RSEQ_SLAB_ASM_COMMIT_                                                        \
                 : [cur] "=&r"(cur)                                                           \
                 : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area),            \
                   [region] "r"(region), [cls] "r"(cls), [item] "r"(item)                     \
                 : RSEQ_SLAB_CLOBBERS_);                                                      \
    return rseq_section_committed_(id, rseq_slab_header(region, cls));                        \
  RSEQ_SLAB_EXITS_(name)                                                                      \
  }

// --------------------------------------------------------------------------------
// Push up to n items (n >= 1) in one section.
//   if (cpu != current) abort;
//   n0 = h->cur;  k = h->end - n0;  if (k <= 0) goto cmpfail;   (full, or stopped)
//   k = min(k, n);
//   slots[n0 .. n0 + k) = items[0 .. k);     <- try-stores above the top: repeatable
//   h->cur = n0 + k;                          <- commit
// *pushed = k (items[0 .. k) are in the slab, items[0] lowest; the rest are not).
// Abort leaves the slab unchanged.
#define RSEQ_SLAB_DEFINE_PUSH_BATCH(fn, name)                                                 \
  static inline __attribute__((always_inline)) int fn(                                       \
      struct rseq_abi *area, uint32_t *idx, enum rseq_index index, int cpu, char *region,    \
      unsigned long cls,                                                                      \
      const intptr_t *items, unsigned long n, unsigned long *pushed) {                        \
    enum { id = RSEQ_SECTION_ID_##name };                                                     \
    unsigned long cur, k, i;                                                                  \
    intptr_t *dst;                                                                            \
    RSEQ_SLAB_ENTER_(id, index, cpu, region, cls);                                            \
    __asm__ goto(RSEQ_SLAB_ASM_START_(name)                                                   \
                 "movzwl 22(%[region], %[cls], 8), %k[k]\n\t" /* end, then cur */             \
                 RSEQ_INJECT_ASM(3)                                                           \
                 "movl 16(%[region], %[cls], 8), %k[cur]\n\t"                               \
                 "subl %k[cur], %k[k]\n\t"                                                    \
                 "jle %l[cmpfail]\n\t"                                                         \
                 "cmpq %[n], %[k]\n\t"                                                        \
                 "cmovaq %[n], %[k]\n\t"                                                      \
                 RSEQ_INJECT_ASM(1)                                                           \
                 "leaq (%[region], %[cur], 8), %[dst]\n\t"                                    \
                 "movq %[k], %[i]\n\t"                                                        \
                 "81:\n\t"                                                                    \
                 "movq -8(%[items], %[i], 8), %%rax\n\t"                                      \
                 "movq %%rax, -8(%[dst], %[i], 8)\n\t"                                        \
                 "decq %[i]\n\t"                                                              \
                 "jnz 81b\n\t"                                                                \
                 "addl %k[k], %k[cur]\n\t"                                                    \
                 RSEQ_INJECT_ASM(2)                                                           \
                 RSEQ_SLAB_ASM_COMMIT_                                                        \
                 : [cur] "=&r"(cur), [k] "=&r"(k), [i] "=&r"(i), [dst] "=&r"(dst)             \
                 : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area),            \
                   [region] "r"(region), [cls] "r"(cls), [items] "r"(items), [n] "r"(n)       \
                 : RSEQ_SLAB_CLOBBERS_);                                                      \
    (void)i;                                                                                  \
    (void)dst;                                                                                \
    *pushed = k;                                                                              \
    return rseq_section_committed_(id, rseq_slab_header(region, cls));                        \
  RSEQ_SLAB_EXITS_(name)                                                                      \
  }

// --------------------------------------------------------------------------------
// Pop up to n items (n >= 1) in one section.
//   if (cpu != current) abort;
//   n0 = h->cur;  k = n0 - h->begin;  if (k <= 0) goto cmpfail; (empty, or stopped)
//   k = min(k, n);
//   out[0 .. k) = slots[n0 - k .. n0);        <- the caller's buffer: repeatable
//   h->cur = n0 - k;                          <- commit
// *popped = k; out[k - 1] was the top. Abort leaves the slab unchanged (out may hold
// copies, which the caller ignores).
#define RSEQ_SLAB_DEFINE_POP_BATCH(fn, name)                                                  \
  static inline __attribute__((always_inline)) int fn(                                       \
      struct rseq_abi *area, uint32_t *idx, enum rseq_index index, int cpu, char *region,    \
      unsigned long cls,                                                                      \
      intptr_t *out, unsigned long n, unsigned long *popped) {                                \
    enum { id = RSEQ_SECTION_ID_##name };                                                     \
    unsigned long cur, k, i;                                                                  \
    intptr_t *src;                                                                            \
    RSEQ_SLAB_ENTER_(id, index, cpu, region, cls);                                            \
    __asm__ goto(RSEQ_SLAB_ASM_START_(name)                                                   \
                 "movzwl 20(%[region], %[cls], 8), %k[k]\n\t" /* begin, then cur */           \
                 RSEQ_INJECT_ASM(3)                                                           \
                 "movl 16(%[region], %[cls], 8), %k[cur]\n\t"                               \
                 "negl %k[k]\n\t"                                                             \
                 "addl %k[cur], %k[k]\n\t"                                                    \
                 "jle %l[cmpfail]\n\t"                                                         \
                 "cmpq %[n], %[k]\n\t"                                                        \
                 "cmovaq %[n], %[k]\n\t"                                                      \
                 RSEQ_INJECT_ASM(1)                                                           \
                 "subl %k[k], %k[cur]\n\t"                                                    \
                 "leaq (%[region], %[cur], 8), %[src]\n\t"                                    \
                 "movq %[k], %[i]\n\t"                                                        \
                 "81:\n\t"                                                                    \
                 "movq -8(%[src], %[i], 8), %%rax\n\t"                                        \
                 "movq %%rax, -8(%[out], %[i], 8)\n\t"                                        \
                 "decq %[i]\n\t"                                                              \
                 "jnz 81b\n\t"                                                                \
                 RSEQ_INJECT_ASM(2)                                                           \
                 RSEQ_SLAB_ASM_COMMIT_                                                        \
                 : [cur] "=&r"(cur), [k] "=&r"(k), [i] "=&r"(i), [src] "=&r"(src)             \
                 : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area),            \
                   [region] "r"(region), [cls] "r"(cls), [out] "r"(out), [n] "r"(n)           \
                 : RSEQ_SLAB_CLOBBERS_);                                                      \
    (void)i;                                                                                  \
    (void)src;                                                                                \
    CCACHE_MSAN_UNPOISON(out, k * sizeof *out); /* written by the asm */                      \
    *popped = k;                                                                              \
    return rseq_section_committed_(id, rseq_slab_header(region, cls));                        \
  RSEQ_SLAB_EXITS_(name)                                                                      \
  }

#endif  // CCACHE_RSEQ_SLAB_H_
