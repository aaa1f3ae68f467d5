// stress_job: one workload (prim, alloc or ring) x mode x index, with any set of
// forcers, in verified rounds; reports every critical section's aborts by cause.
//
//   stress_job --workload prim|alloc|ring --mode rseq|cas --index cpu|cid
//              [--threads N] [--seconds MAX] [--min-seconds S] [--until-covered]
//              [--round-ms N] [--seed S] [--inject POINT:LOOPS] [--block KIND --block-every N]
//              [--force LIST] [--signal-us N] [--storm-us N] [--storm-burst N]
//              [--migrate-us N] [--fence-us N] [--cgroup-us N] [--antagonists LIST]
//              [--require CAUSES] [--skip-without-cgroup] [--json FILE] [--tsv FILE]
//              [--stall-seconds N]
//
// Exit 0 when every invariant held and, in RSEQ mode, every section the workload uses
// aborted at least once (and at least once for each cause in --require). Exit 1 on a
// broken invariant (the message says which, with seed and flags to reproduce), 2 on
// bad flags.
//
// A progress watchdog: a worker that finishes no operation for --stall-seconds (default
// 20) fails the job at once, naming the worker, its thread, the CPU it is on, its
// affinity and the sections that keep aborting (a retry loop that can never commit),
// instead of hanging until Bazel's timeout.
#include "stress/job.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ring/ring.h"
#include "rseq/testing.h"
#include "sanitizers/sanitizers.h"
#include "stress/causes.h"
#include "stress/cgroup.h"
#include "stress/forcers.h"
#include "stress/seen.h"

struct rseq_percpu_mode job_mode;
int job_nslots;
uint64_t job_seed = 1;

static struct {
  const struct workload *work;
  enum rseq_mode mode;
  enum rseq_index index;
  int threads;
  double seconds, min_seconds;
  bool until_covered;
  long round_ms;
  int inject_point;  // 0: every point
  uint32_t inject_loops;
  enum rseq_inject_block block;
  uint32_t block_every;
  struct forcer_config force;
  unsigned require;  // bitmask of causes every used section must show
  bool skip_without_cgroup;
  const char *json, *tsv;
  double stall_seconds;
} opt = {
    .stall_seconds = 20,
    .work = &work_prim,
    .mode = RSEQ_MODE_RSEQ,
    .index = RSEQ_INDEX_CPU_ID,
    .seconds = 10,
    .min_seconds = 0,
    .round_ms = 250,
    .inject_loops = 100,
    .force = {.signo = SIGUSR1,
              // Every 50 us: sections are a few instructions (the allocator's are
              // inlined in malloc and free), so migrations must come often for some
              // to land inside the rarer ones within a test's seconds.
              .migrate_us = 50,
              .signal_us = 1000,
              .storm_us = 2000,
              .storm_burst = 4,
              .fence_us = 100,
              .cgroup_us = 2000,
              .antagonists = "cpu,yield,switch,timer,affinity"},
};

static char cgroup_why[256];  // why the cgroup forcer did not run (supervisor side)

int job_current(void) {
  if (job_mode.mode == RSEQ_MODE_CAS) return 0;
  int c = rseq_current_index(job_mode.index);
  CHECK(c >= 0 && c < job_nslots, "index %d out of [0, %d)", c, job_nslots);
  return c;
}

// ---------------------------------------------------------------------------------
// The signal handler's payload, the same for every workload: a per-CPU add (a
// primitive) and an offer into the signal ring. Async-signal-safe by design: no
// locks, no allocation, errno kept; a section of this thread it interrupted was
// aborted before the handler ran, so the handler's own sections cannot collide with
// it. The checks after the run prove it: every handler add is in the sums and every
// handler offer is polled exactly once.

static __thread struct worker *tl_worker;
static intptr_t *sig_sums;   // [job_nslots]
static struct ring *sig_ring;

