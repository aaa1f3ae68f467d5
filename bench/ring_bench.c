// ring_bench: the per-CPU ring in rseq mode against its CAS mode and a mutex-protected
// ring, measured interleaved in one run (never a pass/fail test: ratios of one run).
//   pair        one thread: offer then poll, ns per pair (pointer items and 32-byte records)
//   mpsc        P producer threads and one consumer thread, items per second, for
//               P = 1, ncpus, 8 and 8 x ncpus; pointer items and 32-byte records;
//               batches of 1 and 16 (producers: ring_offer_batch / ring_offer_record_batch
//               of 16; the consumer: ring_poll_batch / ring_poll_record_batch of 16), or
//               single offers and polls
// The consumer runs on the first CPU this process may use and the producers on the
// others, round-robin (on a 1-CPU machine they all share it): a producer's items cross
// to another core, as in the design's use. Thread counts come from the machine, so the
// same command scales to a larger one. Each configuration runs --reps times, interleaved
// (rseq, cas, mutex, rseq, ...); the table shows min / median / max and the ratio of
// medians to CAS mode. MPSC rows also give the median as slot lines per second: items
// cross from the producers' cores to the consumer's in 64-byte lines, 64 / slot bytes
// items at a time (ring_slot_bytes; the mutex ring's slots are the bare payload), and
// when both modes are bound by how many lines the cores can hand over per second, their
// ratio is that of their slot densities.
// Flags: --reps N --millis N (per measurement) --producers LIST (default 1,ncpus,8,8*ncpus)
//        --json FILE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring/ring.h"

#define REC 32  // bytes per record in the record workloads
#define BATCH_MAX 16

// --- the baseline: one ring behind one mutex, fixed-size payloads.
struct mutex_ring {
  pthread_mutex_t lock;  // guards everything below: the baseline is "just lock it"
  unsigned char *slots;
  size_t cap, size, head, tail;
};

static struct mutex_ring *mutex_ring_create(size_t cap, size_t size) {
  struct mutex_ring *m = calloc(1, sizeof *m);
  pthread_mutex_init(&m->lock, NULL);
  m->slots = calloc(cap, size);
  m->cap = cap;
  m->size = size;
  return m;
}

// Offers up to n payloads under one lock hold; returns how many fitted.
static size_t mutex_ring_offer(struct mutex_ring *m, const void *payloads, size_t n) {
  pthread_mutex_lock(&m->lock);
  size_t k = 0;
  for (; k < n && m->head - m->tail < m->cap; k++, m->head++)
    memcpy(m->slots + (m->head % m->cap) * m->size, (const char *)payloads + k * m->size, m->size);
  pthread_mutex_unlock(&m->lock);
  return k;
}

static size_t mutex_ring_poll(struct mutex_ring *m, void *out, size_t max) {
  pthread_mutex_lock(&m->lock);
  size_t k = 0;
  for (; k < max && m->tail != m->head; k++, m->tail++)
    memcpy((char *)out + k * m->size, m->slots + (m->tail % m->cap) * m->size, m->size);
  pthread_mutex_unlock(&m->lock);
  return k;
}

enum kind { KIND_RSEQ, KIND_CAS, KIND_MUTEX, NKINDS };
static const char *kind_names[NKINDS] = {"rseq", "cas", "mutex"};

struct target {
  enum kind kind;
  bool record;
  struct ring *ring;
  struct mutex_ring *mutex;
};

static size_t payload_size(const struct target *t) { return t->record ? REC : sizeof(void *); }

// Offers n payloads (1 or a batch): how many went in.
static inline size_t offer(struct target *t, const void *payloads, size_t n) {
  if (t->kind == KIND_MUTEX) return mutex_ring_offer(t->mutex, payloads, n);
  if (!t->record) {
    if (n == 1) return ring_offer(t->ring, *(void *const *)payloads) == RING_OK;
    return ring_offer_batch(t->ring, payloads, n);
  }
  if (n == 1) return ring_offer_record(t->ring, payloads) == RING_OK;
  return ring_offer_record_batch(t->ring, payloads, n);
}

