// causes.c: abort causes from the enter and abort hooks (see causes.h).
#include "stress/causes.h"

#include <errno.h>
#include <stdatomic.h>

#define MAX_CPUS 1024

// Relaxed everywhere below: these are statistics and per-thread snapshots. A fence
// counter is compared at the abort with the value seen at the entry; the membarrier
// IPI that aborts a section comes after causes_fence_begin's increment in the fencer's
// program order, and the syscall's own barriers order it before the interrupted
// thread's abort path runs.
static _Atomic uint64_t counts[RSEQ_SECTION_MAX_IDS][CAUSE_COUNT];
static _Atomic uint64_t fence_seq[MAX_CPUS];  // odd while a fence of that CPU runs
static _Atomic uint64_t fence_all_seq;        // odd while a fence of all CPUs runs

// Per thread: the handlers run so far, and the snapshot taken at the last entry.
static __thread uint64_t tl_signals;
static __thread struct causes_saved tl_entry;

const char *cause_name(int cause) {
  static const char *const names[CAUSE_COUNT] = {"migration", "signal", "fence", "preemption"};
  return cause >= 0 && cause < CAUSE_COUNT ? names[cause] : "?";
}

static uint32_t current_cpu_id(void) {
  struct rseq_abi *a = rseq_thread_area();
  // Relaxed: the kernel writes it on return to user space; we want the current value.
  return a ? __atomic_load_n(&a->cpu_id, __ATOMIC_RELAXED) : 0;
}

static uint64_t fence_of(uint32_t cpu) {
  return cpu < MAX_CPUS ? atomic_load_explicit(&fence_seq[cpu], memory_order_relaxed) : 0;
}

static void on_enter(int id, enum rseq_index index, int cpu) {
  (void)id;
  (void)index;
  (void)cpu;
  uint32_t c = current_cpu_id();
  tl_entry.cpu = c;
  tl_entry.signals = tl_signals;
  tl_entry.fence = fence_of(c);
  tl_entry.fence_all = atomic_load_explicit(&fence_all_seq, memory_order_relaxed);
  tl_entry.valid = 1;
}

static void on_abort(int id) {
  if (id < 0 || id >= RSEQ_SECTION_MAX_IDS) return;
  int cause = CAUSE_PREEMPTION;
  const struct causes_saved *e = &tl_entry;
  uint64_t fall = atomic_load_explicit(&fence_all_seq, memory_order_relaxed);
  if (e->valid && tl_signals != e->signals) {
    cause = CAUSE_SIGNAL;
  } else if (e->valid && current_cpu_id() != e->cpu) {
    cause = CAUSE_MIGRATION;
  } else if (e->valid && (fence_of(e->cpu) != e->fence || (e->fence & 1) ||
                          fall != e->fence_all || (e->fence_all & 1))) {
    cause = CAUSE_FENCE;
  }
  atomic_fetch_add_explicit(&counts[id][cause], 1, memory_order_relaxed);
}

int causes_install(void) {
  if (rseq_set_enter_hook(on_enter) != 0) return -1;  // errno ENOTSUP
  rseq_set_abort_hook(on_abort);
  return 0;
}

void causes_signal_enter(struct causes_saved *saved) { *saved = tl_entry; }

void causes_signal_leave(const struct causes_saved *saved) {
  tl_entry = *saved;
  tl_signals++;  // after the restore: the interrupted section sees a new signal
}

void causes_fence_begin(int cpu) {
  _Atomic uint64_t *s = cpu < 0 ? &fence_all_seq : cpu < MAX_CPUS ? &fence_seq[cpu] : NULL;
  if (s) atomic_fetch_add_explicit(s, 1, memory_order_relaxed);
}

void causes_fence_end(int cpu) { causes_fence_begin(cpu); }

uint64_t causes_count(int section_id, int cause) {
  if (section_id < 0 || section_id >= RSEQ_SECTION_MAX_IDS || cause < 0 || cause >= CAUSE_COUNT)
    return 0;
  return atomic_load_explicit(&counts[section_id][cause], memory_order_relaxed);
}

uint64_t causes_total(int section_id) {
  uint64_t t = 0;
  for (int c = 0; c < CAUSE_COUNT; c++) t += causes_count(section_id, c);
  return t;
}