static void on_signal(int sig) {
  (void)sig;
  int saved_errno = errno;
  struct causes_saved saved;
  causes_signal_enter(&saved);
  struct worker *w = tl_worker;
  if (w) {
    for (;;) {
      int c = job_mode.mode == RSEQ_MODE_CAS ? w->id % job_nslots : job_current();
      if (rseq_percpu_addv(&job_mode, &sig_sums[c], 1, c) == RSEQ_COMMIT) break;
    }
    w->sig_adds++;
    uintptr_t item = (uintptr_t)(w->id + 1) << 40 | (uintptr_t)w->sig_seq;
    if (ring_offer(sig_ring, (void *)item) == RING_OK) {
      w->sig_seq++;
      w->sig_offered++;
    } else {
      w->sig_full++;
    }
  }
  causes_signal_leave(&saved);
  errno = saved_errno;
}

// The consumer side of the signal ring (the main thread): each (worker, seq) once.
static struct seen sig_seen;
static long sig_polled;

static void sig_ring_drain(void) {
  void *item;
  while (ring_poll(sig_ring, &item) == RING_OK) {
    uintptr_t v = (uintptr_t)item;
    long id = (long)(v >> 40) - 1;
    uint64_t seq = v & ((1ull << 40) - 1);
    CHECK(id >= 0 && id < opt.threads, "signal ring: garbage item %#lx", (unsigned long)v);
    CHECK(seen_mark(&sig_seen, (int)id, seq),
          "signal ring: worker %ld's handler offer %lu polled twice", id, (unsigned long)seq);
    sig_polled++;
  }
}

// ---------------------------------------------------------------------------------
// Rounds.

static _Atomic int round_stop;  // relaxed: a flag the workers poll between operations

static void *worker_main(void *arg) {
  struct worker *w = arg;
  tl_worker = w;
  // Relaxed, all three: the watchdog reads them as hints, and reads progress again
  // before it acts.
  atomic_store_explicit(&w->tid, (int)syscall(SYS_gettid), memory_order_relaxed);
  forcers_thread_begin();
  while (!atomic_load_explicit(&round_stop, memory_order_relaxed)) {
    opt.work->op(w);
    w->ops++;
    atomic_store_explicit(&w->progress, w->ops, memory_order_relaxed);
  }
  forcers_thread_end();
  atomic_store_explicit(&w->done, 1, memory_order_relaxed);
  return NULL;
}

// --- the progress watchdog (see the top of the file)

static long *seen_progress;
static double *seen_at;

// At each round's start: the time between rounds (the single-threaded checks) is not
// a stall.
static void watchdog_reset(int n) {
  if (!seen_progress) {
    seen_progress = calloc((size_t)n, sizeof *seen_progress);
    seen_at = calloc((size_t)n, sizeof *seen_at);
  }
  for (int i = 0; i < n; i++) seen_at[i] = test_now_s(), seen_progress[i] = -1;
}

static void stalled(struct worker *w, double for_s) {
  int tid = atomic_load_explicit(&w->tid, memory_order_relaxed);
  char path[64], line[1024], cpus[256] = "?";
  int cpu = -1;
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
  FILE *f = fopen(path, "r");
  if (f && fgets(line, sizeof line, f)) {  // field 39 is the CPU it last ran on
    const char *p = strrchr(line, ')');
    for (int field = 2; p && field < 39; field++) p = strchr(p + 1, ' ');
    if (p) cpu = atoi(p + 1);
  }
  if (f) fclose(f);
  cpu_set_t set;
  if (sched_getaffinity(tid, sizeof set, &set) == 0) {
    size_t len = 0;
    cpus[0] = 0;
    for (int c = 0; c < CPU_SETSIZE && len + 8 < sizeof cpus; c++)
      if (CPU_ISSET(c, &set)) len += (size_t)snprintf(cpus + len, sizeof cpus - len, "%s%d", len ? "," : "", c);
  }
  // Which sections spin: their abort counts over one more second.
  uint64_t before[RSEQ_SECTION_MAX_IDS], after;
  for (int id = 0; id < RSEQ_SECTION_MAX_IDS; id++) {
    struct rseq_section_counters c;
    rseq_section_counters_get(id, &c);
    before[id] = c.aborted;
  }
  sleep(1);
  char spinning[512] = "";
  size_t len = 0;
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    rseq_registry_get(i, &s);
    struct rseq_section_counters c;
    rseq_section_counters_get(s.id, &c);
    after = c.aborted;
    if (after > before[s.id] && len + 64 < sizeof spinning)
      len += (size_t)snprintf(spinning + len, sizeof spinning - len, " %s (%lu aborts)", s.name,
                              (unsigned long)(after - before[s.id]));
  }
  printf("FAIL: no progress: worker %d (thread %d) has finished no operation for %.0f s; it "
         "is on cpu %d, affinity {%s}; sections aborting in the last second:%s\n"
         "  (workload %s, mode %s, index %s, seed %lu: a retry loop that can never commit?)\n",
         w->id, tid, for_s, cpu, cpus, len ? spinning : " none", opt.work->name,
         rseq_mode_name(opt.mode), rseq_index_name(opt.index), (unsigned long)job_seed);
  fflush(stdout);
  _exit(1);  // the stuck thread cannot be joined
}

