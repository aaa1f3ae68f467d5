// rseq.h: the kernel interface of ccache-suite. Nothing outside rseq/ issues the rseq
// syscall or contains inline asm; the allocator and the ring are built on what is here.
//
//   registration   the calling thread's rseq area: glibc's when glibc registered it
//                  (__rseq_offset/__rseq_size), else one of our own, registered on first
//                  use and unregistered at thread exit.
//   availability   rseq_available() and the reason when not, so AUTO instances can fall
//                  back to CAS mode and say why.
//   index          the current cpu_id or mm_cid, and the array size each index needs.
//   primitives     x86-64 critical sections (the librseq set) that return COMMIT, ABORT
//                  or CMPFAIL, each with a CAS-mode twin (rseq_cas_*).
//   registry       every critical section linked into the binary, by stable name, with
//                  its addresses and counters (counters live in the stats variant).
//   fences         rseq_fence_cpu()/rseq_fence_all(): membarrier PRIVATE_EXPEDITED_RSEQ,
//                  or a migration-based fallback, with the reason reported.
//   fake CPUs      a test thread can leave the kernel's registration and write its CPU
//                  number itself, to drive every CPU's data path deterministically.
//
// Variants (Bazel targets; one source, different defines):
//   //rseq:rseq          release: aborts counted, nothing else
//   //rseq:rseq_stats    + entered/committed/cmpfail counters per section
//   //rseq:rseq_inject   + numbered delay loops inside every section, blocking injection
//   //rseq:rseq_debug    + compare-twice: re-check CPU and values before each commit
#ifndef CCACHE_RSEQ_RSEQ_H_
#define CCACHE_RSEQ_RSEQ_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rseq/rseq_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------
// Modes and indexes (per instance of a data structure).

enum rseq_mode {
  RSEQ_MODE_AUTO = 0,  // rseq when available, else CAS (the reason is kept)
  RSEQ_MODE_RSEQ = 1,
  RSEQ_MODE_CAS = 2,
};

enum rseq_index {
  RSEQ_INDEX_CPU_ID = 0,  // the CPU number
  RSEQ_INDEX_MM_CID = 1,  // the concurrency id (Linux 6.3+): dense, < min(threads, CPUs)
};

const char *rseq_mode_name(enum rseq_mode mode);
const char *rseq_index_name(enum rseq_index index);
// Parses "rseq", "cas", "auto" / "cpu", "cpu_id", "cid", "mm_cid"; -1 when unknown.
int rseq_mode_parse(const char *s);
int rseq_index_parse(const char *s);

// What a data structure instance runs with, after AUTO is resolved.
struct rseq_percpu_mode {
  enum rseq_mode mode;  // RSEQ_MODE_RSEQ or RSEQ_MODE_CAS, never AUTO
  enum rseq_index index;
};

// Resolves a requested (mode, index) pair. AUTO becomes RSEQ when rseq (and, for the
// mm_cid index, mm_cid) is available, else CAS; *why_cas then says why. Explicit RSEQ
// that cannot be had returns -1 with errno ENOSYS (no rseq) or EOPNOTSUPP (no mm_cid)
// and *why_cas set. Invalid enum values: -1 with errno EINVAL.
int rseq_resolve_mode(enum rseq_mode requested, enum rseq_index index,
                      struct rseq_percpu_mode *out, const char **why_cas);

// ---------------------------------------------------------------------------------
// Registration and availability.

enum rseq_owner {
  RSEQ_OWNER_NONE = 0,  // not registered (yet, or rseq is unavailable)
  RSEQ_OWNER_GLIBC,     // glibc registered the thread; we use its area
  RSEQ_OWNER_SELF,      // we registered our own per-thread area
  RSEQ_OWNER_FAKE,      // a fake-CPU test thread: unregistered, CPU written by hand
};
const char *rseq_owner_name(enum rseq_owner owner);

// True when the calling process can use rseq. The first call probes (registering
// the calling thread if glibc did not); later calls are a load.
bool rseq_available(void);
// Why rseq is unavailable ("" when it is available): no syscall (ENOSYS), refused
// (another errno, e.g. a seccomp filter), or disabled (CCACHE_RSEQ=0 in the env).
const char *rseq_unavailable_reason(void);
// True when the kernel maintains mm_cid (getauxval(AT_RSEQ_FEATURE_SIZE) >= 28).
bool rseq_mm_cid_available(void);

// The calling thread's area, registering the thread first if needed; NULL when rseq
// is unavailable. The pointer stays valid for the thread's life.
static inline struct rseq_abi *rseq_thread_area(void);
enum rseq_owner rseq_thread_owner(void);

// The current cpu_id or mm_cid of the calling thread, registering it if needed;
// -1 when rseq is unavailable (errno ENOSYS) or the value is out of range (ERANGE).
// Always < rseq_index_count(index).
static inline int rseq_current_index(enum rseq_index index);

