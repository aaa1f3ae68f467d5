// chaos_fence_agent: the fence forcer of //stress:chaos, for a command we did not
// write. A membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) fence aborts the rseq
// critical sections of the *caller's own* process only, so it cannot be sent from
// outside: chaos preloads this agent, and in each process of the command (children
// inherit LD_PRELOAD) its constructor registers for rseq fences and starts one thread
// that fences every CHAOS_FENCE_US microseconds, a random CPU or all of them. At exit
// it appends "fence PID DONE ERRORS" to CHAOS_FENCE_REPORT for chaos's report.
// Statically linked programs cannot take it: chaos then reports no fences.
#include <errno.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// Relaxed: statistics, read once at exit.
static _Atomic unsigned long fences_done, fences_failed;
static long period_us;
static int ncpus;

static int membarrier(int cmd, unsigned flags, int cpu) {
  return (int)syscall(SYS_membarrier, cmd, flags, cpu);
}

static void *fence_main(void *arg) {
  (void)arg;
  unsigned long s = (unsigned long)getpid() * 2654435761u;
  for (;;) {
    s = s * 6364136223846793005ul + 1442695040888963407ul;
    int cpu = (int)((s >> 33) % (unsigned long)(ncpus + 1));  // ncpus: all of them
    int rc = cpu == ncpus ? membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0)
                          : membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                                       MEMBARRIER_CMD_FLAG_CPU, cpu);
    atomic_fetch_add_explicit(rc == 0 ? &fences_done : &fences_failed, 1, memory_order_relaxed);
    struct timespec ts = {period_us / 1000000, (period_us % 1000000) * 1000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

__attribute__((destructor)) static void report(void) {
  const char *path = getenv("CHAOS_FENCE_REPORT");
  if (!path) return;
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  char line[96];
  int n = snprintf(line, sizeof line, "fence %d %lu %lu\n", (int)getpid(),
                   atomic_load_explicit(&fences_done, memory_order_relaxed),
                   atomic_load_explicit(&fences_failed, memory_order_relaxed));
  if (write(fd, line, (size_t)n) < 0) {
  }  // nothing to do about it at exit
  close(fd);
}

static void start_thread(void);

// A forked child (without exec) has no fence thread and the parent's counts: it
// starts from zero with a thread of its own (the kernel keeps the registration).
static void after_fork_child(void) {
  atomic_store_explicit(&fences_done, 0, memory_order_relaxed);
  atomic_store_explicit(&fences_failed, 0, memory_order_relaxed);
  start_thread();
}

__attribute__((constructor)) static void start(void) {
  const char *p = getenv("CHAOS_FENCE_US");
  period_us = p ? atol(p) : 0;
  if (period_us <= 0) return;
  ncpus = (int)sysconf(_SC_NPROCESSORS_CONF);
  if (ncpus < 1) ncpus = 1;
  pthread_atfork(NULL, NULL, after_fork_child);
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) {
    atomic_fetch_add_explicit(&fences_failed, 1, memory_order_relaxed);
    return;
  }
  start_thread();
}

static void start_thread(void) {
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 64 << 10);
  if (pthread_create(&t, &a, fence_main, NULL) != 0)
    atomic_fetch_add_explicit(&fences_failed, 1, memory_order_relaxed);
  pthread_attr_destroy(&a);
}
