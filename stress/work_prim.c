// work_prim: every rseq primitive on shared per-CPU data. Checks:
//   - per-CPU sums add up exactly to the adds that committed (addv, offset_deref_addv);
//   - every list node is in exactly one list, once (cmpnev_storeoffp_load pops,
//     cmpeqv_storev pushes);
//   - every per-CPU stack item is in exactly one stack, once (percpu_stack_pop/push);
//   - every log append that committed is in its CPU's log exactly once, in order per
//     worker, and no record copied by trymemcpy is torn (RSEQ mode: the CAS twins of
//     the try-store primitives need a slot the caller owns, see rseq.h).
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "rseq/testing.h"
#include "stress/job.h"

static const char *const sections[] = {
    "rseq_addv", "rseq_offset_deref_addv", "rseq_cmpnev_storeoffp_load", "rseq_cmpeqv_storev",
    "rseq_cmpeqv_trystorev_storev", "rseq_cmpeqv_trymemcpy_storev", "rseq_percpu_stack_pop",
    "rseq_percpu_stack_push", NULL};

struct node {
  long id;
  intptr_t next;
};
#define NODES_PER_WORKER 16
#define NEXT_OFF ((long)offsetof(struct node, next))

struct record {  // a torn copy breaks a[i] == a[0] + i
  intptr_t a[4];
};

#define LOG_CAP (1 << 18)  // per CPU and round; appends stop at the cap (counted)
struct cpu_log {
  intptr_t count;
  intptr_t items[LOG_CAP];
  intptr_t records_n;
  struct record records[LOG_CAP];
};

#define STACK_CAP 64
#define STACK_ITEMS 32
struct stack_region {  // RSEQ layout: stopped, count, capacity, slots
  intptr_t stopped;
  intptr_t count, capacity;
  intptr_t slots[STACK_CAP];
};
struct cas_stack_region {
  rseq_u128_t top;
  rseq_u128_t slots[STACK_CAP];
};

struct counts {  // per worker
  long adds, deref_adds, appends, records, log_full, list_moves, stack_moves;
};

static intptr_t *sums, *deref_sums, deref_base;
static struct rseq_list *lists;
static struct node *nodes;
static long nnodes;
static struct cpu_log *logs;
static struct stack_region *stacks;
static struct cas_stack_region *cas_stacks;
static struct counts totals;

static bool cas(void) { return job_mode.mode == RSEQ_MODE_CAS; }
// CAS mode: the twins work on any slot; spread them at random.
static int slot_for(struct worker *w, int cpu) {
  return cas() ? (int)(test_rand(&w->rng) % (uint64_t)job_nslots) : cpu;
}

static void setup(int nworkers) {
  int n = job_nslots;
  sums = calloc((size_t)n, sizeof *sums);
  deref_sums = calloc((size_t)n, sizeof *deref_sums);
  deref_base = (intptr_t)deref_sums;
  lists = aligned_alloc(16, sizeof *lists * (size_t)n);
  memset(lists, 0, sizeof *lists * (size_t)n);
  nnodes = (long)nworkers * NODES_PER_WORKER;
  nodes = calloc((size_t)nnodes, sizeof *nodes);
  for (long i = 0; i < nnodes; i++) {  // all nodes start in slot 0's list
    nodes[i].id = i;
    nodes[i].next = lists[0].head;
    lists[0].head = (intptr_t)&nodes[i];
  }
  stacks = calloc((size_t)n, sizeof *stacks);
  cas_stacks = aligned_alloc(16, sizeof *cas_stacks * (size_t)n);
  memset(cas_stacks, 0, sizeof *cas_stacks * (size_t)n);
  for (int c = 0; c < n; c++) stacks[c].capacity = STACK_CAP;
  for (intptr_t i = 1; i <= STACK_ITEMS; i++) {  // all items start in slot 0's stack
    stacks[0].slots[stacks[0].count++] = i;
    CHECK_EQ(rseq_cas_stack_push(&cas_stacks[0].top, cas_stacks[0].slots, STACK_CAP, i),
             RSEQ_COMMIT);
  }
  if (!cas()) CHECK((logs = calloc((size_t)n, sizeof *logs)) != NULL);
}

static struct counts *counts_of(struct worker *w) {
  if (!w->priv) w->priv = calloc(1, sizeof(struct counts));
  return w->priv;
}

static void do_add(struct worker *w) {
  for (;;) {
    int cpu = job_current();
    if (rseq_percpu_addv(&job_mode, &sums[slot_for(w, cpu)], 1, cpu) == RSEQ_COMMIT) break;
  }
  counts_of(w)->adds++;
}

static void do_deref_add(struct worker *w) {
  for (;;) {
    int cpu = job_current();
    long off = slot_for(w, cpu) * (long)sizeof(intptr_t);
    int r = cas() ? rseq_cas_offset_deref_addv(&deref_base, off, 1)
                  : rseq_offset_deref_addv(job_mode.index, &deref_base, off, 1, cpu);
    if (r == RSEQ_COMMIT) break;
  }
  counts_of(w)->deref_adds++;
}

