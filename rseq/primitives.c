// primitives.c: the x86-64 critical sections and their CAS-mode twins.
//
// The discipline (DESIGN.md, decision 4), for every section below:
//   - inline asm; the descriptor in __rseq_cs (32-byte aligned), a pointer to it in
//     __rseq_cs_ptr_array, every jump out of the section in __rseq_exit_point_array,
//     the abort handler in __rseq_failure right after the signature (0f b9 3d + sig);
//   - the first instruction inside compares the CPU (or mm_cid) the caller computed its
//     per-CPU pointers for with the one in the rseq area, and aborts on mismatch;
//   - exactly one committing store, the last instruction; everything before it only
//     reads, or writes memory that is private until the commit, so it can be repeated;
//   - no calls, no syscalls, no stack pushes inside;
//   - a stable name and id in the rseq_registry section;
//   - counters incremented in C, after the asm, never inside.
// Every section function is noinline so each section exists exactly once in a binary:
// the registry then has one entry per name, and abortscan one range per section.
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rseq/rseq.h"
#include "rseq/rseq_internal.h"
#include "sanitizers/sanitizers.h"

#if !defined(__x86_64__)
#error "rseq/primitives.c: only x86-64 critical sections are implemented"
#endif

#include "rseq/rseq_asm.h"

#define before_section(id, index, cpu, v) rseq_section_enter_(id, index, cpu, v)
#define after_commit(id, v) rseq_section_committed_(id, v)
#define after_cmpfail(id, v) rseq_section_cmpfailed_(id, v)
#define after_abort(id) rseq_section_aborted_(id)
#define compare_twice_failed(section, what, cpu) rseq_compare_twice_failed_(section, what, cpu)

void rseq_compare_twice_failed_(const char *section, const char *what, int cpu) {
  fprintf(stderr,
          "rseq compare-twice: section %s: %s changed inside the section on cpu %d before the "
          "commit, and the kernel did not abort it\n",
          section, what, cpu);
  abort();
}

__attribute__((noreturn, cold)) static void no_area(const char *section) {
  fprintf(stderr, "rseq: %s called in a thread without an rseq area (%s)\n", section,
          rseq_unavailable_reason());
  abort();
}

static inline struct rseq_abi *area_or_die(const char *section) {
  struct rseq_abi *a = rseq_thread_area();
  if (__builtin_expect(a == NULL, 0)) no_area(section);
  return a;
}

static inline uint32_t *index_field(struct rseq_abi *a, enum rseq_index index) {
  return index == RSEQ_INDEX_MM_CID ? &a->mm_cid : &a->cpu_id;
}

// ---------------------------------------------------------------------------------
// rseq_addv
//   if (cpu != current) abort;
//   *v += count;                 <- commit (a single read-modify-write instruction)
// Abort leaves *v unchanged.

RSEQ_NOINLINE int rseq_addv(enum rseq_index index, intptr_t *v, intptr_t count, int cpu) {
  enum { id = 0 };
  struct rseq_abi *area = area_or_die("rseq_addv");
  uint32_t *idx = index_field(area, index);
  before_section(id, index, cpu, v);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_addv")
               RSEQ_ASM_START
               RSEQ_INJECT_ASM(1)
               RSEQ_ASM_CMP_CPU_TWICE
               "addq %[count], (%[v])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [count] "r"(count)
               : "memory", "cc", "rax" RSEQ_INJECT_CLOBBER
               : abort, error_cpu);
  return after_commit(id, v);
abort:
  return after_abort(id);
error_cpu:
  compare_twice_failed("rseq_addv", "the cpu", cpu);
}

// ---------------------------------------------------------------------------------
// rseq_cmpeqv_storev
//   if (cpu != current) abort;
//   if (*v != expect) goto cmpfail;
//   *v = newv;                   <- commit
// Abort leaves *v unchanged.

RSEQ_NOINLINE int rseq_cmpeqv_storev(enum rseq_index index, intptr_t *v, intptr_t expect,
                                     intptr_t newv, int cpu) {
  enum { id = 1 };
  struct rseq_abi *area = area_or_die("rseq_cmpeqv_storev");
  uint32_t *idx = index_field(area, index);
  before_section(id, index, cpu, v);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_cmpeqv_storev")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               RSEQ_INJECT_ASM(1)
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"
               RSEQ_INJECT_ASM(2)
               RSEQ_ASM_CMP_CPU_TWICE
               RSEQ_ASM_CMP_VALUE_TWICE
               "movq %[newv], (%[v])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(expect), [newv] "r"(newv)
               : "memory", "cc", "rax" RSEQ_INJECT_CLOBBER
               : abort, cmpfail, error_cpu, error_value);
  return after_commit(id, v);
