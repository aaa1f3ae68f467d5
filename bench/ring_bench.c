// ring_bench: offer+poll throughput of the per-CPU ring in rseq mode, CAS mode, and a
// mutex-protected ring as the baseline, measured interleaved in one run.
//   pair       one thread: offer then poll, ns per pair
//   mpsc-P     P producer threads and one consumer thread, items per second
// Each configuration runs --reps times, interleaved (rseq, cas, mutex, rseq, ...), and
// the table shows min / median / max and the ratio of medians to CAS mode.
// Flags: --reps N --millis N (per measurement) --producers LIST (default 1,8) --json FILE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring/ring.h"

// --- the baseline: one ring behind one mutex.
struct mutex_ring {
  pthread_mutex_t lock;  // guards everything below: the baseline is "just lock it"
  void **slots;
  size_t cap, head, tail;
};

static struct mutex_ring *mutex_ring_create(size_t cap) {
  struct mutex_ring *m = calloc(1, sizeof *m);
  pthread_mutex_init(&m->lock, NULL);
  m->slots = calloc(cap, sizeof(void *));
  m->cap = cap;
  return m;
}

static int mutex_ring_offer(struct mutex_ring *m, void *item) {
  pthread_mutex_lock(&m->lock);
  int r = RING_FULL;
  if (m->head - m->tail < m->cap) {
    m->slots[m->head++ % m->cap] = item;
    r = RING_OK;
  }
  pthread_mutex_unlock(&m->lock);
  return r;
}

static int mutex_ring_poll(struct mutex_ring *m, void **item) {
  pthread_mutex_lock(&m->lock);
  int r = RING_EMPTY;
  if (m->tail != m->head) {
    *item = m->slots[m->tail++ % m->cap];
    r = RING_OK;
  }
  pthread_mutex_unlock(&m->lock);
  return r;
}

enum kind { KIND_RSEQ, KIND_CAS, KIND_MUTEX, NKINDS };
static const char *kind_names[NKINDS] = {"rseq", "cas", "mutex"};

struct target {
  enum kind kind;
  struct ring *ring;
  struct mutex_ring *mutex;
};

static inline int offer(struct target *t, void *item) {
  return t->kind == KIND_MUTEX ? mutex_ring_offer(t->mutex, item) : ring_offer(t->ring, item);
}