// Fails the job if a worker still running has not progressed for --stall-seconds.
static void watchdog_check(struct worker *w, int n) {
  double now = test_now_s();
  for (int i = 0; i < n; i++) {
    long p = atomic_load_explicit(&w[i].progress, memory_order_relaxed);
    if (p != seen_progress[i] || atomic_load_explicit(&w[i].done, memory_order_relaxed)) {
      seen_progress[i] = p;
      seen_at[i] = now;
    } else if (now - seen_at[i] > opt.stall_seconds) {
      stalled(&w[i], now - seen_at[i]);
    }
  }
}

static int section_used(const char *name) {
  for (const char *const *s = opt.work->sections; *s; s++)
    if (!strcmp(*s, name)) return 1;
  return 0;
}

// RSEQ mode: sections the workload uses that lack an abort, or one of a required cause.
static int coverage_missing(FILE *why) {
  if (job_mode.mode != RSEQ_MODE_RSEQ) return 0;
  int missing = 0;
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    rseq_registry_get(i, &s);
    if (!section_used(s.name)) continue;
    struct rseq_section_counters c;
    rseq_section_counters_get(s.id, &c);
    if (c.aborted == 0) {
      missing++;
      if (why) fprintf(why, "  %s: no abort at all\n", s.name);
    }
    for (int k = 0; k < CAUSE_COUNT; k++) {
      if ((opt.require & (1u << k)) && causes_count(s.id, k) == 0) {
        missing++;
        if (why) fprintf(why, "  %s: no abort caused by %s\n", s.name, cause_name(k));
      }
    }
  }
  return missing;
}

// ---------------------------------------------------------------------------------
// The report: a table on stdout, and JSON and TSV files when asked.

struct check {
  const char *name;
  bool ok;
  char detail[200];
};
static struct check checks[32];
static int nchecks;

static void add_check(const char *name, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_check(const char *name, bool ok, const char *fmt, ...) {
  struct check *c = &checks[nchecks < 31 ? nchecks++ : 31];
  c->name = name;
  c->ok = ok;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->detail, sizeof c->detail, fmt, ap);
  va_end(ap);
}