static void do_list_move(struct worker *w) {
  intptr_t node = 0;
  for (;;) {
    int cpu = job_current();
    int r = rseq_list_pop(&job_mode, &lists[slot_for(w, cpu)], NEXT_OFF, &node, cpu);
    if (r == RSEQ_CMPFAIL) return;  // that list is empty
    if (r == RSEQ_COMMIT) break;
  }
  struct node *n = (struct node *)node;
  CHECK(n >= nodes && n < nodes + nnodes, "popped a stray pointer %p", (void *)n);
  CHECK(n->id == n - nodes, "node %ld holds id %ld", (long)(n - nodes), n->id);
  for (;;) {
    int cpu = job_current();
    if (rseq_list_push(&job_mode, &lists[slot_for(w, cpu)], node, NEXT_OFF, cpu) == RSEQ_COMMIT)
      break;
  }
  counts_of(w)->list_moves++;
}

static void do_log_append(struct worker *w, bool record) {
  struct counts *k = counts_of(w);
  long seq = record ? k->records : k->appends;
  intptr_t item = (intptr_t)(w->id + 1) << 32 | seq;
  struct record rec;
  for (int i = 0; i < 4; i++) rec.a[i] = item + i;
  for (;;) {
    int cpu = job_current();
    struct cpu_log *l = &logs[cpu];
    intptr_t *count = record ? &l->records_n : &l->count;
    // Relaxed: a hint; the section compares it again before committing.
    intptr_t c = __atomic_load_n(count, __ATOMIC_RELAXED);
    if (c >= LOG_CAP) {
      k->log_full++;
      return;
    }
    int r = record ? rseq_cmpeqv_trymemcpy_storev(job_mode.index, count, c, &l->records[c], &rec,
                                                  sizeof rec, c + 1, cpu)
                   : rseq_cmpeqv_trystorev_storev(job_mode.index, count, c, &l->items[c], item,
                                                  c + 1, cpu);
    if (r == RSEQ_COMMIT) break;
  }
  if (record)
    k->records++;
  else
    k->appends++;
}

static int stack_pop(struct worker *w, intptr_t *item) {
  for (;;) {
    if (cas()) {
      struct cas_stack_region *s = &cas_stacks[slot_for(w, 0)];
      return rseq_cas_stack_pop(&s->top, s->slots, item);
    }
    int r = rseq_percpu_stack_pop(job_mode.index, (char *)stacks, sizeof *stacks,
                                  offsetof(struct stack_region, count),
                                  offsetof(struct stack_region, slots), item, job_current());
    if (r != RSEQ_ABORT) return r;
  }
}

static void stack_push(struct worker *w, intptr_t item) {
  for (;;) {
    int r;
    if (cas()) {
      struct cas_stack_region *s = &cas_stacks[slot_for(w, 0)];
      r = rseq_cas_stack_push(&s->top, s->slots, STACK_CAP, item);
    } else {
      r = rseq_percpu_stack_push(job_mode.index, (char *)stacks, sizeof *stacks,
                                 offsetof(struct stack_region, count),
                                 offsetof(struct stack_region, slots), item, job_current());
    }
    CHECK(r != RSEQ_CMPFAIL, "a stack was full with only %d items in all", STACK_ITEMS);
    if (r == RSEQ_COMMIT) return;
  }
}

static void do_stack_move(struct worker *w) {
  intptr_t item;
  if (stack_pop(w, &item) != RSEQ_COMMIT) return;  // this stack is empty
  CHECK(item >= 1 && item <= STACK_ITEMS, "popped a stray stack item %ld", (long)item);
  stack_push(w, item);
  counts_of(w)->stack_moves++;
}

static void op(struct worker *w) {
  uint64_t r = test_rand(&w->rng) % 6;
  if (cas() && (r == 3 || r == 4)) r = 5;  // no log appends in CAS mode (see the top)
  switch (r) {
    case 0: do_add(w); break;
    case 1: do_deref_add(w); break;
    case 2: do_list_move(w); break;
    case 3: do_log_append(w, false); break;
    case 4: do_log_append(w, true); break;
    default: do_stack_move(w); break;
  }
}

