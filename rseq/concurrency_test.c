// concurrency_test: many threads (4 x CPUs by default) run every primitive on per-CPU
// data with delay injection inside the sections and a signal into each thread every
// few microseconds; the signal handlers run primitives too. Then, single-threaded:
//   - per-CPU sums add up exactly to the adds that reported COMMIT;
//   - every list node is in exactly one list, once (none lost, none duplicated);
//   - every per-CPU stack item is in exactly one stack, once;
//   - every log append that committed is in the logs exactly once, in order per
//     thread and CPU, and no record copied by trymemcpy is torn;
//   - in rseq mode, every section used was aborted at least once (it keeps running,
//     for at least --min-seconds and up to --max-seconds, until that is so), so the
//     abort paths were really taken.
// Flags: --mode rseq|cas --index cpu|cid --threads N --reps N --inject-loops N
//        --signal-us N --block none|yield|sleep|raise --block-every N --seed S --min-seconds X --max-seconds N
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

struct options {
  enum rseq_mode mode;
  enum rseq_index index;
  int threads;
  long reps;
  uint32_t inject_loops;
  long signal_us;
  enum rseq_inject_block block;
  uint32_t block_every;
  uint64_t seed;
  double min_seconds;
  int max_seconds;
};

static struct options opt = {
    .mode = RSEQ_MODE_RSEQ,
    .index = RSEQ_INDEX_CPU_ID,
    .threads = 0,  // 0: 4 x allowed CPUs
    .reps = 20000,
    .inject_loops = 200,
    .signal_us = 50,
    .block = RSEQ_BLOCK_NONE,
    .block_every = 0,
    .seed = 1,
    .min_seconds = 1.0,
    .max_seconds = 20,
};
static struct rseq_percpu_mode mode;
static int ncpu;

// --- shared per-CPU data

struct node {
  long id;
  intptr_t next;
};
#define NODES_PER_THREAD 16
#define NEXT_OFF ((long)offsetof(struct node, next))

struct record {  // copied with trymemcpy; a torn copy breaks a[i] == a[0] + i
  intptr_t a[4];
};

struct cpu_log {
  intptr_t count;
  intptr_t *items;          // appended with trystorev_storev
  struct record *records;   // appended with trymemcpy_storev (count shared with records_n)
  intptr_t records_n;
};

static intptr_t *sums;           // [ncpu], rseq_addv
static intptr_t *deref_sums[1];  // [ncpu], rseq_offset_deref_addv through deref_base
static intptr_t deref_base;
static struct rseq_list *lists;  // [ncpu]
static struct node *nodes;
static struct cpu_log *logs;     // [ncpu], rseq mode only
static long log_capacity;

// Per-CPU array stacks (rseq_percpu_stack_* / rseq_cas_stack_*), holding STACK_ITEMS
// items that threads keep moving; a stack holds them all, so a push never finds it full.
#define STACK_CAP 64
#define STACK_ITEMS 32
struct stack_region {  // rseq mode layout: stopped, {count, capacity}, slots
  intptr_t stopped;
  intptr_t count, capacity;
  intptr_t slots[STACK_CAP];
};
struct cas_stack_region {  // CAS mode layout
  rseq_u128_t top;
  rseq_u128_t slots[STACK_CAP];
};
static struct stack_region *stacks;
static struct cas_stack_region *cas_stacks;

static _Atomic long handler_adds;  // relaxed: a total read after the threads are joined

static void on_signal(int sig) {
  (void)sig;
  int saved = errno;
  // The handler runs a critical section itself: async-signal-safe by design (no locks,
  // no allocation; an interrupted section of this thread was aborted before we got here).
  for (;;) {
    int cpu = mode.mode == RSEQ_MODE_CAS ? 0 : rseq_current_index(mode.index);
    if (rseq_percpu_addv(&mode, &sums[cpu], 1, cpu) == RSEQ_COMMIT) break;
  }
  atomic_fetch_add_explicit(&handler_adds, 1, memory_order_relaxed);
  errno = saved;
}

