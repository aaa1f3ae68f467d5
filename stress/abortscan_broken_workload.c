// abortscan_broken_workload: drives the deliberately broken sections of
// //rseq:broken_sections and checks what a correct section would guarantee: every
// counted entry was written, appended == count. Undisturbed, the checks hold; with an
// abort at the wrong instruction they fail, which abortscan --expect-broken requires.
#include <stdio.h>
#include <string.h>

#include "rseq/broken_sections.h"
#include "rseq/rseq.h"
#include "stress/pin.h"

typedef int (*append_fn)(struct broken_log *, intptr_t, intptr_t, int);

static int run(const char *name, append_fn append) {
  static struct broken_log logs[1024];
  memset(logs, 0, sizeof logs);
  for (intptr_t i = 0; i < 100; i++) {
    for (;;) {
      int cpu = rseq_current_index(RSEQ_INDEX_CPU_ID);
      intptr_t n = logs[cpu].count;
      if (append(&logs[cpu], n, 1000 + i, cpu) == RSEQ_COMMIT) break;
    }
  }
  int bad = 0;
  intptr_t total = 0;
  for (int c = 0; c < 1024; c++) {
    total += logs[c].count;
    if (name[12] != 'c' && logs[c].appended != logs[c].count) {  // not commit_early
      printf("INVARIANT FAILED: %s: cpu %d appended %ld, count %ld\n", name, c, (long)logs[c].appended, (long)logs[c].count);
      bad = 1;
    }
    for (intptr_t k = 0; k < logs[c].count; k++)
      if (logs[c].entries[k] < 1000) {
        printf("INVARIANT FAILED: %s: cpu %d entry %ld never written\n", name, c, (long)k);
        bad = 1;
      }
  }
  if (total != 100) {
    printf("INVARIANT FAILED: %s: %ld entries, want 100\n", name, (long)total);
    bad = 1;
  }
  return bad;
}

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!rseq_available()) {
    printf("SKIPPED: rseq unavailable: %s\n", rseq_unavailable_reason());
    return 0;
  }
  pin_to_first_allowed_cpu();  // deterministic section counts (see pin.h)
  int bad = run("rseq_broken_commit_early", rseq_broken_commit_early);
  bad |= run("rseq_broken_two_commits", rseq_broken_two_commits);
  bad |= run("rseq_broken_side_effect", rseq_broken_side_effect);
  bad |= run("rseq_broken_unlisted_exit", rseq_broken_unlisted_exit);
  printf("REGISTRY ");
  rseq_registry_dump_json(stdout);
  if (bad) return 1;
  printf("INVARIANTS OK\n");
  return 0;
}