// The number of slots an array indexed by `index` needs: the number of possible CPUs
// (/sys/devices/system/cpu/possible), not the online or allowed ones. mm_cid is
// bounded by the same number.
int rseq_index_count(enum rseq_index index);
int rseq_possible_cpus(void);

// Raw syscall, for tests of the kernel's behaviour. Returns 0 or -1 with errno.
int rseq_syscall(struct rseq_abi *area, uint32_t len, int flags, uint32_t sig);

// Counts of our own registrations and unregistrations (thread exit), for tests.
void rseq_self_registration_counts(uint64_t *registered, uint64_t *unregistered);

// ---------------------------------------------------------------------------------
// Fake CPUs (tests and fuzzers). rseq_fake_cpu_enter() unregisters the calling
// thread (glibc's area or ours) so the kernel no longer touches its area; then
// rseq_fake_cpu_set() writes cpu_id, cpu_id_start and mm_cid by hand. Sections never
// abort in such a thread. rseq_fake_cpu_exit() registers the thread again.
int rseq_fake_cpu_enter(void);
void rseq_fake_cpu_set(int cpu);
int rseq_fake_cpu_exit(void);
// The thread's next index read (rseq_current_index) returns the current fake CPU, and
// the thread is then on fake CPU `cpu`, as if the kernel had migrated it right after
// that read. Plays, deterministically, a migration between a data structure's index
// read and its section: code that derives its per-CPU pointer from one read and
// checks the section against another commits on the wrong CPU's data.
void rseq_fake_cpu_migrate_after_next_read(int cpu);

// ---------------------------------------------------------------------------------
// Critical-section primitives. Each runs one critical section on the per-CPU data of
// `cpu` (a value of the chosen index, as returned by rseq_current_index()):
//   RSEQ_COMMIT   the committing store happened;
//   RSEQ_ABORT    the kernel aborted the section, or the thread is no longer on `cpu`:
//                 nothing was committed; re-read the index and retry;
//   RSEQ_CMPFAIL  the comparison failed: nothing was committed.
// The caller must have got `cpu` from rseq_current_index() in this thread (which also
// registers the thread). Words are intptr_t; per-CPU pointers are computed by the
// caller from `cpu` and verified inside the section by the CPU comparison.

enum rseq_result {
  RSEQ_COMMIT = 0,
  RSEQ_ABORT = 1,
  RSEQ_CMPFAIL = 2,
};
const char *rseq_result_name(int result);

// *v += count.
int rseq_addv(enum rseq_index index, intptr_t *v, intptr_t count, int cpu);

// if (*v != expect) CMPFAIL; *v = newv.
int rseq_cmpeqv_storev(enum rseq_index index, intptr_t *v, intptr_t expect, intptr_t newv,
                       int cpu);

// Pop from a list: if (*v == expectnot) CMPFAIL; *load = *v; *v = *(*v + voffp).
int rseq_cmpnev_storeoffp_load(enum rseq_index index, intptr_t *v, intptr_t expectnot,
                               long voffp, intptr_t *load, int cpu);

// if (*v != expect) CMPFAIL; *v2 = newv2 (may be repeated); *v = newv (commit).
int rseq_cmpeqv_trystorev_storev(enum rseq_index index, intptr_t *v, intptr_t expect,
                                 intptr_t *v2, intptr_t newv2, intptr_t newv, int cpu);

// if (*v != expect) CMPFAIL; memcpy(dst, src, len) (may be repeated); *v = newv.
int rseq_cmpeqv_trymemcpy_storev(enum rseq_index index, intptr_t *v, intptr_t expect, void *dst,
                                 const void *src, size_t len, intptr_t newv, int cpu);

// p = *ptr + off; *p += inc. The pointer is loaded inside the section: after a
// writer swaps *ptr and fences, no section adds through the old pointer any more.
int rseq_offset_deref_addv(enum rseq_index index, intptr_t *ptr, long off, intptr_t inc,
                           int cpu);

// CAS-mode twins: the same results (never ABORT) with atomics, for any thread on any
// CPU's data. addv, cmpeqv_storev: exact atomic equivalents. The two try-store
// variants publish *v with a release CAS after the try-store; in CAS mode their
// try-store target must belong to the caller until the commit (a claimed slot).
int rseq_cas_addv(intptr_t *v, intptr_t count);
int rseq_cas_cmpeqv_storev(intptr_t *v, intptr_t expect, intptr_t newv);
// Not fence-safe: a CAS-mode user must not rely on fences (it needs none).
int rseq_cas_offset_deref_addv(intptr_t *ptr, long off, intptr_t inc);
int rseq_cas_cmpeqv_trystorev_storev(intptr_t *v, intptr_t expect, intptr_t *v2, intptr_t newv2,
                                     intptr_t newv);