static int current(void) {
  if (mode.mode == RSEQ_MODE_CAS) return 0;  // CAS twins ignore it; spread by thread instead
  int cpu = rseq_current_index(mode.index);
  CHECK(cpu >= 0 && cpu < ncpu, "index %d out of [0, %d)", cpu, ncpu);
  return cpu;
}

struct worker {
  pthread_t thread;
  int id;
  long adds, deref_adds, appends, records;
  uint64_t rng;
  void *timer;
};

static _Atomic int stop_flag;  // relaxed: a hint to stop early, checked each iteration

static void start_timer(struct worker *w) {
  if (opt.signal_us > 0) CHECK(test_thread_timer_start(&w->timer, SIGUSR1, opt.signal_us) == 0);
}

static void stop_timer(struct worker *w) {
  if (opt.signal_us > 0) test_thread_timer_stop(w->timer);
}

static void do_add(struct worker *w) {
  for (;;) {
    int cpu = current();
    int slot = mode.mode == RSEQ_MODE_CAS ? w->id % ncpu : cpu;
    if (rseq_percpu_addv(&mode, &sums[slot], 1, cpu) == RSEQ_COMMIT) break;
  }
  w->adds++;
}

static void do_deref_add(struct worker *w) {
  for (;;) {
    int cpu = current();
    int slot = mode.mode == RSEQ_MODE_CAS ? w->id % ncpu : cpu;
    long off = slot * (long)sizeof(intptr_t);
    int r = mode.mode == RSEQ_MODE_CAS ? rseq_cas_offset_deref_addv(&deref_base, off, 1)
                                       : rseq_offset_deref_addv(mode.index, &deref_base, off, 1, cpu);
    if (r == RSEQ_COMMIT) break;
  }
  w->deref_adds++;
}

static void do_list_move(struct worker *w) {
  intptr_t node = 0;
  for (;;) {
    int cpu = current();
    int slot = mode.mode == RSEQ_MODE_CAS ? (int)(test_rand(&w->rng) % (uint64_t)ncpu) : cpu;
    int r = rseq_list_pop(&mode, &lists[slot], NEXT_OFF, &node, cpu);
    if (r == RSEQ_CMPFAIL) return;  // that CPU's list is empty
    if (r == RSEQ_COMMIT) break;
  }
  struct node *n = (struct node *)node;
  CHECK(n >= nodes && n < nodes + (long)opt.threads * NODES_PER_THREAD, "popped a stray pointer");
  CHECK(n->id == n - nodes, "node %ld holds id %ld", (long)(n - nodes), n->id);
  for (;;) {
    int cpu = current();
    int slot = mode.mode == RSEQ_MODE_CAS ? (int)(test_rand(&w->rng) % (uint64_t)ncpu) : cpu;
    if (rseq_list_push(&mode, &lists[slot], node, NEXT_OFF, cpu) == RSEQ_COMMIT) break;
  }
}

static void do_log_append(struct worker *w) {
  intptr_t item = (intptr_t)(w->id + 1) << 32 | w->appends;
  for (;;) {
    int cpu = current();
    struct cpu_log *l = &logs[cpu];
    intptr_t c = __atomic_load_n(&l->count, __ATOMIC_RELAXED);
    CHECK(c < log_capacity, "log of cpu %d full", cpu);
    int r = rseq_cmpeqv_trystorev_storev(mode.index, &l->count, c, &l->items[c], item, c + 1, cpu);
    if (r == RSEQ_COMMIT) break;
  }
  w->appends++;
}

