// alloc_bench: one allocator workload, measured once, on whatever malloc the process
// has (glibc, or one LD_PRELOADed by bench/all). Prints one line:
//   result workload=NAME value=X unit=U rss_kb=N rss_now_kb=N
// (rss_kb: peak RSS of the run; rss_now_kb: RSS when the workload ended.)
// Workloads (--workload), each with --threads T (default: the CPUs online):
//   pair     malloc+free of --size bytes in a loop, in each thread.   T = 1: ns per
//            pair; T > 1: million pairs per second, all threads together
//   churn    each thread keeps --live blocks of random sizes (most below 256 B, some
//            up to 16 KiB) and replaces a random one per step, touching it   Mops/s
//   xfree    cross-thread frees: T/2 producer/consumer pairs (at least one); each
//            producer allocates random 16..512 B blocks and hands them to its consumer
//            through a queue of its own; the consumer frees them   Mblocks/s
//   larson   T threads replace random blocks (16..1000 B) in their slot arrays and
//            trade some with each other, which free them   Mops/s
//   xmalloc  half the threads allocate, the other half free what they made, through
//            one locked queue   Mops/s
//   scratch  each thread allocates a small object and writes it hard: the allocator's
//            placement decides whether threads share cache lines   ns/write
//   threads  --count threads (1000) come and go, at most T at a time; each allocates
//            and frees blocks of random sizes. Then, after --settle-ms (1200), one more
//            burst of allocations in the main thread: rss_now_kb is the memory the
//            dead threads left behind   threads/s
// --millis N: measuring time. --iterations N (pair only): a fixed count, for callgrind.
#include <pthread.h>
#include <sched.h>
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
  int live;
  int count;
  double settle_ms;
} opt = {"pair", 32, 200, 0, 0, 256, 1000, 1200};

static _Atomic int stop;      // relaxed: a stop request to the workers
static _Atomic long total;    // relaxed: summed after the workers are joined
static pthread_barrier_t go;  // every worker starts measuring at once

// Runs fn in opt.threads threads for opt.millis; returns the elapsed seconds.
static double run_threads(void *(*fn)(void *), int n) {
  pthread_t th[1024];
  pthread_barrier_init(&go, NULL, (unsigned)n + 1);
  for (long t = 0; t < n; t++) pthread_create(&th[t], NULL, fn, (void *)t);
  pthread_barrier_wait(&go);
  double start = now();
  usleep((useconds_t)(opt.millis * 1000));
  atomic_store_explicit(&stop, 1, memory_order_relaxed);
  for (int t = 0; t < n; t++) pthread_join(th[t], NULL);
  return now() - start;
}

// --- pair
static long pair_loop(void) {
  long n = 0;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    for (int i = 0; i < 10000; i++) {
      void *p = malloc(opt.size);
      __asm__ volatile("" : : "r"(p) : "memory");  // keep the pair
      free(p);
    }
    n += 10000;
  }
  return n;
}

static void *pair_worker(void *arg) {
  (void)arg;
  pthread_barrier_wait(&go);
  atomic_fetch_add_explicit(&total, pair_loop(), memory_order_relaxed);
  return NULL;
}

static double run_pair(const char **unit) {
  if (opt.iterations > 0) {
    for (long i = 0; i < opt.iterations; i++) {
      void *p = malloc(opt.size);
      __asm__ volatile("" : : "r"(p) : "memory");
      free(p);
    }
    *unit = "ns/pair";
    return 0;
  }
  if (opt.threads == 1) {
    double start = now(), end = start + opt.millis / 1000;
    long n = 0;
    while (now() < end) {
      for (int i = 0; i < 10000; i++) {
        void *p = malloc(opt.size);
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
      }
      n += 10000;
    }
    *unit = "ns/pair";
    return (now() - start) * 1e9 / (double)n;
  }
  double secs = run_threads(pair_worker, opt.threads);
  *unit = "Mpairs/s";
  return (double)atomic_load(&total) / secs / 1e6;
}

// --- churn: a live set of random sizes per thread
static size_t churn_size(uint64_t *s) {
  uint64_t r = rnd(s) % 100;
  if (r < 80) return 16 + rnd(s) % 241;     // 16..256
  if (r < 95) return 257 + rnd(s) % 1792;   // ..2 KiB
  return 2049 + rnd(s) % 14336;             // ..16 KiB
}

static void *churn_worker(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 7919 + 17;
  int live = opt.live;
  char **slot = calloc((size_t)live, sizeof *slot);
  for (int k = 0; k < live; k++) {
    slot[k] = malloc(churn_size(&s));
    slot[k][0] = 1;
  }
  pthread_barrier_wait(&go);
  long ops = 0;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    for (int i = 0; i < 1000; i++) {
      int k = (int)(rnd(&s) % (uint64_t)live);
      free(slot[k]);
      size_t size = churn_size(&s);
      slot[k] = malloc(size);
      slot[k][0] = 1;
      slot[k][size - 1] = 2;
    }
    ops += 1000;
  }
  for (int k = 0; k < live; k++) free(slot[k]);
  free(slot);
  atomic_fetch_add_explicit(&total, ops, memory_order_relaxed);
  return NULL;
}

// --- xfree: producer -> consumer pairs, one single-producer queue each
#define XQ 1024
struct xqueue {
  _Alignas(64) _Atomic unsigned long head;  // written by the producer
  _Alignas(64) _Atomic unsigned long tail;  // written by the consumer
  void *slots[XQ];
};
static struct xqueue *xq;