static inline size_t poll_items(struct target *t, void *out, size_t max) {
  if (t->kind == KIND_MUTEX) return mutex_ring_poll(t->mutex, out, max);
  if (max == 1) {
    int r = t->record ? ring_poll_record(t->ring, out) : ring_poll(t->ring, out);
    return r == RING_OK;
  }
  long got = t->record ? ring_poll_record_batch(t->ring, out, max)
                       : ring_poll_batch(t->ring, out, max);
  return got > 0 ? (size_t)got : 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct target make_target(enum kind k, bool record) {
  struct target t = {k, record, NULL, NULL};
  if (k == KIND_MUTEX) {
    t.mutex = mutex_ring_create(1024, payload_size(&t));
  } else {
    struct ring_options o = {k == KIND_RSEQ ? RSEQ_MODE_RSEQ : RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID,
                             record ? REC : 0, 0};
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

// Bytes an item takes in the slots its producer writes and the consumer reads.
static size_t slot_bytes(enum kind k, bool record) {
  struct target t = make_target(k, record);
  size_t b = t.ring ? ring_slot_bytes(t.ring) : payload_size(&t);
  destroy_target(&t);
  return b;
}

// --- CPUs: the consumer on the first allowed CPU, producers round-robin on the rest.
static int cpus[1024], ncpus;

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

static int producer_cpu(int i) { return ncpus > 1 ? cpus[1 + i % (ncpus - 1)] : cpus[0]; }

// ns per offer+poll pair in one thread.
static double measure_pair(enum kind k, bool record, double millis) {
  struct target t = make_target(k, record);
  unsigned char in[REC] = {1}, out[REC];
  long n = 0;
  double start = now(), end = start + millis / 1000;
  while (now() < end) {
    for (int i = 0; i < 1000; i++) {
      in[1] = (unsigned char)i;
      offer(&t, in, 1);
      poll_items(&t, out, 1);
    }
    n += 1000;
  }
  double ns = (now() - start) * 1e9 / (double)n;
  destroy_target(&t);
  return ns;
}

struct mpsc {
  struct target *t;
  size_t batch;
  _Atomic int go, stop;    // relaxed: start and stop requests
  _Atomic long offered;    // relaxed: summed after join
};

struct producer_arg {
  struct mpsc *m;
  int cpu;
};

static void *bench_producer(void *p) {
  struct producer_arg *a = p;
  struct mpsc *m = a->m;
  pin(a->cpu);
  unsigned char payloads[BATCH_MAX * REC];
  for (size_t i = 0; i < sizeof payloads; i++) payloads[i] = (unsigned char)(i + 1);
  long n = 0;
  while (!atomic_load_explicit(&m->go, memory_order_relaxed)) {
  }
  while (!atomic_load_explicit(&m->stop, memory_order_relaxed))
    for (int i = 0; i < 64; i++) n += (long)offer(m->t, payloads, m->batch);
  atomic_fetch_add_explicit(&m->offered, n, memory_order_relaxed);
  return NULL;
}

// Items per second through P producers and one consumer.
static double measure_mpsc(enum kind k, bool record, int producers, size_t batch, double millis) {
  struct target t = make_target(k, record);
  struct mpsc m = {&t, batch, 0, 0, 0};
  pthread_t *th = calloc((size_t)producers, sizeof *th);
  struct producer_arg *args = calloc((size_t)producers, sizeof *args);
  pin(cpus[0]);
  for (int i = 0; i < producers; i++) {
    args[i] = (struct producer_arg){&m, producer_cpu(i)};
    pthread_create(&th[i], NULL, bench_producer, &args[i]);
  }
  unsigned char out[BATCH_MAX * REC];
  long polled = 0;
  atomic_store_explicit(&m.go, 1, memory_order_relaxed);
  double start = now(), end = start + millis / 1000;
  while (now() < end)
    for (int i = 0; i < 64; i++) polled += (long)poll_items(&t, out, batch);
  double elapsed = now() - start;
  atomic_store_explicit(&m.stop, 1, memory_order_relaxed);
  for (int i = 0; i < producers; i++) pthread_join(th[i], NULL);
  if (t.ring) ring_consumer_release(t.ring);
  destroy_target(&t);
  free(th);
  free(args);
  return (double)polled / elapsed;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

struct conf {
  bool pair, record;
  int producers;
  size_t batch;
};

int main(int argc, char **argv) {
  int reps = 5;
  double millis = 300;
  int producers[16], nprod = 0;
  const char *json = NULL;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  sched_getaffinity(0, sizeof allowed, &allowed);
  for (int c = 0; c < CPU_SETSIZE && ncpus < 1024; c++)
    if (CPU_ISSET(c, &allowed)) cpus[ncpus++] = c;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--millis")) millis = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
    else if (!strcmp(argv[i], "--producers")) {
      for (char *s = argv[i + 1]; *s && nprod < 16;) {
        producers[nprod++] = (int)strtol(s, &s, 10);
        if (*s == ',') s++;
      }
    } else {
      fprintf(stderr, "usage: %s [--reps N] [--millis N] [--producers 1,8] [--json FILE]\n",
              argv[0]);
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0 || reps < 1 || millis <= 0) {
    fprintf(stderr, "usage: %s [--reps N] [--millis N] [--producers 1,8] [--json FILE]\n", argv[0]);
    return 2;
  }
  if (nprod == 0) {  // 1, ncpus, 8 and 8 x ncpus, each once, in order
    int want[4] = {1, ncpus, 8, 8 * ncpus};
    for (int i = 0; i < 4; i++) {
      int at = 0;
      while (at < nprod && producers[at] < want[i]) at++;
      if (at < nprod && producers[at] == want[i]) continue;
      memmove(&producers[at + 1], &producers[at], sizeof producers[0] * (size_t)(nprod - at));
      producers[at] = want[i];
      nprod++;
    }
  }
  for (int i = 0; i < nprod; i++)
    if (producers[i] < 1 || producers[i] > 4096) {
      fprintf(stderr, "ring_bench: producer count %d out of range 1..4096\n", producers[i]);
      return 2;
    }
  if (!rseq_available()) {
    fprintf(stderr, "ring_bench: rseq unavailable (%s): nothing to compare\n",
            rseq_unavailable_reason());
    return 1;
  }
  struct conf confs[2 + 16 * 4];
  int nconf = 0;
  for (int rec = 0; rec < 2; rec++) confs[nconf++] = (struct conf){true, rec, 0, 1};
  for (int p = 0; p < nprod; p++)
    for (int rec = 0; rec < 2; rec++)
      for (size_t b = 1; b <= 16; b += 15) confs[nconf++] = (struct conf){false, rec, producers[p], b};
  printf("ring_bench: consumer on CPU %d, producers on %d other CPU%s; %d reps of %.0f ms\n",
         cpus[0], ncpus > 1 ? ncpus - 1 : 0, ncpus == 2 ? "" : "s", reps, millis);
  double *res = calloc((size_t)(nconf * NKINDS * reps), sizeof(double));
#define RES(conf, kind, rep) res[((conf) * NKINDS + (kind)) * reps + (rep)]
  for (int rep = 0; rep < reps; rep++)
    for (int c = 0; c < nconf; c++)
      for (int k = 0; k < NKINDS; k++)  // interleaved: noise hits every kind alike
        RES(c, k, rep) = confs[c].pair ? measure_pair((enum kind)k, confs[c].record, millis)
                                       : measure_mpsc((enum kind)k, confs[c].record,
                                                      confs[c].producers, confs[c].batch, millis);
  FILE *js = json ? fopen(json, "w") : NULL;
  if (js)
    fprintf(js, "{\"benchmark\": \"ring\", \"reps\": %d, \"ncpus\": %d, \"results\": [", reps,
            ncpus);
  size_t slot[NKINDS][2];  // bytes per item in each implementation's slots: [kind][record]
  for (int k = 0; k < NKINDS; k++)
    for (int rec = 0; rec < 2; rec++) slot[k][rec] = slot_bytes((enum kind)k, rec);
  printf("| workload | items | batch | impl | min | median | max | unit | median vs cas | slot bytes "
         "| median Mlines/s |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int c = 0; c < nconf; c++) {
    double med[NKINDS];
    char name[48];
    if (confs[c].pair)
      snprintf(name, sizeof name, "offer+poll pair");
    else
      snprintf(name, sizeof name, "mpsc %d producer%s", confs[c].producers,
               confs[c].producers > 1 ? "s" : "");
    const char *items = confs[c].record ? "32 B record" : "pointer";
    const char *unit = confs[c].pair ? "ns/pair" : "Mitems/s";
    double scale = confs[c].pair ? 1 : 1e-6;
    for (int k = 0; k < NKINDS; k++) {
      qsort(&RES(c, k, 0), (size_t)reps, sizeof(double), cmp_double);
      med[k] = RES(c, k, reps / 2);
    }
    for (int k = 0; k < NKINDS; k++) {
      // Speed-up over CAS: lower is better for ns, higher for throughput.
      double ratio = confs[c].pair ? med[KIND_CAS] / med[k] : med[k] / med[KIND_CAS];
      size_t sb = slot[k][confs[c].record];
      // Lines handed from producers to the consumer: MPSC only (a pair stays on one core).
      double lines = confs[c].pair ? 0 : med[k] * (double)sb / 64 / 1e6;
      char lines_txt[32] = "-";
      if (!confs[c].pair) snprintf(lines_txt, sizeof lines_txt, "%.1f", lines);
      printf("| %s | %s | %zu | %s | %.2f | %.2f | %.2f | %s | %.2fx | %zu | %s |\n", name, items,
             confs[c].batch, kind_names[k], RES(c, k, 0) * scale, med[k] * scale,
             RES(c, k, reps - 1) * scale, unit, ratio, sb, lines_txt);
      if (js)
        fprintf(js,
                "%s\n {\"workload\": \"%s\", \"items\": \"%s\", \"batch\": %zu, \"impl\": \"%s\", "
                "\"unit\": \"%s\", \"min\": %.4f, \"median\": %.4f, \"max\": %.4f, "
                "\"speedup_vs_cas\": %.3f, \"slot_bytes\": %zu, \"median_mlines_per_s\": %.3f}",
                c || k ? "," : "", name, items, confs[c].batch, kind_names[k], unit,
                RES(c, k, 0) * scale, med[k] * scale, RES(c, k, reps - 1) * scale, ratio, sb,
                lines);
    }
  }
  if (js) {
    fprintf(js, "\n]}\n");
    fclose(js);
  }
  free(res);
  return 0;
}
