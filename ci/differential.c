// differential: the rseq-vs-CAS differential check.
//
//   bazel run //ci:differential -- [--seconds N] [--seed S] [--ops N]
//
// Single-threaded: seeded operation streams of each family (allocator, ring,
// primitives) run through fake CPUs in RSEQ mode and in CAS mode, with the cpu_id and
// the mm_cid index; each run checks its shadow model, and the two modes' observable
// traces must be identical. Multi-threaded: the same workload in both modes, compared
// on invariants and accounting (everything freed, checksums, exact sums).
// On any failure it exits 1 with the seed and a reproducer: the operation sequence,
// shrunk automatically to a minimal one that still fails.
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "allocator/ccache.h"
#include "fuzz/ops.h"
#include "ring/ring.h"
#include "rseq/rseq.h"

// What runs now, for the watchdog's message (written by the main thread only).
static char current[256] = "starting";

static void on_watchdog(int sig) {
  (void)sig;
  char msg[400];
  int n = snprintf(msg, sizeof msg, "\nTIMEOUT: no progress (a hang or livelock) while running: %s\n", current);
  if (write(1, msg, (size_t)n) < 0) {
  }
  _exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Shrink a failing stream: drop chunks of ops (halves, quarters, ... single ops) as
// long as the stream still fails. Deterministic, so the result reproduces.
static size_t shrink(enum ops_family f, enum rseq_index index, struct op *ops, size_t n) {
  char why[600];
  struct op *tmp = malloc(sizeof *ops * n);
  for (size_t chunk = n / 2; chunk >= 1; chunk /= 2) {
    for (size_t start = 0; start < n;) {
      size_t end = start + chunk < n ? start + chunk : n;
      size_t m = 0;
      for (size_t i = 0; i < n; i++)
        if (i < start || i >= end) tmp[m++] = ops[i];
      if (m > 0 && ops_compare_modes(f, index, tmp, m, why, sizeof why)) {
        memcpy(ops, tmp, sizeof *ops * m);
        n = m;
      } else {
        start = end;
      }
    }
  }
  free(tmp);
  return n;
}

// --- multi-threaded runs, compared on invariants and accounting

struct mt_result {
  int ok;
  uint64_t a, b;  // family-specific accounting that must agree between modes
  char message[256];
};

struct mt_arg {
  struct ccache_heap *heap;
  struct ring *ring;
  uint64_t seed;
  long ops;
  uint64_t sum;
  long count;
};

static void *mt_alloc_worker(void *p) {
  struct mt_arg *a = p;
  void *live[64] = {0};
  uint64_t s = a->seed;
  for (long i = 0; i < a->ops; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    int k = (int)(s >> 58);
    if (live[k]) {
      unsigned char *b = live[k];
      if (b[0] != (unsigned char)k) {
        a->sum = UINT64_MAX;  // corruption
        return NULL;
      }
      ccache_free(a->heap, live[k]);
      live[k] = NULL;
      a->count--;
    } else {
      size_t size = (size_t)(s >> 20) % 3000 + 1;
      unsigned char *b = ccache_malloc(a->heap, size);
      if (!b) continue;
      b[0] = (unsigned char)k;
      live[k] = b;
      a->count++;
      a->sum += size;
    }
  }
  for (int k = 0; k < 64; k++)
    if (live[k]) {
      ccache_free(a->heap, live[k]);
      a->count--;
    }
  return NULL;
}

static void mt_alloc(enum rseq_mode mode, enum rseq_index index, uint64_t seed, struct mt_result *r) {
  struct ccache_options o = {.mode = mode, .index = index, .reserve_bytes = (size_t)1 << 31};
  struct ccache_heap *h = ccache_heap_create(&o);
  memset(r, 0, sizeof *r);
  if (!h) {
    snprintf(r->message, sizeof r->message, "heap creation failed: errno %d", errno);
    return;
  }
  enum { T = 8 };
  struct mt_arg args[T];
  pthread_t th[T];
  for (int i = 0; i < T; i++) {
    args[i] = (struct mt_arg){h, NULL, seed + (uint64_t)i * 7919, 20000, 0, 0};
    pthread_create(&th[i], NULL, mt_alloc_worker, &args[i]);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(th[i], NULL);
    r->a += args[i].sum;
    r->b += (uint64_t)args[i].count;
  }
  struct ccache_stats st;
  ccache_get_stats(h, &st);
  if (r->a == UINT64_MAX || st.in_use_bytes != 0 || r->b != 0 || ccache_check_heap(h) != 0)
    snprintf(r->message, sizeof r->message, "in use %lu B after all frees, balance %ld",
             (unsigned long)st.in_use_bytes, (long)r->b);
  else
    r->ok = 1;
  ccache_heap_destroy(h);
}

static void *mt_ring_producer(void *p) {
  struct mt_arg *a = p;
  for (long i = 0; i < a->ops; i++) {
    uintptr_t item = (uintptr_t)(a->seed << 32) | (uintptr_t)i;
    while (ring_offer(a->ring, (void *)item) != RING_OK) {
    }
    a->sum += item;
  }
  return NULL;
}

static void mt_ring(enum rseq_mode mode, enum rseq_index index, uint64_t seed, struct mt_result *r) {
  (void)seed;
  struct ring_options o = {mode, index, 0, 0};
  struct ring *ring = ring_create(64, &o);
  memset(r, 0, sizeof *r);
  if (!ring) {
    snprintf(r->message, sizeof r->message, "ring creation failed: errno %d", errno);
    return;
  }
  enum { P = 8, ITEMS = 20000 };
  struct mt_arg args[P];
  pthread_t th[P];
  for (int i = 0; i < P; i++) {
    args[i] = (struct mt_arg){NULL, ring, (uint64_t)i + 1, ITEMS, 0, 0};
    pthread_create(&th[i], NULL, mt_ring_producer, &args[i]);
  }
  uint64_t sum = 0, want = 0;
  long got = 0;
  while (got < (long)P * ITEMS) {
    void *item;
    if (ring_poll(ring, &item) == RING_OK) {
      sum += (uintptr_t)item;
      got++;
    }
  }
  for (int i = 0; i < P; i++) {
    pthread_join(th[i], NULL);
    want += args[i].sum;
  }
  void *extra;
  r->a = sum;
  r->b = (uint64_t)got;
  if (sum != want || ring_poll(ring, &extra) != RING_EMPTY)
    snprintf(r->message, sizeof r->message, "checksum %#lx, offered %#lx", (unsigned long)sum, (unsigned long)want);
  else
    r->ok = 1;
  ring_destroy(ring);
}

struct prim_arg {
  struct rseq_percpu_mode m;
  intptr_t *sums;
  long reps;
};

static void *mt_prim_worker(void *p) {
  struct prim_arg *a = p;
  for (long i = 0; i < a->reps;) {
    int cpu = a->m.mode == RSEQ_MODE_CAS ? 0 : rseq_current_index(a->m.index);
    if (rseq_percpu_addv(&a->m, &a->sums[cpu], 1, cpu) == RSEQ_COMMIT) i++;
  }
  return NULL;
}

static void mt_prim(enum rseq_mode mode, enum rseq_index index, uint64_t seed, struct mt_result *r) {
  (void)seed;
  memset(r, 0, sizeof *r);
  struct prim_arg a;
  const char *why;
  if (rseq_resolve_mode(mode, index, &a.m, &why) != 0) {
    snprintf(r->message, sizeof r->message, "%s", why);
    return;
  }
  int n = rseq_index_count(index);
  a.sums = calloc((size_t)n, sizeof(intptr_t));
  a.reps = 100000;
  enum { T = 8 };
  pthread_t th[T];
  for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, mt_prim_worker, &a);
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  for (int c = 0; c < n; c++) r->a += (uint64_t)a.sums[c];
  r->b = (uint64_t)T * (uint64_t)a.reps;
  r->ok = r->a == r->b;
  if (!r->ok) snprintf(r->message, sizeof r->message, "sum %lu, want %lu", (unsigned long)r->a, (unsigned long)r->b);
  free(a.sums);
}

