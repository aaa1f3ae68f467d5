// alloc_bench: one allocator workload, measured once, on whatever malloc the process
// has (glibc, or one LD_PRELOADed by bench/all). Prints one line:
//   result workload=NAME value=X unit=U rss_kb=N
// Workloads (--workload):
//   pair       malloc+free of --size bytes in one thread              ns per pair
//   larson     --threads threads replace random blocks (16..1000 B) in their slot
//              arrays and trade arrays with each other (cross-thread frees)   Mops/s
//   xmalloc    half the threads allocate, the other half free what they made  Mops/s
//   scratch    each thread allocates a small object and writes it hard: the
//              allocator's placement decides whether threads share cache lines ns/write
//   churn      threads are created, allocate and free a little, and exit   threads/s
// --millis N: measuring time. --iterations N (pair only): a fixed count, for callgrind.
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return *s >> 33;
}

static struct {
  const char *workload;
  size_t size;
  double millis;
  int threads;
  long iterations;
} opt = {"pair", 32, 200, 0, 0};

static _Atomic int stop;      // relaxed: a stop request to the workers
static _Atomic long total;    // relaxed: summed after the workers are joined

// --- pair
static double run_pair(void) {
  long n = 0;
  if (opt.iterations > 0) {
    for (long i = 0; i < opt.iterations; i++) {
      void *p = malloc(opt.size);
      __asm__ volatile("" : : "r"(p) : "memory");
      free(p);
    }
    return 0;
  }
  double start = now(), end = start + opt.millis / 1000;
  while (now() < end) {
    for (int i = 0; i < 10000; i++) {
      void *p = malloc(opt.size);
      __asm__ volatile("" : : "r"(p) : "memory");  // keep the pair
      free(p);
    }
    n += 10000;
  }
  return (now() - start) * 1e9 / (double)n;
}

// --- larson: each thread replaces random blocks in its own slot array; every round it
// hands some of its blocks to another thread, which frees them (cross-thread frees).
#define SLOTS 1000
#define HANDOFF 100
struct mailbox {
  pthread_mutex_t lock;  // guards the hand-off slots: a small exchange between two threads
  void *blocks[4 * HANDOFF];
  int n;
};
static struct mailbox boxes[1024];

static void *larson_worker(void *arg) {
  long id = (long)arg;
  uint64_t s = (uint64_t)id * 7919 + 1;
  long ops = 0;
  void **mine = calloc(SLOTS, sizeof(void *));
  for (int k = 0; k < SLOTS; k++) mine[k] = malloc(64);
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    for (int i = 0; i < 5000; i++) {
      int k = (int)(rnd(&s) % SLOTS);
      free(mine[k]);
      mine[k] = malloc(16 + rnd(&s) % 985);
      ((char *)mine[k])[0] = 1;
    }
    ops += 5000;
    struct mailbox *to = &boxes[rnd(&s) % (uint64_t)opt.threads];
    pthread_mutex_lock(&to->lock);
    for (int i = 0; i < HANDOFF && to->n < 4 * HANDOFF; i++) {
      int k = (int)(rnd(&s) % SLOTS);
      to->blocks[to->n++] = mine[k];
      mine[k] = malloc(64);
    }
    pthread_mutex_unlock(&to->lock);
    struct mailbox *in = &boxes[id];
    void *got[4 * HANDOFF];
    pthread_mutex_lock(&in->lock);
    int n = in->n;
    memcpy(got, in->blocks, sizeof(void *) * (size_t)n);
    in->n = 0;
    pthread_mutex_unlock(&in->lock);
    for (int i = 0; i < n; i++) free(got[i]);
    ops += n;
  }
  for (int k = 0; k < SLOTS; k++) free(mine[k]);
  free(mine);
  atomic_fetch_add_explicit(&total, ops, memory_order_relaxed);
  return NULL;
}

static double run_larson(void) {
  for (int t = 0; t < opt.threads; t++) pthread_mutex_init(&boxes[t].lock, NULL);
  pthread_t th[1024];
  double start = now();
  for (long t = 0; t < opt.threads; t++) pthread_create(&th[t], NULL, larson_worker, (void *)t);
  usleep((useconds_t)(opt.millis * 1000));
  atomic_store_explicit(&stop, 1, memory_order_relaxed);
  for (int t = 0; t < opt.threads; t++) pthread_join(th[t], NULL);
  double secs = now() - start;
  for (int t = 0; t < opt.threads; t++)
    for (int i = 0; i < boxes[t].n; i++) free(boxes[t].blocks[i]);
  return (double)atomic_load(&total) / secs / 1e6;
}

// --- xmalloc: producers allocate, consumers free, through a locked queue
#define QCAP 4096
static void *queue[QCAP];
static long qhead, qtail;
static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;  // guards queue, qhead, qtail