abort:
  return after_abort(id);
cmpfail:
  return after_cmpfail(id, v);
error_cpu:
  compare_twice_failed("rseq_cmpeqv_storev", "the cpu", cpu);
error_value:
  compare_twice_failed("rseq_cmpeqv_storev", "*v", cpu);
}

// ---------------------------------------------------------------------------------
// rseq_cmpnev_storeoffp_load (pop from a list)
//   if (cpu != current) abort;
//   head = *v;
//   if (head == expectnot) goto cmpfail;
//   *load = head;                <- private to the caller: repeatable
//   next = *(head + voffp);
//   *v = next;                   <- commit
// Abort leaves *v unchanged (*load may hold a stale value; the caller ignores it).

RSEQ_NOINLINE int rseq_cmpnev_storeoffp_load(enum rseq_index index, intptr_t *v,
                                             intptr_t expectnot, long voffp, intptr_t *load,
                                             int cpu) {
  enum { id = 2 };
  struct rseq_abi *area = area_or_die("rseq_cmpnev_storeoffp_load");
  uint32_t *idx = index_field(area, index);
  before_section(id, index, cpu, v);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_cmpnev_storeoffp_load")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "movq (%[v]), %%rbx\n\t"
               "cmpq %%rbx, %[expectnot]\n\t"
               "je %l[cmpfail]\n\t"
               RSEQ_INJECT_ASM(1)
               "movq %%rbx, (%[load])\n\t"
               "movq (%%rbx, %[voffp]), %%rax\n\t"
               RSEQ_INJECT_ASM(2)
               RSEQ_ASM_CMP_CPU_TWICE
#ifdef RSEQ_COMPARE_TWICE
               RSEQ_ASM_DEFINE_EXIT_POINT("1b", error_value)
               "cmpq (%[v]), %%rbx\n\t"
               "jnz %l[error_value]\n\t"
#endif
               "movq %%rax, (%[v])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expectnot] "r"(expectnot), [voffp] "r"(voffp), [load] "r"(load)
               : "memory", "cc", "rax", "rbx" RSEQ_INJECT_CLOBBER
               : abort, cmpfail, error_cpu, error_value);
  CCACHE_MSAN_UNPOISON(load, sizeof *load);  // written by the asm
  return after_commit(id, v);
abort:
  return after_abort(id);
cmpfail:
  return after_cmpfail(id, v);
error_cpu:
  compare_twice_failed("rseq_cmpnev_storeoffp_load", "the cpu", cpu);
error_value:
  compare_twice_failed("rseq_cmpnev_storeoffp_load", "*v", cpu);
}

// ---------------------------------------------------------------------------------
// rseq_cmpeqv_trystorev_storev
//   if (cpu != current) abort;
//   if (*v != expect) goto cmpfail;
//   *v2 = newv2;                 <- try-store: repeatable
//   *v = newv;                   <- commit; x86 keeps stores in order, so the commit
//                                   is a release of the try-store (the "memory" clobber
//                                   keeps the compiler from moving either)
// Abort leaves *v unchanged; *v2 may hold newv2, which is invisible until a commit.

RSEQ_NOINLINE int rseq_cmpeqv_trystorev_storev(enum rseq_index index, intptr_t *v,
                                               intptr_t expect, intptr_t *v2, intptr_t newv2,
                                               intptr_t newv, int cpu) {
  enum { id = 3 };
  struct rseq_abi *area = area_or_die("rseq_cmpeqv_trystorev_storev");
  uint32_t *idx = index_field(area, index);
  before_section(id, index, cpu, v);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_cmpeqv_trystorev_storev")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"
               RSEQ_INJECT_ASM(1)
               "movq %[newv2], (%[v2])\n\t"
               RSEQ_INJECT_ASM(2)
               RSEQ_ASM_CMP_CPU_TWICE
               RSEQ_ASM_CMP_VALUE_TWICE
               "movq %[newv], (%[v])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(expect), [v2] "r"(v2), [newv2] "r"(newv2), [newv] "r"(newv)
               : "memory", "cc", "rax" RSEQ_INJECT_CLOBBER
               : abort, cmpfail, error_cpu, error_value);
  CCACHE_MSAN_UNPOISON(v2, sizeof *v2);  // written by the asm
  return after_commit(id, v);
