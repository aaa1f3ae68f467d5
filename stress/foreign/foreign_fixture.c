// foreign_fixture: a small program over the standalone sections of
// foreign_sections.S (no rseq/ code): per-CPU counters and per-CPU lists. It prints
// only what does not depend on which CPUs it ran on, so two undisturbed runs, and
// every run with a correctly retried abort, print the same bytes:
//   the counters' sum, how many adds were started, and for the nodes: how many were
//   pushed, how many came back (popped, or left in the lists), their id sum, and how
//   many were seen twice (a list that a retried push made cyclic).
// It uses the struct rseq that glibc registers (__rseq_offset), or registers one
// itself when glibc does not (GLIBC_TUNABLES=glibc.pthread.rseq=0).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NODES 4000
#define MAX_CPUS 4096

struct node {
  struct node *next;  // first: the sections store it at offset 0
  long id;
};

int foreign_percpu_add(struct rseq *rs, long *counters, long inc);
int foreign_list_push(struct rseq *rs, struct node **heads, struct node *n);
struct node *foreign_list_pop(struct rseq *rs, struct node **heads);

long foreign_adds_started;  // only the broken twin's add section writes it

static long counters[MAX_CPUS];
static struct node *heads[MAX_CPUS];
static struct node nodes[NODES];
static unsigned char seen[NODES];
static __thread struct rseq own_area __attribute__((aligned(32)));

static struct rseq *rseq_area(void) {
  if (__rseq_size > 0) return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
  if (syscall(SYS_rseq, &own_area, sizeof own_area, 0, 0x53053053) != 0) return NULL;
  return &own_area;
}

int main(void) {
  struct rseq *rs = rseq_area();
  if (!rs) {
    printf("SKIPPED: this kernel has no rseq\n");
    return 0;
  }
  long popped = 0, popped_ids = 0;
  for (long i = 0; i < NODES; i++) {
    nodes[i].id = i;
    if (rs->cpu_id >= MAX_CPUS) {
      fprintf(stderr, "foreign_fixture: cpu %u >= %d\n", rs->cpu_id, MAX_CPUS);
      return 2;
    }
#ifndef FOREIGN_BROKEN
    foreign_adds_started++;  // the correct twin counts here, outside the section
#endif
    while (foreign_percpu_add(rs, counters, i % 7 + 1) != 0) {
    }
    while (foreign_list_push(rs, heads, &nodes[i]) != 0) {
    }
    if (i % 3 == 2) {
      struct node *n;
      while ((n = foreign_list_pop(rs, heads)) == (struct node *)-1) {
      }
      if (n) {
        popped++;
        popped_ids += n->id;
        seen[n->id]++;
      }
    }
  }
  long sum = 0, left = 0, left_ids = 0, twice = 0;
  for (int c = 0; c < MAX_CPUS; c++) {
    sum += counters[c];
    // At most NODES steps: a cyclic list (a push retried after its commit) ends here.
    long steps = 0;
    for (struct node *n = heads[c]; n && steps < NODES; n = n->next, steps++) {
      if (seen[n->id]++) {
        twice++;
        break;
      }
      left++;
      left_ids += n->id;
    }
  }
  // Under the broken twin the add section counts foreign_adds_started too.
  printf("counters sum %ld, adds started %ld\n", sum, foreign_adds_started);
  printf("nodes pushed %d, returned %ld (popped or left), id sum %ld, seen twice %ld\n", NODES,
         popped + left, popped_ids + left_ids, twice);
  return 0;
}