static void report(const struct forcer_stats *fs, double secs, int rounds, bool ok) {
  printf("\n%-30s %4s %10s %10s %9s %9s | %9s %9s %9s %10s\n", "section", "used", "entered",
         "committed", "aborted", "cmpfail", "migration", "signal", "fence", "preemption");
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    struct rseq_section_counters c;
    rseq_registry_get(i, &s);
    rseq_section_counters_get(s.id, &c);
    printf("%-30s %4s %10lu %10lu %9lu %9lu | %9lu %9lu %9lu %10lu\n", s.name,
           section_used(s.name) ? "yes" : "no", (unsigned long)c.entered,
           (unsigned long)c.committed, (unsigned long)c.aborted, (unsigned long)c.cmpfail,
           (unsigned long)causes_count(s.id, 0), (unsigned long)causes_count(s.id, 1),
           (unsigned long)causes_count(s.id, 2), (unsigned long)causes_count(s.id, 3));
  }
  printf("\nforcers:\n");
  for (int f = 0; f < FORCE_COUNT; f++) {
    const char *why = fs->why_not[f];
    if (why[0])
      printf("  %-10s not exercised: %s\n", forcer_name(f), why);
    else
      printf("  %-10s done %lu, refused %lu%s%s\n", forcer_name(f), (unsigned long)fs->done[f],
             (unsigned long)fs->errors[f], fs->detail[f][0] ? "; " : "", fs->detail[f]);
  }
  printf("\nchecks:\n");
  for (int i = 0; i < nchecks; i++)
    printf("  %-4s %-28s %s\n", checks[i].ok ? "ok" : "FAIL", checks[i].name, checks[i].detail);

  if (opt.json) {
    FILE *f = fopen(opt.json, "w");
    CHECK(f != NULL, "cannot write %s", opt.json);
    fprintf(f, "{\n  \"workload\": \"%s\", \"mode\": \"%s\", \"index\": \"%s\",\n",
            opt.work->name, rseq_mode_name(job_mode.mode), rseq_index_name(job_mode.index));
    fprintf(f, "  \"threads\": %d, \"seed\": %lu, \"seconds\": %.2f, \"rounds\": %d,\n",
            opt.threads, (unsigned long)job_seed, secs, rounds);
    fprintf(f, "  \"inject_point\": %d, \"inject_loops\": %u, \"ok\": %s,\n", opt.inject_point,
            opt.inject_loops, ok ? "true" : "false");
    fprintf(f, "  \"forcers\": {");
    for (int k = 0; k < FORCE_COUNT; k++) {
      const char *why = fs->why_not[k];
      fprintf(f, "%s\n    \"%s\": {\"exercised\": %s, \"done\": %lu, \"refused\": %lu, "
                 "\"why_not\": \"%s\", \"detail\": \"%s\"}",
              k ? "," : "", forcer_name(k), why[0] ? "false" : "true", (unsigned long)fs->done[k],
              (unsigned long)fs->errors[k], why, fs->detail[k]);
    }
    fprintf(f, "\n  },\n  \"sections\": [");
    for (int i = 0; i < rseq_registry_count(); i++) {
      struct rseq_section s;
      struct rseq_section_counters c;
      rseq_registry_get(i, &s);
      rseq_section_counters_get(s.id, &c);
      fprintf(f, "%s\n    {\"name\": \"%s\", \"used\": %s, \"entered\": %lu, \"committed\": %lu, "
                 "\"aborted\": %lu, \"cmpfail\": %lu, \"causes\": {",
              i ? "," : "", s.name, section_used(s.name) ? "true" : "false",
              (unsigned long)c.entered, (unsigned long)c.committed, (unsigned long)c.aborted,
              (unsigned long)c.cmpfail);
      for (int k = 0; k < CAUSE_COUNT; k++)
        fprintf(f, "%s\"%s\": %lu", k ? ", " : "", cause_name(k),
                (unsigned long)causes_count(s.id, k));
      fprintf(f, "}}");
    }
    fprintf(f, "\n  ],\n  \"checks\": [");
    for (int i = 0; i < nchecks; i++)
      fprintf(f, "%s\n    {\"name\": \"%s\", \"ok\": %s, \"detail\": \"%s\"}", i ? "," : "",
              checks[i].name, checks[i].ok ? "true" : "false", checks[i].detail);
    fprintf(f, "\n  ]\n}\n");
    fclose(f);
  }
  if (opt.tsv) {  // for the campaign: one fact per line
    FILE *f = fopen(opt.tsv, "w");
    CHECK(f != NULL, "cannot write %s", opt.tsv);
    for (int i = 0; i < rseq_registry_count(); i++) {
      struct rseq_section s;
      rseq_registry_get(i, &s);
      for (int k = 0; k < CAUSE_COUNT; k++)
        fprintf(f, "section\t%s\t%s\t%lu\t%d\n", s.name, cause_name(k),
                (unsigned long)causes_count(s.id, k), section_used(s.name));
    }
    for (int k = 0; k < FORCE_COUNT; k++) {
      const char *why = fs->why_not[k];
      fprintf(f, "forcer\t%s\t%lu\t%lu\t%s\n", forcer_name(k), (unsigned long)fs->done[k],
              (unsigned long)fs->errors[k], why);
    }
    for (int i = 0; i < nchecks; i++)
      fprintf(f, "check\t%s\t%d\t%s\n", checks[i].name, checks[i].ok, checks[i].detail);
    fclose(f);
  }
}

// ---------------------------------------------------------------------------------