static void do_record_append(struct worker *w) {
  struct record rec;
  intptr_t base = (intptr_t)(w->id + 1) << 32 | w->records;
  for (int i = 0; i < 4; i++) rec.a[i] = base + i;
  for (;;) {
    int cpu = current();
    struct cpu_log *l = &logs[cpu];
    intptr_t c = __atomic_load_n(&l->records_n, __ATOMIC_RELAXED);
    CHECK(c < log_capacity, "records of cpu %d full", cpu);
    int r = rseq_cmpeqv_trymemcpy_storev(mode.index, &l->records_n, c, &l->records[c], &rec,
                                         sizeof rec, c + 1, cpu);
    if (r == RSEQ_COMMIT) break;
  }
  w->records++;
}

static int stack_pop(struct worker *w, intptr_t *item) {
  for (;;) {
    if (mode.mode == RSEQ_MODE_CAS) {
      struct cas_stack_region *s = &cas_stacks[test_rand(&w->rng) % (uint64_t)ncpu];
      return rseq_cas_stack_pop(&s->top, s->slots, item);
    }
    int cpu = current();
    int r = rseq_percpu_stack_pop(mode.index, (char *)stacks, sizeof *stacks,
                                  offsetof(struct stack_region, count),
                                  offsetof(struct stack_region, slots), item, cpu);
    if (r != RSEQ_ABORT) return r;
  }
}

static void stack_push(struct worker *w, intptr_t item) {
  for (;;) {
    int r;
    if (mode.mode == RSEQ_MODE_CAS) {
      struct cas_stack_region *s = &cas_stacks[test_rand(&w->rng) % (uint64_t)ncpu];
      r = rseq_cas_stack_push(&s->top, s->slots, STACK_CAP, item);
    } else {
      int cpu = current();
      r = rseq_percpu_stack_push(mode.index, (char *)stacks, sizeof *stacks,
                                 offsetof(struct stack_region, count),
                                 offsetof(struct stack_region, slots), item, cpu);
    }
    CHECK(r != RSEQ_CMPFAIL, "a stack was full with only %d items in all", STACK_ITEMS);
    if (r == RSEQ_COMMIT) return;
  }
}

static void do_stack_move(struct worker *w) {
  intptr_t item;
  if (stack_pop(w, &item) != RSEQ_COMMIT) return;  // this stack is empty
  CHECK(item >= 1 && item <= STACK_ITEMS, "popped a stray item %ld", (long)item);
  stack_push(w, item);
}

static void *worker_main(void *p) {
  struct worker *w = p;
  start_timer(w);
  for (long i = 0; i < opt.reps && !atomic_load_explicit(&stop_flag, memory_order_relaxed); i++) {
    uint64_t r = test_rand(&w->rng) % 6;
    if (mode.mode == RSEQ_MODE_CAS && (r == 3 || r == 4)) r = 5;  // see main()
    switch (r) {
      case 0:
        do_add(w);
        break;
      case 1:
        do_deref_add(w);
        break;
      case 2:
        do_list_move(w);
        break;
      case 3:
        do_log_append(w);
        break;
      case 4:
        do_record_append(w);
        break;
      case 5:
        do_stack_move(w);
        break;
    }
  }
  stop_timer(w);
  return NULL;
}

static const char *used_sections_rseq[] = {
    "rseq_addv", "rseq_offset_deref_addv", "rseq_cmpnev_storeoffp_load", "rseq_cmpeqv_storev",
    "rseq_cmpeqv_trystorev_storev", "rseq_cmpeqv_trymemcpy_storev", "rseq_percpu_stack_pop",
    "rseq_percpu_stack_push"};

static uint64_t aborted_of(const char *name) {
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    rseq_registry_get(i, &s);
    if (!strcmp(s.name, name)) {
      struct rseq_section_counters c;
      rseq_section_counters_get(s.id, &c);
      return c.aborted;
    }
  }
  return 0;
}