static inline int poll1(struct target *t, void **item) {
  return t->kind == KIND_MUTEX ? mutex_ring_poll(t->mutex, item) : ring_poll(t->ring, item);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct target make_target(enum kind k) {
  struct target t = {k, NULL, NULL};
  if (k == KIND_MUTEX) {
    t.mutex = mutex_ring_create(1024);
  } else {
    struct ring_options o = {k == KIND_RSEQ ? RSEQ_MODE_RSEQ : RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID, 0,
                             0};
    t.ring = ring_create(1024, &o);
    if (!t.ring) {
      fprintf(stderr, "ring_bench: cannot create a %s ring (errno %d)\n", kind_names[k], errno);
      exit(1);
    }
  }
  return t;
}

static void destroy_target(struct target *t) {
  if (t->ring) ring_destroy(t->ring);
  if (t->mutex) {
    free(t->mutex->slots);
    free(t->mutex);
  }
}

// ns per offer+poll pair in one thread.
static double measure_pair(enum kind k, double millis) {
  struct target t = make_target(k);
  void *item;
  long n = 0;
  double start = now(), end = start + millis / 1000;
  while (now() < end) {
    for (int i = 0; i < 1000; i++) {
      offer(&t, (void *)(uintptr_t)i);
      poll1(&t, &item);
    }
    n += 1000;
  }
  double ns = (now() - start) * 1e9 / (double)n;
  destroy_target(&t);
  return ns;
}

struct mpsc {
  struct target *t;
  _Atomic int stop;   // relaxed: a stop request
  _Atomic long offered;  // relaxed: summed after join
};

static void *bench_producer(void *p) {
  struct mpsc *m = p;
  long n = 0;
  while (!atomic_load_explicit(&m->stop, memory_order_relaxed)) {
    for (int i = 0; i < 64; i++)
      if (offer(m->t, (void *)(uintptr_t)(i + 1)) == RING_OK) n++;
  }
  atomic_fetch_add_explicit(&m->offered, n, memory_order_relaxed);
  return NULL;
}

// Items per second through P producers and one consumer.
static double measure_mpsc(enum kind k, int producers, double millis) {
  struct target t = make_target(k);
  struct mpsc m = {&t, 0, 0};
  pthread_t th[64];
  for (int i = 0; i < producers; i++) pthread_create(&th[i], NULL, bench_producer, &m);
  long polled = 0;
  void *items[256];
  double start = now(), end = start + millis / 1000;
  while (now() < end) {
    if (k == KIND_MUTEX) {
      void *item;
      for (int i = 0; i < 256; i++) polled += mutex_ring_poll(t.mutex, &item) == RING_OK;
    } else {
      long got = ring_poll_batch(t.ring, items, 256);
      if (got > 0) polled += got;
    }
  }
  double elapsed = now() - start;
  atomic_store_explicit(&m.stop, 1, memory_order_relaxed);
  for (int i = 0; i < producers; i++) pthread_join(th[i], NULL);
  if (t.ring) ring_consumer_release(t.ring);
  destroy_target(&t);
  return (double)polled / elapsed;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int reps = 5;
  double millis = 300;
  int producers[8] = {1, 8}, nprod = 2;
  const char *json = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--millis")) millis = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
    else if (!strcmp(argv[i], "--producers")) {
      nprod = 0;
      for (char *s = argv[i + 1]; *s && nprod < 8;) {
        producers[nprod++] = (int)strtol(s, &s, 10);
        if (*s == ',') s++;
      }
    } else {
      fprintf(stderr, "usage: %s [--reps N] [--millis N] [--producers 1,8] [--json FILE]\n",
              argv[0]);
      return 2;
    }
  }
  if (!rseq_available()) {
    fprintf(stderr, "ring_bench: rseq unavailable (%s): nothing to compare\n",
            rseq_unavailable_reason());
    return 1;
  }
  int nconf = 1 + nprod;
  double *res = calloc((size_t)(nconf * NKINDS * reps), sizeof(double));
#define RES(conf, kind, rep) res[((conf) * NKINDS + (kind)) * reps + (rep)]
  for (int rep = 0; rep < reps; rep++)
    for (int conf = 0; conf < nconf; conf++)
      for (int k = 0; k < NKINDS; k++)  // interleaved: noise hits every kind alike
        RES(conf, k, rep) = conf == 0 ? measure_pair((enum kind)k, millis)
                                      : measure_mpsc((enum kind)k, producers[conf - 1], millis);
  FILE *js = json ? fopen(json, "w") : NULL;
  if (js) fprintf(js, "{\"benchmark\": \"ring\", \"reps\": %d, \"results\": [", reps);
  printf("| workload | impl | min | median | max | unit | median vs cas |\n");
  printf("|---|---|---|---|---|---|---|\n");
  for (int conf = 0; conf < nconf; conf++) {
    double med[NKINDS];
    char name[32];
    if (conf == 0)
      snprintf(name, sizeof name, "offer+poll pair");
    else
      snprintf(name, sizeof name, "mpsc %d producer%s", producers[conf - 1],
               producers[conf - 1] > 1 ? "s" : "");
    const char *unit = conf == 0 ? "ns/pair" : "Mitems/s";
    double scale = conf == 0 ? 1 : 1e-6;
    for (int k = 0; k < NKINDS; k++) {
      qsort(&RES(conf, k, 0), (size_t)reps, sizeof(double), cmp_double);
      med[k] = RES(conf, k, reps / 2);
    }
    for (int k = 0; k < NKINDS; k++) {
      // Speed-up over CAS: lower is better for ns, higher for throughput.
      double ratio = conf == 0 ? med[KIND_CAS] / med[k] : med[k] / med[KIND_CAS];
      printf("| %s | %s | %.2f | %.2f | %.2f | %s | %.2fx |\n", name, kind_names[k],
             RES(conf, k, 0) * scale, med[k] * scale, RES(conf, k, reps - 1) * scale, unit, ratio);
      if (js)
        fprintf(js,
                "%s\n {\"workload\": \"%s\", \"impl\": \"%s\", \"unit\": \"%s\", \"min\": %.4f, "
                "\"median\": %.4f, \"max\": %.4f, \"speedup_vs_cas\": %.3f}",
                conf || k ? "," : "", name, kind_names[k], unit, RES(conf, k, 0) * scale,
                med[k] * scale, RES(conf, k, reps - 1) * scale, ratio);
    }
  }
  if (js) {
    fprintf(js, "\n]}\n");
    fclose(js);
  }
  free(res);
  return 0;
}