static int run_job(const char *cgroup_cpus_file, void *unused) {
  (void)unused;
  const char *why = NULL;
  if (rseq_resolve_mode(opt.mode, opt.index, &job_mode, &why) != 0)
    test_skip("mode %s index %s unavailable: %s", rseq_mode_name(opt.mode),
              rseq_index_name(opt.index), why);
  job_nslots = rseq_index_count(job_mode.index);
  test_context("workload=%s mode=%s index=%s threads=%d seed=%lu (rerun: the command below with --seed %lu)",
               opt.work->name, rseq_mode_name(job_mode.mode), rseq_index_name(job_mode.index),
               opt.threads, (unsigned long)job_seed, (unsigned long)job_seed);
  if (job_mode.mode == RSEQ_MODE_RSEQ) {
    CHECK(causes_install() == 0, "stress_job must link a counting rseq variant (inject)");
    CHECK(rseq_inject_enabled(), "stress_job must link //rseq:rseq_inject");
    for (int p = 1; p <= RSEQ_INJECT_POINTS; p++)
      rseq_inject_set_loops(p, opt.inject_point == 0 || opt.inject_point == p ? opt.inject_loops : 0);
    rseq_inject_set_blocking(opt.block, opt.block_every);
  }
  opt.force.cgroup_cpus_file = cgroup_cpus_file;
  opt.force.cgroup_why_not = cgroup_why[0] ? cgroup_why : NULL;
  opt.force.seed = job_seed;
  opt.force.seconds = opt.seconds;

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  CHECK(sigaction(opt.force.signo, &sa, NULL) == 0);
  sig_sums = calloc((size_t)job_nslots, sizeof *sig_sums);
  struct ring_options ro = {.mode = job_mode.mode, .index = job_mode.index};
  sig_ring = ring_create(256, &ro);
  CHECK(sig_ring != NULL, "ring_create: %s", strerror(errno));
  seen_init(&sig_seen, opt.threads);

  struct worker *w = calloc((size_t)opt.threads, sizeof *w);
  for (int i = 0; i < opt.threads; i++) {
    w[i].id = i;
    w[i].rng = job_seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 7919 + 1;
  }
  opt.work->setup(opt.threads);
  rseq_section_counters_reset();  // after setup: only the rounds count

  forcers_start(&opt.force);
  double t0 = test_now_s(), elapsed = 0;
  int rounds = 0;
  for (;;) {
    rounds++;
    atomic_store_explicit(&round_stop, 0, memory_order_relaxed);
    watchdog_reset(opt.threads);
    for (int i = 0; i < opt.threads; i++) {
      atomic_store_explicit(&w[i].done, 0, memory_order_relaxed);
      CHECK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0);
    }
    double end = test_now_s() + (double)opt.round_ms / 1000;
    while (test_now_s() < end) {
      sig_ring_drain();
      watchdog_check(w, opt.threads);
      nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
    }
    atomic_store_explicit(&round_stop, 1, memory_order_relaxed);
    // Join only what has finished: a worker stuck in a retry loop never will.
    for (;;) {
      int running = 0;
      for (int i = 0; i < opt.threads; i++)
        running += !atomic_load_explicit(&w[i].done, memory_order_relaxed);
      if (!running) break;
      sig_ring_drain();
      watchdog_check(w, opt.threads);
      nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
    }
    for (int i = 0; i < opt.threads; i++) pthread_join(w[i].thread, NULL);
    opt.work->round_end(w, opt.threads);
    elapsed = test_now_s() - t0;
    if (elapsed >= opt.seconds) break;
    if (opt.until_covered && elapsed >= opt.min_seconds && coverage_missing(NULL) == 0) break;
  }
  struct forcer_stats fs;
  forcers_stop(&fs);
  // Late timer signals may still be pending on exited threads: none can run now.
  rseq_inject_set_blocking(RSEQ_BLOCK_NONE, 0);
  sig_ring_drain();

  // --- checks, single-threaded
  opt.work->finish(w, opt.threads);
  long adds = 0, offered = 0, full = 0, ops = 0;
  for (int i = 0; i < opt.threads; i++) {
    adds += w[i].sig_adds;
    offered += w[i].sig_offered;
    full += w[i].sig_full;
    ops += w[i].ops;
  }
  long sum = 0;
  for (int c = 0; c < job_nslots; c++) sum += sig_sums[c];
  add_check("handler_adds", sum == adds, "per-CPU sums %ld, handler adds committed %ld", sum, adds);
  add_check("handler_offers", sig_polled == offered,
            "polled %ld of %ld handler offers (each once; %ld refused as full)", sig_polled,
            offered, full);
  bool conserved = true, causes_conserved = true;
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    struct rseq_section_counters c;
    rseq_registry_get(i, &s);
    rseq_section_counters_get(s.id, &c);
    conserved &= c.entered == c.committed + c.aborted + c.cmpfail;
    causes_conserved &= causes_total(s.id) == c.aborted;
  }
  add_check("entered_conserved", conserved, "entered == committed + aborted + cmpfail, every section");
  add_check("causes_conserved", causes_conserved, "aborts by cause add up to the aborts counted");
  char missing_text[4096] = "";
  FILE *mf = fmemopen(missing_text, sizeof missing_text - 1, "w");
  int missing = coverage_missing(mf);
  fclose(mf);
  if (job_mode.mode == RSEQ_MODE_RSEQ)
    add_check("abort_coverage", missing == 0, "%d missing (section x cause) among the used sections",
              missing);
  else
    add_check("abort_coverage", true, "CAS mode: no critical section runs");
  bool ok = true;
  for (int i = 0; i < nchecks; i++) ok &= checks[i].ok;
  printf("stress_job: workload=%s mode=%s index=%s threads=%d seed=%lu: %d rounds in %.2f s, "
         "%ld ops, %ld signals handled\n",
         opt.work->name, rseq_mode_name(job_mode.mode), rseq_index_name(job_mode.index),
         opt.threads, (unsigned long)job_seed, rounds, elapsed, ops, adds);
  opt.work->summary(stdout);
  report(&fs, elapsed, rounds, ok);
  if (missing) printf("abort coverage missing:\n%s", missing_text);
  seen_free(&sig_seen);
  free(w);
  ring_destroy(sig_ring);
  free(sig_sums);
  if (!ok) {
    test_fail(__FILE__, __LINE__, "every check ok", "see the checks above");
  }
  printf("PASS\n");
  return 0;
}

