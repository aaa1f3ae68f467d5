// fence.c: make every critical section running on a CPU finish or abort.
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rseq/rseq.h"

static pthread_once_t membarrier_once = PTHREAD_ONCE_INIT;
static bool membarrier_ok;  // written inside pthread_once, read after it
static char fence_method[160];
// Relaxed: a test switch, set before the fences it affects.
static _Atomic bool force_fallback;

static int membarrier(int cmd, unsigned flags, int cpu) {
  return (int)syscall(__NR_membarrier, cmd, flags, cpu);
}

static void membarrier_setup(void) {
  int cmds = membarrier(MEMBARRIER_CMD_QUERY, 0, 0);
  if (cmds < 0) {
    snprintf(fence_method, sizeof fence_method,
             "migration (membarrier unsupported: MEMBARRIER_CMD_QUERY failed with %s)",
             strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    return;
  }
  if (!(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)) {
    snprintf(fence_method, sizeof fence_method,
             "migration (membarrier unsupported: no PRIVATE_EXPEDITED_RSEQ)");
    return;
  }
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) {
    snprintf(fence_method, sizeof fence_method,
             "migration (membarrier unsupported: REGISTER_PRIVATE_EXPEDITED_RSEQ failed with %s)",
             strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    return;
  }
  membarrier_ok = true;
  snprintf(fence_method, sizeof fence_method, "membarrier");
}

const char *rseq_fence_method(void) {
  pthread_once(&membarrier_once, membarrier_setup);
  if (atomic_load_explicit(&force_fallback, memory_order_relaxed))
    return "migration (forced by rseq_fence_force_fallback)";
  return fence_method;
}

void rseq_fence_force_fallback(bool on) {
  atomic_store_explicit(&force_fallback, on, memory_order_relaxed);
}

// The fallback: run the calling thread on `cpu`. To get there the scheduler must
// switch out whatever ran on that CPU, and a thread switched out inside a critical
// section is aborted when it next returns to user space. Needs `cpu` in our allowed set.
static int fence_by_migration(const cpu_set_t *cpus) {
  cpu_set_t saved;
  if (sched_getaffinity(0, sizeof saved, &saved) != 0) return -1;
  int rc = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, cpus)) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
      rc = -1;
      break;
    }
    // The affinity call returns on the new CPU: the switch has happened.
    sched_yield();
  }
  int err = errno;
  sched_setaffinity(0, sizeof saved, &saved);
  errno = err;
  return rc;
}

int rseq_fence_cpu(int cpu) {
  if (cpu < 0 || cpu >= rseq_possible_cpus() || cpu >= CPU_SETSIZE) {
    errno = EINVAL;
    return -1;
  }
  pthread_once(&membarrier_once, membarrier_setup);
  if (membarrier_ok && !atomic_load_explicit(&force_fallback, memory_order_relaxed))
    return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return fence_by_migration(&one);
}

int rseq_fence_all(void) {
  pthread_once(&membarrier_once, membarrier_setup);
  if (membarrier_ok && !atomic_load_explicit(&force_fallback, memory_order_relaxed))
    return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
  // Only CPUs we may run on can be reached; a thread elsewhere is outside our cpuset.
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
  return fence_by_migration(&allowed);
}