// Every append of the round is in the logs once, in order per worker; no torn record.
static void round_end(struct worker *w, int nworkers) {
  if (cas()) return;
  long *next = calloc((size_t)nworkers, sizeof *next);
  long *items = calloc((size_t)nworkers, sizeof *items);
  long *records = calloc((size_t)nworkers, sizeof *records);
  for (int c = 0; c < job_nslots; c++) {
    for (int t = 0; t < nworkers; t++) next[t] = -1;
    for (intptr_t i = 0; i < logs[c].count; i++) {
      intptr_t it = logs[c].items[i];
      int t = (int)(it >> 32) - 1;
      long seq = (long)(it & 0xffffffff);
      CHECK(t >= 0 && t < nworkers, "cpu %d log[%ld] holds garbage %lx", c, (long)i, (long)it);
      CHECK(seq > next[t], "cpu %d: worker %d seq %ld after %ld", c, t, seq, next[t]);
      next[t] = seq;
      items[t]++;
    }
    for (intptr_t i = 0; i < logs[c].records_n; i++) {
      struct record *r = &logs[c].records[i];
      for (int k = 1; k < 4; k++)
        CHECK(r->a[k] == r->a[0] + k, "cpu %d record %ld torn", c, (long)i);
      int t = (int)(r->a[0] >> 32) - 1;
      CHECK(t >= 0 && t < nworkers, "cpu %d record %ld holds garbage", c, (long)i);
      records[t]++;
    }
    logs[c].count = logs[c].records_n = 0;
  }
  for (int t = 0; t < nworkers; t++) {
    struct counts *k = counts_of(&w[t]);
    CHECK(items[t] == k->appends, "worker %d: %ld items logged, %ld appends committed", t,
          items[t], k->appends);
    CHECK(records[t] == k->records, "worker %d: %ld records logged, %ld committed", t, records[t],
          k->records);
    totals.appends += k->appends;
    totals.records += k->records;
    k->appends = k->records = 0;  // the logs are empty again: sequence numbers restart
  }
  free(next);
  free(items);
  free(records);
}

static void finish(struct worker *w, int nworkers) {
  round_end(w, nworkers);
  for (int t = 0; t < nworkers; t++) {
    struct counts *k = counts_of(&w[t]);
    totals.adds += k->adds;
    totals.deref_adds += k->deref_adds;
    totals.list_moves += k->list_moves;
    totals.stack_moves += k->stack_moves;
    totals.log_full += k->log_full;
    free(k);
    w[t].priv = NULL;
  }
  long s = 0, d = 0;
  for (int c = 0; c < job_nslots; c++) {
    s += sums[c];
    d += deref_sums[c];
  }
  CHECK(s == totals.adds, "sums %ld != adds committed %ld", s, totals.adds);
  CHECK(d == totals.deref_adds, "deref sums %ld != deref adds committed %ld", d, totals.deref_adds);
  char *seen = calloc((size_t)nnodes, 1);
  long found = 0;
  for (int c = 0; c < job_nslots; c++) {
    for (intptr_t p = lists[c].head; p; p = ((struct node *)p)->next) {
      struct node *n = (struct node *)p;
      CHECK(n >= nodes && n < nodes + nnodes, "list %d holds a stray pointer", c);
      CHECK(!seen[n - nodes], "node %ld is in the lists twice", (long)(n - nodes));
      seen[n - nodes] = 1;
      CHECK(++found <= nnodes, "list %d has a cycle", c);
    }
  }
  CHECK(found == nnodes, "lists hold %ld of %ld nodes", found, nnodes);
  char stack_seen[STACK_ITEMS + 1] = {0};
  int stack_found = 0;
  for (int c = 0; c < job_nslots; c++) {
    intptr_t item;
    if (cas()) {
      while (rseq_cas_stack_pop(&cas_stacks[c].top, cas_stacks[c].slots, &item) == RSEQ_COMMIT) {
        CHECK(item >= 1 && item <= STACK_ITEMS && !stack_seen[item], "stack item %ld", (long)item);
        stack_seen[item] = 1;
        stack_found++;
      }
    } else {
      CHECK(stacks[c].count >= 0 && stacks[c].count <= STACK_CAP, "stack %d count %ld", c,
            (long)stacks[c].count);
      for (intptr_t k = 0; k < stacks[c].count; k++) {
        item = stacks[c].slots[k];
        CHECK(item >= 1 && item <= STACK_ITEMS && !stack_seen[item], "cpu %d stack item %ld", c,
              (long)item);
        stack_seen[item] = 1;
        stack_found++;
      }
    }
  }
  CHECK(stack_found == STACK_ITEMS, "stacks hold %d of %d items", stack_found, STACK_ITEMS);
  free(seen);
  free(logs);
  free(stacks);
  free(cas_stacks);
  free(nodes);
  free(lists);
  free(deref_sums);
  free(sums);
}

static void summary(FILE *out) {
  fprintf(out, "prim: adds %ld, deref adds %ld, list moves %ld (%ld nodes conserved), stack moves "
               "%ld, appends %ld, records %ld (log full %ld)\n",
          totals.adds, totals.deref_adds, totals.list_moves, nnodes, totals.stack_moves,
          totals.appends, totals.records, totals.log_full);
}

const struct workload work_prim = {
    .name = "prim",
    .sections = sections,
    .default_threads_per_cpu = 4,
    .setup = setup,
    .op = op,
    .round_end = round_end,
    .finish = finish,
    .summary = summary,
};