int main(int argc, char **argv) {
  double seconds = 10;
  uint64_t seed = 1;
  size_t nops = 2000;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--ops") && i + 1 < argc) nops = (size_t)atol(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--seconds N] [--seed S] [--ops N]\n", argv[0]);
      return 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGALRM, on_watchdog);
  if (!rseq_available()) {
    printf("SKIPPED: rseq unavailable (%s): nothing to compare CAS mode with\n",
           rseq_unavailable_reason());
    return 0;
  }
  int nindex = rseq_mm_cid_available() ? 2 : 1;
  if (nindex == 1) printf("note: mm_cid not maintained by this kernel: cpu_id index only\n");
  if (rseq_fake_cpu_enter() != 0) {
    perror("rseq_fake_cpu_enter");
    return 1;
  }
  struct {
    long runs, ops;
  } stats[FAMILY_COUNT][2] = {{{0}}};
  struct op *ops = malloc(sizeof *ops * nops);
  double start = now(), deadline = start + seconds;
  uint64_t s = seed;
  printf("differential: seed %lu, %zu ops per stream, %.0f s\n", (unsigned long)seed, nops, seconds);
  // Single-threaded, exact. At least one round of every family, then until the budget.
  for (int round = 0; round == 0 || now() < deadline * 0.8 + start * 0.2; round++, s++) {
    for (int f = 0; f < FAMILY_COUNT; f++) {
      for (int ix = 0; ix < nindex; ix++) {
        ops_generate((enum ops_family)f, s * FAMILY_COUNT + (uint64_t)f, ops, nops);
        snprintf(current, sizeof current, "family %s index %s stream seed %lu (--seed %lu --ops %zu)",
                 ops_family_name((enum ops_family)f), rseq_index_name((enum rseq_index)ix),
                 (unsigned long)(s * FAMILY_COUNT + (uint64_t)f), (unsigned long)s, nops);
        alarm(30);
        char why[600];
        if (ops_compare_modes((enum ops_family)f, (enum rseq_index)ix, ops, nops, why, sizeof why)) {
          printf("\nDIVERGENCE: family %s, index %s, seed %lu (stream seed %lu): %s\n",
                 ops_family_name((enum ops_family)f), rseq_index_name((enum rseq_index)ix),
                 (unsigned long)seed, (unsigned long)(s * FAMILY_COUNT + (uint64_t)f), why);
          alarm(0);  // shrinking reruns many streams; each is bounded by the check above
          size_t m = shrink((enum ops_family)f, (enum rseq_index)ix, ops, nops);
          ops_compare_modes((enum ops_family)f, (enum rseq_index)ix, ops, m, why, sizeof why);
          printf("shrunk to %zu ops (%s):\n", m, why);
          ops_print((enum ops_family)f, ops, m, stdout);
          printf("reproduce: bazel run //ci:differential -- --seed %lu --ops %zu\n", (unsigned long)s, nops);
          return 1;
        }
        stats[f][ix].runs++;
        stats[f][ix].ops += (long)nops;
      }
    }
  }
  if (rseq_fake_cpu_exit() != 0) perror("rseq_fake_cpu_exit");

  // Multi-threaded, on invariants and accounting.
  typedef void (*mt_fn)(enum rseq_mode, enum rseq_index, uint64_t, struct mt_result *);
  mt_fn mts[FAMILY_COUNT] = {mt_alloc, mt_ring, mt_prim};
  struct mt_result mres[FAMILY_COUNT][2][2];
  int failed = 0;
  for (int f = 0; f < FAMILY_COUNT; f++)
    for (int ix = 0; ix < nindex; ix++) {
      for (int md = 0; md < 2; md++) {
        snprintf(current, sizeof current, "multi-threaded %s, mode %s, index %s",
                 ops_family_name((enum ops_family)f), md ? "cas" : "rseq", rseq_index_name((enum rseq_index)ix));
        alarm(60);
        mts[f](md ? RSEQ_MODE_CAS : RSEQ_MODE_RSEQ, (enum rseq_index)ix, seed, &mres[f][ix][md]);
      }
      struct mt_result *a = &mres[f][ix][0], *b = &mres[f][ix][1];
      // Accounting that must agree: ring checksums and counts, prim sums; the
      // allocator's balance (0 in both).
      int agree = f == FAMILY_ALLOC ? a->b == b->b : (a->a == b->a && a->b == b->b);
      if (!a->ok || !b->ok || !agree) {
        printf("\nMULTI-THREADED FAILURE: family %s index %s seed %lu: rseq %s%s; cas %s%s; %s\n",
               ops_family_name((enum ops_family)f), rseq_index_name((enum rseq_index)ix),
               (unsigned long)seed, a->ok ? "ok" : "FAILED ", a->message, b->ok ? "ok" : "FAILED ",
               b->message, agree ? "accounting agrees" : "accounting DIFFERS");
        failed = 1;
      }
    }

  printf("\n| family | index | single-threaded runs | ops per mode | result | multi-threaded (rseq / cas) |\n");
  printf("|---|---|---|---|---|---|\n");
  for (int f = 0; f < FAMILY_COUNT; f++)
    for (int ix = 0; ix < nindex; ix++)
      printf("| %s | %s | %ld | %ld | identical traces, models hold | %s / %s |\n",
             ops_family_name((enum ops_family)f), rseq_index_name((enum rseq_index)ix),
             stats[f][ix].runs, stats[f][ix].ops, mres[f][ix][0].ok ? "ok" : "FAILED",
             mres[f][ix][1].ok ? "ok" : "FAILED");
  printf("\ndifferential: %s in %.1f s (seed %lu)\n", failed ? "FAILED" : "no divergence",
         now() - start, (unsigned long)seed);
  free(ops);
  return failed;
}