static void *xfree_producer(void *arg) {
  long pair = (long)arg;
  struct xqueue *q = &xq[pair];
  uint64_t s = (uint64_t)pair + 3;
  pthread_barrier_wait(&go);
  long n = 0;
  unsigned long head = 0;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    // Acquire: the consumer's tail store follows its reads of the slots.
    unsigned long tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (head - tail == XQ) {
      sched_yield();
      continue;
    }
    while (head - tail < XQ) {
      char *p = malloc(16 + rnd(&s) % 497);
      p[0] = 1;
      q->slots[head % XQ] = p;
      head++;
      n++;
    }
    // Release: the slots (and the blocks' first bytes) before the new head.
    atomic_store_explicit(&q->head, head, memory_order_release);
  }
  atomic_fetch_add_explicit(&total, n, memory_order_relaxed);
  return NULL;
}

static void *xfree_consumer(void *arg) {
  struct xqueue *q = &xq[(long)arg];
  pthread_barrier_wait(&go);
  unsigned long tail = 0;
  for (;;) {
    // Acquire: pairs with the producer's release of head.
    unsigned long head = atomic_load_explicit(&q->head, memory_order_acquire);
    if (head == tail) {
      if (atomic_load_explicit(&stop, memory_order_relaxed) == 2) return NULL;
      sched_yield();
      continue;
    }
    while (tail != head) free(q->slots[tail++ % XQ]);
    // Release: our reads of the slots before the producer reuses them.
    atomic_store_explicit(&q->tail, tail, memory_order_release);
  }
}

static double run_xfree(void) {
  int pairs = opt.threads / 2 > 0 ? opt.threads / 2 : 1;
  xq = aligned_alloc(64, sizeof *xq * (size_t)pairs);
  memset(xq, 0, sizeof *xq * (size_t)pairs);
  pthread_t p[512], c[512];
  pthread_barrier_init(&go, NULL, (unsigned)(2 * pairs + 1));
  for (long i = 0; i < pairs; i++) {
    pthread_create(&p[i], NULL, xfree_producer, (void *)i);
    pthread_create(&c[i], NULL, xfree_consumer, (void *)i);
  }
  pthread_barrier_wait(&go);
  double start = now();
  usleep((useconds_t)(opt.millis * 1000));
  atomic_store_explicit(&stop, 1, memory_order_relaxed);
  for (int i = 0; i < pairs; i++) pthread_join(p[i], NULL);
  double secs = now() - start;
  atomic_store_explicit(&stop, 2, memory_order_relaxed);
  for (int i = 0; i < pairs; i++) pthread_join(c[i], NULL);
  free(xq);
  return (double)atomic_load(&total) / secs / 1e6;
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
  pthread_barrier_wait(&go);
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
  double secs = run_threads(larson_worker, opt.threads);
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
  pthread_barrier_wait(&go);
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

// --- threads: many threads come and go; what do they leave behind?
static void *threads_worker(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 31 + 7;
  char *b[256];
  for (int r = 0; r < 4; r++) {
    for (int i = 0; i < 256; i++) {
      b[i] = malloc(churn_size(&s));
      b[i][0] = 1;
    }
    for (int i = 0; i < 256; i++) free(b[i]);
  }
  return NULL;
}

static double run_threads_come_and_go(void) {
  double start = now();
  int done = 0, wave = opt.threads;
  pthread_t th[1024];
  while (done < opt.count) {
    int n = opt.count - done < wave ? opt.count - done : wave;
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, threads_worker, (void *)(uintptr_t)(done + i));
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    done += n;
  }
  double rate = (double)done / (now() - start);
  // The program goes on: some time later it allocates again.
  usleep((useconds_t)(opt.settle_ms * 1000));
  uint64_t s = 99;
  for (int r = 0; r < 4; r++) {
    char *b[256];
    for (int i = 0; i < 256; i++) {
      b[i] = malloc(churn_size(&s));
      b[i][0] = 1;
    }
    for (int i = 0; i < 256; i++) free(b[i]);
  }
  return rate;
}

static long rss_now_kb(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
  }
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--workload")) opt.workload = argv[i + 1];
    else if (!strcmp(argv[i], "--size")) opt.size = (size_t)atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--millis")) opt.millis = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads")) opt.threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--iterations")) opt.iterations = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--live")) opt.live = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--count")) opt.count = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--settle-ms")) opt.settle_ms = atof(argv[i + 1]);
    else {
      fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (opt.threads <= 0) opt.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (opt.threads > 1024) opt.threads = 1024;
  if (opt.live < 1) opt.live = 1;
  double v;
  const char *unit = "Mops/s";
  if (!strcmp(opt.workload, "pair")) {
    v = run_pair(&unit);
  } else if (!strcmp(opt.workload, "churn")) {
    double secs = run_threads(churn_worker, opt.threads);
    v = (double)atomic_load(&total) / secs / 1e6;
  } else if (!strcmp(opt.workload, "xfree")) {
    v = run_xfree();
    unit = "Mblocks/s";
  } else if (!strcmp(opt.workload, "larson")) {
    v = run_larson();
  } else if (!strcmp(opt.workload, "xmalloc")) {
    v = run_xmalloc();
  } else if (!strcmp(opt.workload, "scratch")) {
    double secs = run_threads(scratch_worker, opt.threads);
    v = secs * 1e9 * opt.threads / (double)atomic_load(&total);
    unit = "ns/write";
  } else if (!strcmp(opt.workload, "threads")) {
    v = run_threads_come_and_go();
    unit = "threads/s";
  } else {
    fprintf(stderr, "unknown workload %s\n", opt.workload);
    return 2;
  }
  long now_kb = rss_now_kb();
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("result workload=%s value=%.4f unit=%s rss_kb=%ld rss_now_kb=%ld\n", opt.workload, v, unit,
         ru.ru_maxrss, now_kb);
  return 0;
}