abort:
  return after_abort(id);
cmpfail:
  return after_cmpfail(id, v);
error_cpu:
  compare_twice_failed("rseq_cmpeqv_trystorev_storev", "the cpu", cpu);
error_value:
  compare_twice_failed("rseq_cmpeqv_trystorev_storev", "*v", cpu);
}

// ---------------------------------------------------------------------------------
// rseq_cmpeqv_trymemcpy_storev
//   if (cpu != current) abort;
//   if (*v != expect) goto cmpfail;
//   memcpy(dst, src, len);       <- 8 bytes at a time, then bytes; repeatable
//   *v = newv;                   <- commit (a release of the copy, as above)
// Abort leaves *v unchanged; dst may be partly written, invisible until a commit.

RSEQ_NOINLINE int rseq_cmpeqv_trymemcpy_storev(enum rseq_index index, intptr_t *v,
                                               intptr_t expect, void *dst, const void *src,
                                               size_t len, intptr_t newv, int cpu) {
  enum { id = 4 };
  struct rseq_abi *area = area_or_die("rseq_cmpeqv_trymemcpy_storev");
  uint32_t *idx = index_field(area, index);
  before_section(id, index, cpu, v);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_cmpeqv_trymemcpy_storev")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"
               RSEQ_INJECT_ASM(1)
               "xorl %%ecx, %%ecx\n\t"
               "81:\n\t"  // 8-byte copies while at least 8 bytes remain
               "leaq 8(%%rcx), %%rax\n\t"
               "cmpq %[len], %%rax\n\t"
               "ja 82f\n\t"
               "movq (%[src], %%rcx), %%rax\n\t"
               "movq %%rax, (%[dst], %%rcx)\n\t"
               "addq $8, %%rcx\n\t"
               "jmp 81b\n\t"
               "82:\n\t"  // the tail, a byte at a time
               "cmpq %[len], %%rcx\n\t"
               "jae 83f\n\t"
               "movb (%[src], %%rcx), %%al\n\t"
               "movb %%al, (%[dst], %%rcx)\n\t"
               "incq %%rcx\n\t"
               "jmp 82b\n\t"
               "83:\n\t"
               RSEQ_INJECT_ASM(2)
               RSEQ_ASM_CMP_CPU_TWICE
               RSEQ_ASM_CMP_VALUE_TWICE
               "movq %[newv], (%[v])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(expect), [dst] "r"(dst), [src] "r"(src), [len] "r"(len),
                 [newv] "r"(newv)
               : "memory", "cc", "rax", "rcx" RSEQ_INJECT_CLOBBER
               : abort, cmpfail, error_cpu, error_value);
  CCACHE_MSAN_COPY_SHADOW(dst, src, len);  // the asm copied the bytes, not their shadow
  return after_commit(id, v);
abort:
  return after_abort(id);
cmpfail:
  return after_cmpfail(id, v);
error_cpu:
  compare_twice_failed("rseq_cmpeqv_trymemcpy_storev", "the cpu", cpu);
error_value:
  compare_twice_failed("rseq_cmpeqv_trymemcpy_storev", "*v", cpu);
}

// ---------------------------------------------------------------------------------
// rseq_offset_deref_addv (the selftests' membarrier pattern)
//   if (cpu != current) abort;
//   p = *ptr + off;              <- the pointer is loaded inside the section, so a
//                                   writer that swaps *ptr and then fences knows no
//                                   section still adds through the old pointer
//   *p += inc;                   <- commit
// Abort leaves everything unchanged.

RSEQ_NOINLINE int rseq_offset_deref_addv(enum rseq_index index, intptr_t *ptr, long off,
                                         intptr_t inc, int cpu) {
  enum { id = 5 };
  struct rseq_abi *area = area_or_die("rseq_offset_deref_addv");
  uint32_t *idx = index_field(area, index);
  before_section(id, index, cpu, ptr);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_offset_deref_addv")
               RSEQ_ASM_START
               "movq (%[ptr]), %%rbx\n\t"
               RSEQ_INJECT_ASM(1)
               "addq %[off], %%rbx\n\t"
               RSEQ_ASM_CMP_CPU_TWICE
               "addq %[inc], (%%rbx)\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [ptr] "r"(ptr),
                 [off] "r"(off), [inc] "r"(inc)
               : "memory", "cc", "rax", "rbx" RSEQ_INJECT_CLOBBER
               : abort, error_cpu);
  return after_commit(id, ptr);