int rseq_cas_cmpeqv_trymemcpy_storev(intptr_t *v, intptr_t expect, void *dst, const void *src,
                                     size_t len, intptr_t newv);

// Per-CPU lists (stacks of nodes linked at byte offset `voffp`). The head carries a
// tag for CAS mode: a CAS pop compares {head, tag} with one 16-byte cmpxchg and bumps
// the tag, so a node popped and pushed back meanwhile (ABA) makes the CAS fail. rseq
// mode touches `head` only: the kernel serializes the sections of one CPU.
struct rseq_list {
  intptr_t head;  // first node, or 0
  uintptr_t tag;  // CAS mode only: bumped by every CAS pop and push
} __attribute__((aligned(16)));

// Push: node->next = head; head = node. Pop: *load = head; head = head->next; CMPFAIL
// when empty. Mode dispatch: m->mode selects the rseq section or the CAS twin.
int rseq_list_push(const struct rseq_percpu_mode *m, struct rseq_list *list, intptr_t node,
                   long voffp, int cpu);
int rseq_list_pop(const struct rseq_percpu_mode *m, struct rseq_list *list, long voffp,
                  intptr_t *load, int cpu);

// Per-CPU array stacks (the allocator's CPU caches). Region of CPU c: base + c*stride;
// at offset 0 a `stopped` word (non-zero: the region is being drained remotely and
// every push and pop returns CMPFAIL); at count_off the count, at count_off + 8 the
// capacity; slots (intptr_t) at slots_off. The region address is computed inside the
// section from the verified CPU. Pop: CMPFAIL when empty or stopped. Push: CMPFAIL
// when full or stopped.
int rseq_percpu_stack_pop(enum rseq_index index, char *base, size_t stride, long count_off,
                          long slots_off, intptr_t *load, int cpu);
int rseq_percpu_stack_push(enum rseq_index index, char *base, size_t stride, long count_off,
                           long slots_off, intptr_t item, int cpu);

// The CAS-mode twin of the per-CPU stack: a non-blocking, ABA-safe array stack with a
// 16-byte top {count | op counter << 16, top item} and 16-byte slots {item, op counter}
// (see primitives.c). Capacity at most 65535. CMPFAIL when full (push) or empty (pop).
typedef unsigned __int128 rseq_u128_t;
int rseq_cas_stack_push(rseq_u128_t *top, rseq_u128_t *slots, uint64_t capacity, intptr_t item);
int rseq_cas_stack_pop(rseq_u128_t *top, rseq_u128_t *slots, intptr_t *load);
uint64_t rseq_cas_stack_count(const rseq_u128_t *top);
// Tests: a hook called right before each top CAS, to force interleavings (ABA).
enum { RSEQ_CAS_STACK_PUSH_BEFORE_CAS = 1, RSEQ_CAS_STACK_POP_BEFORE_CAS = 2 };
typedef void (*rseq_cas_stack_hook_fn)(int where);
void rseq_cas_stack_set_test_hook(rseq_cas_stack_hook_fn hook);

// Mode dispatch for the word primitives.
int rseq_percpu_addv(const struct rseq_percpu_mode *m, intptr_t *v, intptr_t count, int cpu);
int rseq_percpu_cmpeqv_storev(const struct rseq_percpu_mode *m, intptr_t *v, intptr_t expect,
                              intptr_t newv, int cpu);

// ---------------------------------------------------------------------------------
// Registry: the sections linked into this binary, read from the __rseq_cs_ptr_array
// and rseq_registry ELF sections through the linker's __start_/__stop_ symbols.

// Section ids (struct rseq_section.id, the hooks' section_id) are below this.
#define RSEQ_SECTION_MAX_IDS 32

struct rseq_section {
  const char *name;  // stable: "rseq_addv", "rseq_cmpeqv_storev", ...
  int id;            // index into the counters
  const struct rseq_cs_desc *desc;
  uintptr_t start_ip;
  uintptr_t post_commit_ip;
  uintptr_t abort_ip;
};

struct rseq_section_counters {
  uint64_t entered;    // stats variant
  uint64_t committed;  // stats variant
  uint64_t aborted;    // every variant
  uint64_t cmpfail;    // stats variant
};

int rseq_registry_count(void);
// Section i (0 <= i < count), sorted by name; -1 when out of range.
int rseq_registry_get(int i, struct rseq_section *out);
// The section whose [start_ip, post_commit_ip) or abort_ip holds ip; -1 if none.
int rseq_registry_find_ip(uintptr_t ip, struct rseq_section *out);
void rseq_section_counters_get(int id, struct rseq_section_counters *out);
void rseq_section_counters_reset(void);
// True in the stats, inject and debug variants (entered/committed/cmpfail counted).
bool rseq_stats_enabled(void);
// Every section with its addresses (relative to the load base, so stable across runs
// of a PIE) and counters, as a JSON object.
void rseq_registry_dump_json(FILE *out);

