// test_liveness.h: TEST ONLY, header-only (it calls whichever rseq variant the test
// links). Liveness: a retry loop must commit within a few retries after a permanent
// migration between its index read and its section; a loop that re-uses an index read
// before the abort retries for ever. test_liveness_begin arms an abort hook for the
// next operation: its budget+1st abort fails the test at once, naming `what`, the
// section that keeps aborting and the thread's index now, instead of a hang.
// test_liveness_end disarms it and returns how many aborts the operation took. Uses
// rseq_set_abort_hook: not with the stress jobs' abort causes.
#ifndef CCACHE_RSEQ_TEST_LIVENESS_H_
#define CCACHE_RSEQ_TEST_LIVENESS_H_

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "rseq/rseq.h"

static const char *test_liveness_what_;
static int test_liveness_budget_;
static int test_liveness_aborts_;  // the hook runs in the testing thread only

static void test_liveness_hook_(int section_id) {
  if (++test_liveness_aborts_ <= test_liveness_budget_) return;
  const char *name = "?";
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    if (rseq_registry_get(i, &s) == 0 && s.id == section_id) name = s.name;
  }
  printf("FAIL: liveness: %s: section %s aborted %d times in one operation (cpu_id now %d, "
         "mm_cid %d): a retry loop that re-uses an index read from before the abort?\n",
         test_liveness_what_, name, test_liveness_aborts_, rseq_current_index(RSEQ_INDEX_CPU_ID),
         rseq_mm_cid_available() ? rseq_current_index(RSEQ_INDEX_MM_CID) : -1);
  fflush(stdout);
  _exit(1);
}

// The registry id of the section called `name`; -1 if there is none.
static inline int test_section_id(const char *name) {
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    if (rseq_registry_get(i, &s) == 0 && !strcmp(s.name, name)) return s.id;
  }
  return -1;
}

static inline void test_liveness_begin(const char *what, int budget) {
  test_liveness_what_ = what;
  test_liveness_budget_ = budget;
  test_liveness_aborts_ = 0;
  rseq_set_abort_hook(test_liveness_hook_);
}

static inline int test_liveness_end(void) {
  rseq_set_abort_hook(NULL);
  return test_liveness_aborts_;
}

#endif  // CCACHE_RSEQ_TEST_LIVENESS_H_