abort:
  return after_abort(id);
error_cpu:
  compare_twice_failed("rseq_offset_deref_addv", "the cpu", cpu);
}

// ---------------------------------------------------------------------------------
// Per-CPU array stacks (the allocator's CPU caches). CPU c owns a region at
// base + c * stride; at region offset 0 a `stopped` word (non-zero while a remote drain
// owns the region); at count_off the stack's count and at count_off + 8 its capacity;
// at slots_off its slots. The region pointer is computed inside the section from the
// CPU just verified there, so it can never belong to another CPU.

// rseq_percpu_stack_pop
//   if (cpu != current) abort;
//   region = base + cpu * stride;
//   if (region->stopped) goto cmpfail;
//   n = region->count;  if (n == 0) goto cmpfail;
//   *load = region->slots[n - 1];     <- private to the caller: repeatable
//   region->count = n - 1;            <- commit
// Abort leaves the stack unchanged.

RSEQ_NOINLINE int rseq_percpu_stack_pop(enum rseq_index index, char *base, size_t stride,
                                        long count_off, long slots_off, intptr_t *load, int cpu) {
  enum { id = 6 };
  struct rseq_abi *area = area_or_die("rseq_percpu_stack_pop");
  uint32_t *idx = index_field(area, index);
  intptr_t *slot = (intptr_t *)(base + (size_t)cpu * stride + count_off);  // TSan only
  before_section(id, index, cpu, slot);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_percpu_stack_pop")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "movslq %[cpu], %%rax\n\t"
               "imulq %[stride], %%rax\n\t"
               "addq %[base], %%rax\n\t"
               "cmpq $0, (%%rax)\n\t"
               "jnz %l[cmpfail]\n\t"
               "movq (%%rax, %[count_off]), %%rbx\n\t"
               "testq %%rbx, %%rbx\n\t"
               "jz %l[cmpfail]\n\t"
               RSEQ_INJECT_ASM(1)
               "leaq (%%rax, %[slots_off]), %%rcx\n\t"
               "movq -8(%%rcx, %%rbx, 8), %%rdx\n\t"
               "movq %%rdx, (%[load])\n\t"
               "decq %%rbx\n\t"
               RSEQ_INJECT_ASM(2)
               RSEQ_ASM_CMP_CPU_TWICE
               "movq %%rbx, (%%rax, %[count_off])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area),
                 [base] "r"(base), [stride] "r"(stride), [count_off] "r"(count_off),
                 [slots_off] "r"(slots_off), [load] "r"(load)
               : "memory", "cc", "rax", "rbx", "rcx", "rdx" RSEQ_INJECT_CLOBBER
               : abort, cmpfail, error_cpu);
  CCACHE_MSAN_UNPOISON(load, sizeof *load);  // written by the asm
  return after_commit(id, slot);
abort:
  return after_abort(id);
cmpfail:
  return after_cmpfail(id, slot);
error_cpu:
  compare_twice_failed("rseq_percpu_stack_pop", "the cpu", cpu);
}

// rseq_percpu_stack_push
//   if (cpu != current) abort;
//   region = base + cpu * stride;
//   if (region->stopped) goto cmpfail;
//   n = region->count;  if (n >= region->capacity) goto cmpfail;
//   region->slots[n] = item;          <- try-store above the top: invisible until commit
//   region->count = n + 1;            <- commit (a release of the slot on x86)
// Abort leaves the stack unchanged.

