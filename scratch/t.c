#include "rseq/rseq.h"
#include <stdio.h>
int main(void) {
  printf("avail %d reason '%s' owner %s mmcid %d\n", rseq_available(), rseq_unavailable_reason(), rseq_owner_name(rseq_thread_owner()), rseq_mm_cid_available());
  intptr_t v = 0; int cpu = rseq_current_index(RSEQ_INDEX_CPU_ID);
  printf("cpu %d r=%d v=%ld\n", cpu, rseq_addv(RSEQ_INDEX_CPU_ID, &v, 5, cpu), (long)v);
  rseq_registry_dump_json(stdout);
  printf("fence %d %s\n", rseq_fence_cpu(0), rseq_fence_method());
  return 0;
}
