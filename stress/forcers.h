// forcers.h: the things that make critical sections abort. Each is a separate
// component; any combination can run at once around a stress job's workers.
//
//   migrate     a thread rewrites the workers' affinities (sched_setaffinity) every
//               migrate_us: random CPU subsets and single CPUs
//   signal      a POSIX timer per worker (SIGEV_THREAD_ID) every signal_us
//   storm       a thread sends tgkill bursts of storm_burst signals every storm_us
//   fence       a thread fences a random CPU, or all, with membarrier
//               (PRIVATE_EXPEDITED_RSEQ) every fence_us
//   antagonist  stress-ng (cpu, yield, switch, timer, affinity) pinned to the job's
//               CPUs, started at forcers_start and reaped by forcers_stop
//   cgroup      a thread flips cpuset.cpus of the job's own cpuset cgroup every
//               cgroup_us (the cgroup is made by cgroup.h's supervisor)
//
// Each forcer counts what it did; one that cannot run says why, and the report marks
// it not exercised.
#ifndef CCACHE_STRESS_FORCERS_H_
#define CCACHE_STRESS_FORCERS_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
  FORCE_MIGRATE = 1 << 0,
  FORCE_SIGNAL = 1 << 1,
  FORCE_STORM = 1 << 2,
  FORCE_FENCE = 1 << 3,
  FORCE_ANTAGONIST = 1 << 4,
  FORCE_CGROUP = 1 << 5,
  FORCE_ALL = (1 << 6) - 1,
  FORCE_COUNT = 6,
};
const char *forcer_name(int bit_index);
// Parses "migrate,signal,storm,fence,antagonist,cgroup", "all" or "none"; -1 if unknown.
int forcers_parse(const char *list);

struct forcer_config {
  unsigned mask;
  int signo;             // the signal the timers and the storm send
  long migrate_us, signal_us, storm_us, fence_us, cgroup_us;
  int storm_burst;
  const char *antagonists;  // stress-ng stressors, comma-separated
  double seconds;           // how long the job runs (stress-ng's own --timeout)
  const char *cgroup_cpus_file;  // cpuset.cpus of the job's cgroup (FORCE_CGROUP)
  const char *cgroup_why_not;    // when there is none: why (the supervisor's reason)
  uint64_t seed;
};

struct forcer_stats {
  uint64_t done[FORCE_COUNT];    // affinity writes, timers armed, tgkills, fences,
                                 // stress-ng processes started, cpuset writes
  uint64_t errors[FORCE_COUNT];  // refused (e.g. EINVAL outside a shrunk cpuset)
  char why_not[FORCE_COUNT][160];  // non-empty: this forcer did not run, and why
  char detail[FORCE_COUNT][96];  // how it ran: the fence method, how stress-ng ended
};

// Writes the CPUs cpus[i] with in[i] (every one when in is NULL) as a cpuset list
// ("0,1,5") into out; returns its length.
size_t cpu_list_format(char *out, size_t size, const int *cpus, const bool *in, int n);

// Starts the forcer threads and processes of cfg->mask. The signal handler for
// cfg->signo must be installed by the caller first.
void forcers_start(const struct forcer_config *cfg);
// Each worker thread calls these around its work: they register it as a target of
// the migrate and storm forcers and arm its timer.
void forcers_thread_begin(void);
void forcers_thread_end(void);
// Stops everything (stress-ng within a bounded time) and fills *out.
void forcers_stop(struct forcer_stats *out);

#endif  // CCACHE_STRESS_FORCERS_H_