RSEQ_NOINLINE int rseq_percpu_stack_push(enum rseq_index index, char *base, size_t stride,
                                         long count_off, long slots_off, intptr_t item, int cpu) {
  enum { id = 7 };
  struct rseq_abi *area = area_or_die("rseq_percpu_stack_push");
  uint32_t *idx = index_field(area, index);
  intptr_t *slot = (intptr_t *)(base + (size_t)cpu * stride + count_off);  // TSan only
  before_section(id, index, cpu, slot);
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_percpu_stack_push")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "movslq %[cpu], %%rax\n\t"
               "imulq %[stride], %%rax\n\t"
               "addq %[base], %%rax\n\t"
               "cmpq $0, (%%rax)\n\t"
               "jnz %l[cmpfail]\n\t"
               "movq (%%rax, %[count_off]), %%rbx\n\t"
               "leaq (%%rax, %[count_off]), %%rcx\n\t"
               "cmpq 8(%%rcx), %%rbx\n\t"
               "jae %l[cmpfail]\n\t"
               RSEQ_INJECT_ASM(1)
               "leaq (%%rax, %[slots_off]), %%rcx\n\t"
               "movq %[item], (%%rcx, %%rbx, 8)\n\t"
               "incq %%rbx\n\t"
               RSEQ_INJECT_ASM(2)
               RSEQ_ASM_CMP_CPU_TWICE
               "movq %%rbx, (%%rax, %[count_off])\n\t"  // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area),
                 [base] "r"(base), [stride] "r"(stride), [count_off] "r"(count_off),
                 [slots_off] "r"(slots_off), [item] "r"(item)
               : "memory", "cc", "rax", "rbx", "rcx" RSEQ_INJECT_CLOBBER
               : abort, cmpfail, error_cpu);
  return after_commit(id, slot);
abort:
  return after_abort(id);
cmpfail:
  return after_cmpfail(id, slot);
error_cpu:
  compare_twice_failed("rseq_percpu_stack_push", "the cpu", cpu);
}

// ---------------------------------------------------------------------------------
// The CAS-mode stack: the same per-CPU array stack, updated with 16-byte CAS by any
// thread on any CPU's region. A non-blocking array stack (after Shafiei, 2009):
//
//   top   = { idx | ctr << 16, value }  the stack holds idx items; the top item is
//           `value`, which belongs in slots[idx - 1] but may not be written there yet;
//           ctr counts every successful operation (48 bits: never wraps in practice).
//   slots[k] = { value, ctr }           ctr of the operation that last wrote the slot.
//
// Every operation first finishes the pending write of the top it read (CAS the slot
// from its old contents to {value, ctr} unless it already carries ctr), then CASes top.
// ABA: top carries ctr, which every successful operation increases, so a CAS based on
// a stale top always fails, even if idx and value came back to what they were; a slot
// write carries the ctr of its operation, so a late helper cannot overwrite a newer
// value with an older one (it sees a different ctr and leaves the slot alone).

#define CAS_STACK_IDX_BITS 16
#define CAS_STACK_IDX_MASK ((1u << CAS_STACK_IDX_BITS) - 1)

static inline rseq_u128_t cas_stack_pack(uint64_t idx, uint64_t ctr, intptr_t value) {
  return (rseq_u128_t)(idx | ctr << CAS_STACK_IDX_BITS) | (rseq_u128_t)(uint64_t)value << 64;
}

// Two relaxed halves; the 16-byte CAS that follows validates them together.
static inline rseq_u128_t load128(const rseq_u128_t *p) {
  const uint64_t *w = (const uint64_t *)p;
  uint64_t lo = __atomic_load_n(&w[0], __ATOMIC_ACQUIRE);
  uint64_t hi = __atomic_load_n(&w[1], __ATOMIC_ACQUIRE);
  return (rseq_u128_t)lo | (rseq_u128_t)hi << 64;
}

static inline bool cas128(rseq_u128_t *p, rseq_u128_t *expect, rseq_u128_t desired) {
  // Acq_rel: a push publishes its item (release); a pop reads the item it took and the
  // slot below it (acquire).
  return __atomic_compare_exchange_n(p, expect, desired, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE);
}

static _Atomic(rseq_cas_stack_hook_fn) cas_stack_hook;  // tests only; relaxed is enough

void rseq_cas_stack_set_test_hook(rseq_cas_stack_hook_fn hook) {
  atomic_store_explicit(&cas_stack_hook, hook, memory_order_relaxed);
}

static inline void cas_stack_test_point(int where) {
  rseq_cas_stack_hook_fn hook = atomic_load_explicit(&cas_stack_hook, memory_order_relaxed);
  if (__builtin_expect(hook != NULL, 0)) hook(where);
}

