// broken_sections.h: TEST ONLY. Deliberately broken critical sections for abortscan's
// self-test (see broken_sections.c). Never link them into anything else.
#ifndef CCACHE_RSEQ_BROKEN_SECTIONS_H_
#define CCACHE_RSEQ_BROKEN_SECTIONS_H_

#include <stdint.h>

struct broken_log {
  intptr_t count;
  intptr_t appended;  // must equal count
  intptr_t entries[256];
};

// Each appends `value` at entries[n] if count == n, on CPU `cpu` (cpu_id index).
int rseq_broken_commit_early(struct broken_log *log, intptr_t n, intptr_t value, int cpu);
int rseq_broken_two_commits(struct broken_log *log, intptr_t n, intptr_t value, int cpu);
int rseq_broken_side_effect(struct broken_log *log, intptr_t n, intptr_t value, int cpu);
int rseq_broken_unlisted_exit(struct broken_log *log, intptr_t n, intptr_t value, int cpu);

#endif  // CCACHE_RSEQ_BROKEN_SECTIONS_H_