static void *xproducer(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg + 1;
  long n = 0;
  void *batch[64];
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    for (int i = 0; i < 64; i++) batch[i] = malloc(64 + rnd(&s) % 448);
    int i = 0;
    while (i < 64) {
      pthread_mutex_lock(&qlock);
      while (i < 64 && qhead - qtail < QCAP) queue[qhead++ % QCAP] = batch[i++];
      pthread_mutex_unlock(&qlock);
      if (i < 64 && atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (; i < 64; i++) free(batch[i]);
      }
    }
    n += 64;
  }
  atomic_fetch_add_explicit(&total, n, memory_order_relaxed);
  return NULL;
}

static void *xconsumer(void *arg) {
  (void)arg;
  void *batch[64];
  for (;;) {
    int n = 0;
    pthread_mutex_lock(&qlock);
    while (n < 64 && qtail < qhead) batch[n++] = queue[qtail++ % QCAP];
    pthread_mutex_unlock(&qlock);
    for (int i = 0; i < n; i++) free(batch[i]);
    if (n == 0 && atomic_load_explicit(&stop, memory_order_relaxed) == 2) return NULL;
  }
}

static double run_xmalloc(void) {
  int half = opt.threads / 2 > 0 ? opt.threads / 2 : 1;
  pthread_t p[512], c[512];
  double start = now();
  for (int i = 0; i < half; i++) pthread_create(&p[i], NULL, xproducer, (void *)(uintptr_t)i);
  for (int i = 0; i < half; i++) pthread_create(&c[i], NULL, xconsumer, NULL);
  usleep((useconds_t)(opt.millis * 1000));
  atomic_store_explicit(&stop, 1, memory_order_relaxed);
  for (int i = 0; i < half; i++) pthread_join(p[i], NULL);
  double secs = now() - start;
  atomic_store_explicit(&stop, 2, memory_order_relaxed);
  for (int i = 0; i < half; i++) pthread_join(c[i], NULL);
  return (double)atomic_load(&total) / secs / 1e6;
}

// --- cache-scratch: each thread writes its own small object many times
static void *scratch_worker(void *arg) {
  (void)arg;
  long writes = 0;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    volatile char *o = malloc(8);
    for (int i = 0; i < 100000; i++) o[i & 7]++;
    free((void *)o);
    writes += 100000;
  }
  atomic_fetch_add_explicit(&total, writes, memory_order_relaxed);
  return NULL;
}

static double run_scratch(void) {
  // The main thread allocates the first objects, the classic trigger for false sharing
  // in allocators that hand consecutive small blocks to different threads.
  pthread_t th[1024];
  double start = now();
  for (int t = 0; t < opt.threads; t++) pthread_create(&th[t], NULL, scratch_worker, NULL);
  usleep((useconds_t)(opt.millis * 1000));
  atomic_store_explicit(&stop, 1, memory_order_relaxed);
  for (int t = 0; t < opt.threads; t++) pthread_join(th[t], NULL);
  return (now() - start) * 1e9 * opt.threads / (double)atomic_load(&total);
}

// --- churn
static void *churn_worker(void *arg) {
  (void)arg;
  void *p[100];
  for (int r = 0; r < 10; r++) {
    for (int i = 0; i < 100; i++) p[i] = malloc((size_t)(16 + i * 8));
    for (int i = 0; i < 100; i++) free(p[i]);
  }
  return NULL;
}

static double run_churn(void) {
  long n = 0;
  double start = now(), end = start + opt.millis / 1000;
  while (now() < end) {
    pthread_t th[8];
    for (int i = 0; i < 8; i++) pthread_create(&th[i], NULL, churn_worker, NULL);
    for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
    n += 8;
  }
  return (double)n / (now() - start);
}

int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--workload")) opt.workload = argv[i + 1];
    else if (!strcmp(argv[i], "--size")) opt.size = (size_t)atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--millis")) opt.millis = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads")) opt.threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--iterations")) opt.iterations = atol(argv[i + 1]);
    else {
      fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (opt.threads <= 0) opt.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (opt.threads > 1024) opt.threads = 1024;
  double v;
  const char *unit;
  if (!strcmp(opt.workload, "pair")) {
    v = run_pair();
    unit = "ns/pair";
  } else if (!strcmp(opt.workload, "larson")) {
    v = run_larson();
    unit = "Mops/s";
  } else if (!strcmp(opt.workload, "xmalloc")) {
    v = run_xmalloc();
    unit = "Mops/s";
  } else if (!strcmp(opt.workload, "scratch")) {
    v = run_scratch();
    unit = "ns/write";
  } else if (!strcmp(opt.workload, "churn")) {
    v = run_churn();
    unit = "threads/s";
  } else {
    fprintf(stderr, "unknown workload %s\n", opt.workload);
    return 2;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("result workload=%s value=%.4f unit=%s rss_kb=%ld\n", opt.workload, v, unit, ru.ru_maxrss);
  return 0;
}