// Finish the pending write of `top`: slots[idx - 1] = {value, ctr}.
static inline void cas_stack_finish(rseq_u128_t *slots, rseq_u128_t top) {
  uint64_t lo = (uint64_t)top;
  uint64_t idx = lo & CAS_STACK_IDX_MASK, ctr = lo >> CAS_STACK_IDX_BITS;
  if (idx == 0) return;
  rseq_u128_t *slot = &slots[idx - 1];
  rseq_u128_t old = load128(slot);
  if ((uint64_t)(old >> 64) == ctr) return;  // already written
  rseq_u128_t want = (rseq_u128_t)(uint64_t)(top >> 64) | (rseq_u128_t)ctr << 64;
  // Only from an older ctr: if another helper wrote it meanwhile, the CAS fails and
  // the slot already holds this value.
  if ((uint64_t)(old >> 64) < ctr) cas128(slot, &old, want);
}

int rseq_cas_stack_push(rseq_u128_t *top, rseq_u128_t *slots, uint64_t capacity, intptr_t item) {
  for (;;) {
    rseq_u128_t t = load128(top);
    cas_stack_finish(slots, t);
    uint64_t lo = (uint64_t)t;
    uint64_t idx = lo & CAS_STACK_IDX_MASK, ctr = lo >> CAS_STACK_IDX_BITS;
    if (idx >= capacity) return RSEQ_CMPFAIL;
    cas_stack_test_point(RSEQ_CAS_STACK_PUSH_BEFORE_CAS);
    if (cas128(top, &t, cas_stack_pack(idx + 1, ctr + 1, item))) {
      cas_stack_finish(slots, cas_stack_pack(idx + 1, ctr + 1, item));
      return RSEQ_COMMIT;
    }
  }
}

int rseq_cas_stack_pop(rseq_u128_t *top, rseq_u128_t *slots, intptr_t *load) {
  for (;;) {
    rseq_u128_t t = load128(top);
    cas_stack_finish(slots, t);
    uint64_t lo = (uint64_t)t;
    uint64_t idx = lo & CAS_STACK_IDX_MASK, ctr = lo >> CAS_STACK_IDX_BITS;
    if (idx == 0) return RSEQ_CMPFAIL;
    // The item below the top was finished before anything was pushed on it, and
    // cannot change while top stays as read (which the CAS checks).
    intptr_t below = idx >= 2 ? (intptr_t)(uint64_t)load128(&slots[idx - 2]) : 0;  // {value, ctr}
    cas_stack_test_point(RSEQ_CAS_STACK_POP_BEFORE_CAS);
    if (cas128(top, &t, cas_stack_pack(idx - 1, ctr + 1, below))) {
      *load = (intptr_t)(uint64_t)(t >> 64);
      return RSEQ_COMMIT;
    }
  }
}

uint64_t rseq_cas_stack_count(const rseq_u128_t *top) {
  return (uint64_t)load128(top) & CAS_STACK_IDX_MASK;
}

// ---------------------------------------------------------------------------------
// CAS-mode twins.

int rseq_cas_addv(intptr_t *v, intptr_t count) {
#if CCACHE_SEEDED_BUG == 6  // test-only variant (ci/fuzz-teeth): a wrong sum
  if (count == 0x7f) count++;
#endif
  // Relaxed: a per-CPU sum publishes no other data; only its total matters.
  __atomic_fetch_add(v, count, __ATOMIC_RELAXED);
  return RSEQ_COMMIT;
}

int rseq_cas_cmpeqv_storev(intptr_t *v, intptr_t expect, intptr_t newv) {
  // Acq_rel: the new value may publish data written before (release), and a caller
  // that read *v may go on to read what it points to (acquire).
  return __atomic_compare_exchange_n(v, &expect, newv, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)
             ? RSEQ_COMMIT
             : RSEQ_CMPFAIL;
}

int rseq_cas_cmpeqv_trystorev_storev(intptr_t *v, intptr_t expect, intptr_t *v2, intptr_t newv2,
                                     intptr_t newv) {
  // Acquire: skip the try-store when *v already moved on.
  if (__atomic_load_n(v, __ATOMIC_ACQUIRE) != expect) return RSEQ_CMPFAIL;
  // Relaxed: *v2 belongs to the caller until the release CAS below publishes it.
  __atomic_store_n(v2, newv2, __ATOMIC_RELAXED);
  return rseq_cas_cmpeqv_storev(v, expect, newv);
}

int rseq_cas_cmpeqv_trymemcpy_storev(intptr_t *v, intptr_t expect, void *dst, const void *src,
                                     size_t len, intptr_t newv) {
  // Acquire: skip the copy when *v already moved on.
  if (__atomic_load_n(v, __ATOMIC_ACQUIRE) != expect) return RSEQ_CMPFAIL;
  memcpy(dst, src, len);  // dst belongs to the caller until the release CAS publishes it
  return rseq_cas_cmpeqv_storev(v, expect, newv);
}

