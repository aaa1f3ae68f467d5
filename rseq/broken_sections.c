// broken_sections.c: TEST ONLY (//rseq:broken_sections, testonly). Four critical
// sections that break the discipline on purpose, one bug each, for abortscan's
// self-test: abortscan must flag every one of them. Each appends an entry to a per-CPU
// log {count, entries[]} plus a per-CPU "appended" counter that must equal count.
#include "rseq/broken_sections.h"

#include "rseq/rseq_asm.h"

static inline uint32_t *index_field(struct rseq_abi *a) { return &a->cpu_id; }

// Bug 1: the commit (count = n + 1) comes BEFORE the last preparatory store (the
// entry). An abort between them leaves a counted entry that was never written.
int rseq_broken_commit_early(struct broken_log *log, intptr_t n, intptr_t value, int cpu) {
  enum { id = 12 };
  struct rseq_abi *area = rseq_thread_area();
  uint32_t *idx = index_field(area);
  intptr_t *v = &log->count, *v2 = &log->entries[n];
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_broken_commit_early")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"
               "movq %[newv], (%[v])\n\t"    // the commit, too early
               "movq %[value], (%[v2])\n\t"  // the entry, after it
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(n), [newv] "r"(n + 1), [v2] "r"(v2), [value] "r"(value)
               : "memory", "cc", "rax"
               : abort, cmpfail);
  rseq_count_committed(id);
  return RSEQ_COMMIT;
abort:
  rseq_count_aborted(id);
  return RSEQ_ABORT;
cmpfail:
  return RSEQ_CMPFAIL;
}

// Bug 2: two committing stores (count, then appended). An abort between them commits
// the count without the counter.
int rseq_broken_two_commits(struct broken_log *log, intptr_t n, intptr_t value, int cpu) {
  enum { id = 13 };
  struct rseq_abi *area = rseq_thread_area();
  uint32_t *idx = index_field(area);
  intptr_t *v = &log->count, *v2 = &log->entries[n], *v3 = &log->appended;
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_broken_two_commits")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"
               "movq %[value], (%[v2])\n\t"
               "movq %[newv], (%[v])\n\t"    // first commit
               "incq (%[v3])\n\t"            // second commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(n), [newv] "r"(n + 1), [v2] "r"(v2), [value] "r"(value), [v3] "r"(v3)
               : "memory", "cc", "rax"
               : abort, cmpfail);
  rseq_count_committed(id);
  return RSEQ_COMMIT;
abort:
  rseq_count_aborted(id);
  return RSEQ_ABORT;
cmpfail:
  return RSEQ_CMPFAIL;
}

// Bug 3: a side effect in the body that is not idempotent (appended++ before the
// commit): every abort after it and the retry count the entry twice.
int rseq_broken_side_effect(struct broken_log *log, intptr_t n, intptr_t value, int cpu) {
  enum { id = 14 };
  struct rseq_abi *area = rseq_thread_area();
  uint32_t *idx = index_field(area);
  intptr_t *v = &log->count, *v2 = &log->entries[n], *v3 = &log->appended;
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_broken_side_effect")
               RSEQ_ASM_DEFINE_EXIT_POINT("1f", cmpfail)
               RSEQ_ASM_START
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"
               "incq (%[v3])\n\t"            // not idempotent
               "movq %[value], (%[v2])\n\t"
               "movq %[newv], (%[v])\n\t"    // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(n), [newv] "r"(n + 1), [v2] "r"(v2), [value] "r"(value), [v3] "r"(v3)
               : "memory", "cc", "rax"
               : abort, cmpfail);
  rseq_count_committed(id);
  return RSEQ_COMMIT;
abort:
  rseq_count_aborted(id);
  return RSEQ_ABORT;
cmpfail:
  return RSEQ_CMPFAIL;
}

// Bug 4: the code is right, but its exit to cmpfail is not in __rseq_exit_point_array
// (no RSEQ_ASM_DEFINE_EXIT_POINT): a debugger or tool that steps over sections with
// the table does not know the branch leaves. Only the static check can see it.
int rseq_broken_unlisted_exit(struct broken_log *log, intptr_t n, intptr_t value, int cpu) {
  enum { id = 15 };
  struct rseq_abi *area = rseq_thread_area();
  uint32_t *idx = index_field(area);
  intptr_t *v = &log->count, *v2 = &log->entries[n], *v3 = &log->appended;
  __asm__ goto(RSEQ_ASM_DEFINE_TABLE("rseq_broken_unlisted_exit")
               RSEQ_ASM_START
               "cmpq (%[v]), %[expect]\n\t"
               "jnz %l[cmpfail]\n\t"         // an exit, not listed
               "movq %[value], (%[v2])\n\t"
               "movq %[newv], (%[v])\n\t"    // commit
               "2:\n\t"
               RSEQ_ASM_DEFINE_ABORT
               : /* no outputs */
               : [id] "i"(id), [cpu] "r"(cpu), [idx] "r"(idx), [area] "r"(area), [v] "r"(v),
                 [expect] "r"(n), [newv] "r"(n + 1), [v2] "r"(v2), [value] "r"(value)
               : "memory", "cc", "rax"
               : abort, cmpfail);
  rseq_count_committed(id);
  (*v3)++;  // after the commit, outside the section: appended stays equal to count
  return RSEQ_COMMIT;
abort:
  rseq_count_aborted(id);
  return RSEQ_ABORT;
cmpfail:
  return RSEQ_CMPFAIL;
}