static void usage(void) {
  fprintf(stderr, "usage: stress_job --workload prim|alloc|ring [flags] (see stress/job.c)\n");
  exit(2);
}

static unsigned parse_causes(const char *list) {
  if (!strcmp(list, "all")) return (1u << CAUSE_COUNT) - 1;
  unsigned mask = 0;
  char buf[128];
  snprintf(buf, sizeof buf, "%s", list);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int found = -1;
    for (int k = 0; k < CAUSE_COUNT; k++)
      if (!strcmp(tok, cause_name(k))) found = k;
    if (found < 0) {
      fprintf(stderr, "unknown cause %s (migration, signal, fence, preemption)\n", tok);
      exit(2);
    }
    mask |= 1u << found;
  }
  return mask;
}

static void parse(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define FLAG(name) (!strcmp(a, name) && v && ++i)
    if (FLAG("--workload")) {
      const struct workload *all[] = {&work_prim, &work_alloc, &work_ring};
      opt.work = NULL;
      for (int k = 0; k < 3; k++)
        if (!strcmp(v, all[k]->name)) opt.work = all[k];
      if (!opt.work) usage();
    } else if (FLAG("--mode")) {
      int m = rseq_mode_parse(v);
      if (m < 0) usage();
      opt.mode = (enum rseq_mode)m;
    } else if (FLAG("--index")) {
      int x = rseq_index_parse(v);
      if (x < 0) usage();
      opt.index = (enum rseq_index)x;
    } else if (FLAG("--threads")) {
      opt.threads = atoi(v);
    } else if (FLAG("--seconds")) {
      opt.seconds = atof(v);
    } else if (FLAG("--min-seconds")) {
      opt.min_seconds = atof(v);
    } else if (!strcmp(a, "--until-covered")) {
      opt.until_covered = true;
    } else if (FLAG("--stall-seconds")) {
      opt.stall_seconds = atof(v);
    } else if (FLAG("--round-ms")) {
      opt.round_ms = atol(v);
    } else if (FLAG("--seed")) {
      job_seed = strtoull(v, NULL, 0);
    } else if (FLAG("--inject")) {
      if (sscanf(v, "%d:%u", &opt.inject_point, &opt.inject_loops) != 2 || opt.inject_point < 0 ||
          opt.inject_point > RSEQ_INJECT_POINTS)
        usage();
    } else if (FLAG("--block")) {
      opt.block = !strcmp(v, "yield")   ? RSEQ_BLOCK_YIELD
                  : !strcmp(v, "sleep") ? RSEQ_BLOCK_SLEEP
                  : !strcmp(v, "raise") ? RSEQ_BLOCK_RAISE
                                        : RSEQ_BLOCK_NONE;
    } else if (FLAG("--block-every")) {
      opt.block_every = (uint32_t)atol(v);
    } else if (FLAG("--force")) {
      int m = forcers_parse(v);
      if (m < 0) usage();
      opt.force.mask = (unsigned)m;
    } else if (FLAG("--signal-us")) {
      opt.force.signal_us = atol(v);
    } else if (FLAG("--storm-us")) {
      opt.force.storm_us = atol(v);
    } else if (FLAG("--storm-burst")) {
      opt.force.storm_burst = atoi(v);
    } else if (FLAG("--migrate-us")) {
      opt.force.migrate_us = atol(v);
    } else if (FLAG("--fence-us")) {
      opt.force.fence_us = atol(v);
    } else if (FLAG("--cgroup-us")) {
      opt.force.cgroup_us = atol(v);
    } else if (FLAG("--antagonists")) {
      opt.force.antagonists = v;
    } else if (FLAG("--require")) {
      opt.require = parse_causes(v);
    } else if (!strcmp(a, "--skip-without-cgroup")) {
      opt.skip_without_cgroup = true;
    } else if (FLAG("--json")) {
      opt.json = v;
    } else if (FLAG("--tsv")) {
      opt.tsv = v;
    } else {
      fprintf(stderr, "unknown flag or missing value: %s\n", a);
      usage();
    }
#undef FLAG
  }
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  test_init(argc, argv);
  parse(argc, argv);
  job_seed = test_seed(job_seed);
  // Sanitizers slow the code around the sections, not the sections (asm, with their
  // delay loops): scale the delays so that the threads spend about as much of their
  // time inside sections as in a plain build, and forced migrations and fences land in
  // them about as often.
  uint32_t scale = CCACHE_HAVE_TSAN ? 20 : CCACHE_HAVE_ASAN || CCACHE_HAVE_MSAN ? 10 : 1;
  // Their signal handlers are slower too: signals come that much less often, or a signal
  // overlaps nearly every abort and is counted as its cause, and migrations and
  // preemptions are never seen.
  if (scale > 1) {
    printf("stress_job: %s build: delay loops and signal periods x%u\n",
           ccache_sanitizer_names(), scale);
    opt.inject_loops *= scale;
    opt.force.signal_us *= scale;
    opt.force.storm_us *= scale;
  }
  if (opt.threads <= 0) {
    int cpus[1024];
    opt.threads = opt.work->default_threads_per_cpu * test_allowed_cpus(cpus, 1024);
  }
  printf("stress_job: workload=%s mode=%s index=%s threads=%d seconds=%.1f seed=%lu inject=%d:%u\n",
         opt.work->name, rseq_mode_name(opt.mode), rseq_index_name(opt.index), opt.threads,
         opt.seconds, (unsigned long)job_seed, opt.inject_point, opt.inject_loops);
  if (opt.force.mask & FORCE_CGROUP) {
    int status = cgroup_supervise(run_job, NULL, cgroup_why, sizeof cgroup_why);
    if (status != -2) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      fprintf(stderr, "stress_job: the job (in its cgroup) died of signal %d\n",
              WIFSIGNALED(status) ? WTERMSIG(status) : -1);
      return 1;
    }
    if (opt.skip_without_cgroup) test_skip("cgroup forcer: %s", cgroup_why);
    printf("cgroup forcer not exercised: %s\n", cgroup_why);
  }
  return run_job(NULL, NULL);
}