// Called (in C, after the asm) on every abort, in every variant, when set. The stress
// jobs classify aborts by cause with it. Must be async-signal-safe.
typedef void (*rseq_abort_hook_fn)(int section_id);
void rseq_set_abort_hook(rseq_abort_hook_fn hook);
// Called (in C, right before the asm, after any blocking injection) on every section
// entry, with the index and the value of it the caller expects (`cpu`). Counting
// variants only (stats, inject, debug); elsewhere it returns -1 with errno ENOTSUP.
// With the abort hook, it lets the stress jobs tell why a section aborted: what
// changed between its entry and its abort. Must be async-signal-safe.
typedef void (*rseq_enter_hook_fn)(int section_id, enum rseq_index index, int cpu);
int rseq_set_enter_hook(rseq_enter_hook_fn hook);

// ---------------------------------------------------------------------------------
// Delay injection (inject variant only; elsewhere the setters return -1 ENOTSUP).
// Point n (1..RSEQ_INJECT_POINTS) is a register-only busy loop of `loops` iterations
// at a fixed place inside every section that has that point.
#define RSEQ_INJECT_POINTS 8
int rseq_inject_set_loops(int point, uint32_t loops);
// Blocking injection before a section: every `every`-th primitive call in a thread,
// do `kind` first ("sleep" 1 ms, "yield", "raise" SIGUSR1 must have a handler).
enum rseq_inject_block { RSEQ_BLOCK_NONE = 0, RSEQ_BLOCK_SLEEP, RSEQ_BLOCK_YIELD, RSEQ_BLOCK_RAISE };
int rseq_inject_set_blocking(enum rseq_inject_block kind, uint32_t every);
bool rseq_inject_enabled(void);
// Points that exist in each section (bitmask of 1 << point), for the stress matrix.
uint32_t rseq_inject_points_of(int section_id);

// ---------------------------------------------------------------------------------
// Fences: after rseq_fence_cpu(cpu) returns 0, every critical section that was running
// on `cpu` when it was called has committed or aborted. rseq_fence_all() does the same
// for all CPUs. Uses membarrier(PRIVATE_EXPEDITED_RSEQ), registered once; where that
// is unsupported, migrates the calling thread onto the CPU (which forces whatever ran
// there to be switched out, and so aborted). -1 with errno on failure.
int rseq_fence_cpu(int cpu);
int rseq_fence_all(void);
// "membarrier" or "migration (membarrier unsupported: <reason>)".
const char *rseq_fence_method(void);
// Tests: force the fallback even where membarrier works.
void rseq_fence_force_fallback(bool on);

// ---------------------------------------------------------------------------------
// Inline fast paths (the slow paths register the thread, or report errors). The names
// ending in _ are internal to these two functions.

extern __thread struct rseq_abi *rseq_tls_area_ __attribute__((tls_model("initial-exec")));
extern int rseq_index_limit_;  // rseq_index_count(); set once, before any area is handed out
struct rseq_abi *rseq_thread_area_slow_(void);
int rseq_current_index_slow_(enum rseq_index index);

// The index field (cpu_id or mm_cid) of an rseq area: its byte offset, and the field.
static inline long rseq_index_offset(enum rseq_index index) {
  return index == RSEQ_INDEX_MM_CID ? RSEQ_ABI_OFFSET_MM_CID : RSEQ_ABI_OFFSET_CPU_ID;
}
static inline uint32_t *rseq_index_field(struct rseq_abi *area, long index_offset) {
  return (uint32_t *)((char *)area + index_offset);
}

static inline struct rseq_abi *rseq_thread_area(void) {
  struct rseq_abi *a = rseq_tls_area_;
  if (__builtin_expect(a != NULL, 1)) return a;
  return rseq_thread_area_slow_();
}

static inline int rseq_current_index(enum rseq_index index) {
  struct rseq_abi *a = rseq_tls_area_;
  if (__builtin_expect(a != NULL, 1)) {
    // Relaxed: the kernel writes these fields on return to user space; any current
    // value will do, since every section re-checks it.
    uint32_t v = index == RSEQ_INDEX_MM_CID ? __atomic_load_n(&a->mm_cid, __ATOMIC_RELAXED)
                                            : __atomic_load_n(&a->cpu_id, __ATOMIC_RELAXED);
    // Relaxed: written once, before this thread's area was set up.
    if (__builtin_expect(v < (uint32_t)__atomic_load_n(&rseq_index_limit_, __ATOMIC_RELAXED), 1))
      return (int)v;
  }
  return rseq_current_index_slow_(index);
}

#ifdef __cplusplus
}
#endif

#endif  // CCACHE_RSEQ_RSEQ_H_
