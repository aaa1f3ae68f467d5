// causes.h: why did a critical section abort? Every abort is put in one of four
// causes, per section, from what changed between the section's entry (rseq's enter
// hook) and its abort (the abort hook), in this order of precedence:
//   signal      a signal handler ran in this thread (the handlers say so)
//   migration   the thread's cpu_id changed
//   fence       a membarrier fence targeted the entry CPU (the fence forcer says so)
//   preemption  none of the above: the thread was switched out and came back
// The counters are per section id and cause; they are kept with relaxed atomics and
// thread-local snapshots, so the hooks are async-signal-safe.
#ifndef CCACHE_STRESS_CAUSES_H_
#define CCACHE_STRESS_CAUSES_H_

#include <stdint.h>

#include "rseq/rseq.h"

enum cause {
  CAUSE_MIGRATION = 0,
  CAUSE_SIGNAL,
  CAUSE_FENCE,
  CAUSE_PREEMPTION,
  CAUSE_COUNT,
};
const char *cause_name(int cause);

// Installs the enter and abort hooks. -1 with errno ENOTSUP when the binary does not
// link a counting rseq variant (stats or inject).
int causes_install(void);

// A signal handler brackets its body with these: the handler's own sections overwrite
// the thread's entry snapshot, so it is saved and restored, and the interrupted
// section (aborted before the handler ran) is then seen to have met a signal.
struct causes_saved {
  uint32_t cpu;
  uint64_t signals, fence, fence_all;
  int valid;
};
void causes_signal_enter(struct causes_saved *saved);
void causes_signal_leave(const struct causes_saved *saved);

// The fence forcer brackets each fence of one CPU (or of all, cpu < 0).
void causes_fence_begin(int cpu);
void causes_fence_end(int cpu);

uint64_t causes_count(int section_id, int cause);
// Aborts counted by the hooks, all causes, for the conservation check against the
// registry's own abort counter.
uint64_t causes_total(int section_id);

#endif  // CCACHE_STRESS_CAUSES_H_