// ---------------------------------------------------------------------------------
// Lists and mode dispatch.

typedef rseq_u128_t rseq_u128;

static inline rseq_u128 list_pack(intptr_t head, uintptr_t tag) {
  return (rseq_u128)(uintptr_t)head | (rseq_u128)tag << 64;
}

static inline rseq_u128 list_load(struct rseq_list *list) {
  // Two relaxed halves, then validated by the 16-byte CAS: a torn read only makes the
  // CAS fail and retry.
  intptr_t head = __atomic_load_n(&list->head, __ATOMIC_ACQUIRE);
  uintptr_t tag = __atomic_load_n(&list->tag, __ATOMIC_RELAXED);
  return list_pack(head, tag);
}

static inline bool list_cas(struct rseq_list *list, rseq_u128 *expect, rseq_u128 desired) {
  // Acq_rel: a push publishes the node's contents (release); a pop reads the popped
  // node's next pointer and contents (acquire).
  return __atomic_compare_exchange_n((rseq_u128 *)list, expect, desired, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

int rseq_list_push(const struct rseq_percpu_mode *m, struct rseq_list *list, intptr_t node,
                   long voffp, int cpu) {
  intptr_t *next = (intptr_t *)(node + voffp);
  if (m->mode == RSEQ_MODE_CAS) {
    rseq_u128 old = list_load(list);
    for (;;) {
      // Relaxed: the node is private until the release CAS publishes it.
      __atomic_store_n(next, (intptr_t)(uintptr_t)old, __ATOMIC_RELAXED);
      if (list_cas(list, &old, list_pack(node, (uintptr_t)(old >> 64) + 1))) return RSEQ_COMMIT;
    }
  }
  // Relaxed, both: the node is private to us until the section commits it, and the
  // head is only changed by sections on this CPU, which the kernel serializes.
  intptr_t head = __atomic_load_n(&list->head, __ATOMIC_RELAXED);
  __atomic_store_n(next, head, __ATOMIC_RELAXED);
  return rseq_cmpeqv_storev(m->index, &list->head, head, node, cpu);
}

int rseq_list_pop(const struct rseq_percpu_mode *m, struct rseq_list *list, long voffp,
                  intptr_t *load, int cpu) {
  if (m->mode == RSEQ_MODE_CAS) {
    rseq_u128 old = list_load(list);
    for (;;) {
      intptr_t head = (intptr_t)(uintptr_t)old;
      if (head == 0) return RSEQ_CMPFAIL;
      // Relaxed: if the node was popped meanwhile, the tag has changed and the CAS
      // below fails, so a stale next is never installed.
      intptr_t next = __atomic_load_n((intptr_t *)(head + voffp), __ATOMIC_RELAXED);
      if (list_cas(list, &old, list_pack(next, (uintptr_t)(old >> 64) + 1))) {
        *load = head;
        return RSEQ_COMMIT;
      }
    }
  }
  return rseq_cmpnev_storeoffp_load(m->index, &list->head, 0, voffp, load, cpu);
}

int rseq_cas_offset_deref_addv(intptr_t *ptr, long off, intptr_t inc) {
  // Acquire: the pointer may have just been published by another thread.
  intptr_t *p = (intptr_t *)(__atomic_load_n(ptr, __ATOMIC_ACQUIRE) + off);
  // Relaxed: a sum publishes no other data.
  __atomic_fetch_add(p, inc, __ATOMIC_RELAXED);
  return RSEQ_COMMIT;
}

int rseq_percpu_addv(const struct rseq_percpu_mode *m, intptr_t *v, intptr_t count, int cpu) {
  if (m->mode == RSEQ_MODE_CAS) return rseq_cas_addv(v, count);
  return rseq_addv(m->index, v, count, cpu);
}

int rseq_percpu_cmpeqv_storev(const struct rseq_percpu_mode *m, intptr_t *v, intptr_t expect,
                              intptr_t newv, int cpu) {
  if (m->mode == RSEQ_MODE_CAS) return rseq_cas_cmpeqv_storev(v, expect, newv);
  return rseq_cmpeqv_storev(m->index, v, expect, newv, cpu);
}