// Every append committed in the round just finished is in the logs exactly once, in
// order per thread and CPU, and no record is torn. Then empty the logs for the next round.
static void verify_and_reset_logs(struct worker *w, long *total_appends, long *total_records) {
  long *next_seq = calloc((size_t)opt.threads, sizeof(long));
  long *count_items = calloc((size_t)opt.threads, sizeof(long));
  long *count_records = calloc((size_t)opt.threads, sizeof(long));
  for (int c = 0; c < ncpu; c++) {
    for (int t = 0; t < opt.threads; t++) next_seq[t] = -1;
    for (intptr_t i = 0; i < logs[c].count; i++) {
      intptr_t it = logs[c].items[i];
      int t = (int)(it >> 32) - 1;
      long seq = (long)(it & 0xffffffff);
      CHECK(t >= 0 && t < opt.threads, "cpu %d log[%ld] holds garbage %lx", c, (long)i, (long)it);
      CHECK(seq > next_seq[t], "cpu %d: thread %d seq %ld after %ld", c, t, seq, next_seq[t]);
      next_seq[t] = seq;
      count_items[t]++;
    }
    for (intptr_t i = 0; i < logs[c].records_n; i++) {
      struct record *r = &logs[c].records[i];
      for (int k = 1; k < 4; k++) CHECK(r->a[k] == r->a[0] + k, "cpu %d record %ld torn", c, (long)i);
      int t = (int)(r->a[0] >> 32) - 1;
      CHECK(t >= 0 && t < opt.threads, "cpu %d record %ld holds garbage", c, (long)i);
      count_records[t]++;
    }
    logs[c].count = 0;
    logs[c].records_n = 0;
  }
  for (int t = 0; t < opt.threads; t++) {
    CHECK(count_items[t] == w[t].appends, "thread %d: %ld items logged, %ld appends committed", t,
          count_items[t], w[t].appends);
    CHECK(count_records[t] == w[t].records, "thread %d: %ld records logged, %ld committed", t,
          count_records[t], w[t].records);
    *total_appends += w[t].appends;
    *total_records += w[t].records;
    w[t].appends = w[t].records = 0;
  }
  free(next_seq);
  free(count_items);
  free(count_records);
}

