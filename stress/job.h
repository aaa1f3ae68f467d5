// job.h: the frame every stress workload runs in (stress/job.c): flags, worker threads
// in rounds, the forcers, the signal handler's payload, abort causes and the report.
//
// A round: the workers run the workload's operation until the round's time is up, are
// joined, and the workload verifies its invariants single-threaded (round_end). The
// forcers run across rounds. After the last round the workload checks everything
// (finish), and the job checks the conservation of its counters and the abort
// coverage of the sections the workload uses.
#ifndef CCACHE_STRESS_JOB_H_
#define CCACHE_STRESS_JOB_H_

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "rseq/rseq.h"

struct worker {
  pthread_t thread;
  int id;
  uint64_t rng;
  long ops;
  // The progress watchdog's view (stress/job.c): relaxed, read by the main thread while
  // the worker runs.
  _Atomic long progress;  // operations finished
  _Atomic int tid, done;
  void *priv;  // the workload's per-worker state (kept across rounds)
  // The signal handler's payload, written only by handlers on this worker's thread
  // and read after the join.
  long sig_adds, sig_offered, sig_full;
  uint64_t sig_seq;
};

struct workload {
  const char *name;
  const char *const *sections;  // the sections it runs in RSEQ mode (NULL-terminated)
  int default_threads_per_cpu;
  void (*setup)(int nworkers);
  void (*op)(struct worker *w);          // one random operation
  void (*round_end)(struct worker *w, int nworkers);  // all workers joined
  void (*finish)(struct worker *w, int nworkers);     // last: check everything, free
  void (*summary)(FILE *out);            // one line of totals
};

extern const struct workload work_prim, work_alloc, work_ring;

// What the workloads need from the frame.
extern struct rseq_percpu_mode job_mode;  // resolved mode and index
extern int job_nslots;                    // rseq_index_count(index)
extern uint64_t job_seed;
// The current index value of the calling thread (0 in CAS mode, where the twins take
// any slot). Checked to be in range.
int job_current(void);

#endif  // CCACHE_STRESS_JOB_H_
