// pin.h: pin the calling thread to its first allowed CPU. The abortscan workloads run
// pinned so that every run uses the same sections the same number of times, which is
// what abortscan compares against.
#ifndef CCACHE_STRESS_PIN_H_
#define CCACHE_STRESS_PIN_H_

#include <sched.h>

static inline void pin_to_first_allowed_cpu(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return;
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (CPU_ISSET(c, &set)) {
      CPU_ZERO(&set);
      CPU_SET(c, &set);
      sched_setaffinity(0, sizeof set, &set);
      return;
    }
  }
}

#endif  // CCACHE_STRESS_PIN_H_