static void parse(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define FLAG(name) (!strcmp(a, name) && v && ++i)
    if (FLAG("--mode")) {
      int m = rseq_mode_parse(v);
      CHECK(m > 0, "--mode rseq|cas");
      opt.mode = (enum rseq_mode)m;
    } else if (FLAG("--index")) {
      int x = rseq_index_parse(v);
      CHECK(x >= 0, "--index cpu|cid");
      opt.index = (enum rseq_index)x;
    } else if (FLAG("--threads")) {
      opt.threads = atoi(v);
    } else if (FLAG("--reps")) {
      opt.reps = atol(v);
    } else if (FLAG("--inject-loops")) {
      opt.inject_loops = (uint32_t)atol(v);
    } else if (FLAG("--signal-us")) {
      opt.signal_us = atol(v);
    } else if (FLAG("--block")) {
      opt.block = !strcmp(v, "yield")   ? RSEQ_BLOCK_YIELD
                  : !strcmp(v, "sleep") ? RSEQ_BLOCK_SLEEP
                  : !strcmp(v, "raise") ? RSEQ_BLOCK_RAISE
                                        : RSEQ_BLOCK_NONE;
    } else if (FLAG("--block-every")) {
      opt.block_every = (uint32_t)atol(v);
    } else if (FLAG("--seed")) {
      opt.seed = strtoull(v, NULL, 0);
    } else if (FLAG("--min-seconds")) {
      opt.min_seconds = atof(v);
    } else if (FLAG("--max-seconds")) {
      opt.max_seconds = atoi(v);
    } else {
      fprintf(stderr, "unknown flag %s\n", a);
      exit(2);
    }
#undef FLAG
  }
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  parse(argc, argv);
  opt.seed = test_seed(opt.seed);
  const char *why = NULL;
  if (rseq_resolve_mode(opt.mode, opt.index, &mode, &why) != 0)
    test_skip("mode %s index %s unavailable: %s", rseq_mode_name(opt.mode),
              rseq_index_name(opt.index), why);
  ncpu = rseq_index_count(mode.index);
  if (opt.threads <= 0) {
    int cpus[1024];
    opt.threads = 4 * test_allowed_cpus(cpus, 1024);
  }
  test_context("mode=%s index=%s threads=%d reps=%ld inject_loops=%u signal_us=%ld seed=%lu",
               rseq_mode_name(mode.mode), rseq_index_name(mode.index), opt.threads, opt.reps,
               opt.inject_loops, opt.signal_us, (unsigned long)opt.seed);
  printf("concurrency_test: mode=%s index=%s threads=%d reps=%ld inject_loops=%u signal_us=%ld "
         "seed=%lu\n",
         rseq_mode_name(mode.mode), rseq_index_name(mode.index), opt.threads, opt.reps,
         opt.inject_loops, opt.signal_us, (unsigned long)opt.seed);
  // CAS mode skips the log appends: the try-store twins need a slot the caller owns,
  // and concurrent appenders on one log would share it (see rseq.h).
  if (mode.mode == RSEQ_MODE_CAS)
    printf("cas mode: log appends (trystorev/trymemcpy) are rseq-only; sums and lists run\n");

  if (mode.mode == RSEQ_MODE_RSEQ) {
    CHECK(rseq_inject_enabled(), "this test must link //rseq:rseq_inject");
    for (int p = 1; p <= RSEQ_INJECT_POINTS; p++) rseq_inject_set_loops(p, opt.inject_loops);
    rseq_inject_set_blocking(opt.block, opt.block_every);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);

  sums = calloc((size_t)ncpu, sizeof *sums);
  deref_sums[0] = calloc((size_t)ncpu, sizeof(intptr_t));
  deref_base = (intptr_t)deref_sums[0];
  lists = aligned_alloc(16, sizeof *lists * (size_t)ncpu);
  memset(lists, 0, sizeof *lists * (size_t)ncpu);
  long nnodes = (long)opt.threads * NODES_PER_THREAD;
  nodes = calloc((size_t)nnodes, sizeof *nodes);
  for (long i = 0; i < nnodes; i++) {  // all nodes start on CPU 0's list
    nodes[i].id = i;
    nodes[i].next = lists[0].head;
    lists[0].head = (intptr_t)&nodes[i];
  }
  stacks = calloc((size_t)ncpu, sizeof *stacks);
  cas_stacks = aligned_alloc(16, sizeof *cas_stacks * (size_t)ncpu);
  memset(cas_stacks, 0, sizeof *cas_stacks * (size_t)ncpu);
  for (int c = 0; c < ncpu; c++) stacks[c].capacity = STACK_CAP;
  for (intptr_t i = 1; i <= STACK_ITEMS; i++) {  // all items start on CPU 0's stack
    stacks[0].slots[stacks[0].count++] = i;
    CHECK_EQ(rseq_cas_stack_push(&cas_stacks[0].top, cas_stacks[0].slots, STACK_CAP, i), RSEQ_COMMIT);
  }
  // A round appends at most threads x reps items to one CPU's log; logs are checked
  // and emptied after every round.
  log_capacity = (long)opt.threads * opt.reps + 1;
  if (mode.mode == RSEQ_MODE_RSEQ) {
    logs = calloc((size_t)ncpu, sizeof *logs);
    for (int c = 0; c < ncpu; c++) {
      logs[c].items = calloc((size_t)log_capacity, sizeof(intptr_t));
      logs[c].records = calloc((size_t)log_capacity, sizeof(struct record));
    }
  }

  struct worker *w = calloc((size_t)opt.threads, sizeof *w);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rounds = 0;
  long appends = 0, records = 0;
  for (;;) {
    rounds++;
    for (int i = 0; i < opt.threads; i++) {
      w[i].id = i;
      w[i].rng = opt.seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 7919 + (uint64_t)rounds + 1;
      CHECK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0);
    }
    for (int i = 0; i < opt.threads; i++) pthread_join(w[i].thread, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double elapsed = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    int missing = 0;
    if (mode.mode == RSEQ_MODE_RSEQ) {
      verify_and_reset_logs(w, &appends, &records);
      for (size_t s = 0; s < sizeof used_sections_rseq / sizeof *used_sections_rseq; s++)
        missing += aborted_of(used_sections_rseq[s]) == 0;
    }
    if (elapsed >= opt.max_seconds) break;
    if (!missing && elapsed >= opt.min_seconds) break;
  }
  rseq_inject_set_blocking(RSEQ_BLOCK_NONE, 0);

  // --- the checks, single-threaded
  long adds = 0, deref_adds = 0;
  for (int i = 0; i < opt.threads; i++) {
    adds += w[i].adds;
    deref_adds += w[i].deref_adds;
  }
  long hadds = atomic_load_explicit(&handler_adds, memory_order_relaxed);
  long total = 0, dtotal = 0;
  for (int c = 0; c < ncpu; c++) {
    total += sums[c];
    dtotal += deref_sums[0][c];
  }
  CHECK(total == adds + hadds, "sums %ld != adds %ld + handler adds %ld", total, adds, hadds);
  CHECK(dtotal == deref_adds, "deref sums %ld != %ld", dtotal, deref_adds);

  char *seen = calloc((size_t)nnodes, 1);
  long found = 0;
  for (int c = 0; c < ncpu; c++) {
    for (intptr_t p = lists[c].head; p; p = ((struct node *)p)->next) {
      struct node *n = (struct node *)p;
      CHECK(n >= nodes && n < nodes + nnodes, "list %d holds a stray pointer", c);
      CHECK(!seen[n - nodes], "node %ld is in the lists twice", (long)(n - nodes));
      seen[n - nodes] = 1;
      CHECK(++found <= nnodes, "list %d has a cycle", c);
    }
  }
  CHECK(found == nnodes, "lists hold %ld of %ld nodes", found, nnodes);

  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("ok: %d round(s) in %.2f s; adds %ld (+%ld in handlers), deref adds %ld, %ld nodes "
         "conserved, appends %ld, records %ld\n",
         rounds, secs, adds, hadds, deref_adds, nnodes, appends, records);
  rseq_registry_dump_json(stdout);
  if (mode.mode == RSEQ_MODE_RSEQ) {
    for (size_t s = 0; s < sizeof used_sections_rseq / sizeof *used_sections_rseq; s++)
      CHECK(aborted_of(used_sections_rseq[s]) > 0,
            "section %s never aborted in %d rounds (%.1f s): its abort path was not taken",
            used_sections_rseq[s], rounds, secs);
  }
  // Every stack item is in exactly one stack, once.
  char stack_seen[STACK_ITEMS + 1] = {0};
  int stack_found = 0;
  for (int c = 0; c < ncpu; c++) {
    intptr_t item;
    if (mode.mode == RSEQ_MODE_CAS) {
      while (rseq_cas_stack_pop(&cas_stacks[c].top, cas_stacks[c].slots, &item) == RSEQ_COMMIT) {
        CHECK(item >= 1 && item <= STACK_ITEMS && !stack_seen[item], "stack item %ld", (long)item);
        stack_seen[item] = 1;
        stack_found++;
      }
    } else {
      CHECK(stacks[c].count >= 0 && stacks[c].count <= STACK_CAP);
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
  free(stacks);
  free(cas_stacks);
  if (logs) {
    for (int c = 0; c < ncpu; c++) {
      free(logs[c].items);
      free(logs[c].records);
    }
    free(logs);
  }
  free(seen);
  free(w);
  free(nodes);
  free(lists);
  free(deref_sums[0]);
  free(sums);
  printf("PASS\n");
  return 0;
}
