// forcers.c: migrations, signal timers and storms, fences, stress-ng, cpuset flips.
#include "stress/forcers.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"
#include "stress/causes.h"

#define MAX_WORKERS 512

static const char *const names[FORCE_COUNT] = {"migrate", "signal", "storm",
                                               "fence", "antagonist", "cgroup"};

const char *forcer_name(int bit_index) {
  return bit_index >= 0 && bit_index < FORCE_COUNT ? names[bit_index] : "?";
}

int forcers_parse(const char *list) {
  if (!strcmp(list, "all")) return FORCE_ALL;
  if (!strcmp(list, "none") || !*list) return 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", list);
  int mask = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int found = -1;
    for (int i = 0; i < FORCE_COUNT; i++)
      if (!strcmp(tok, names[i])) found = i;
    if (found < 0) return -1;
    mask |= 1 << found;
  }
  return mask;
}

static struct forcer_config cfg;
// Each done[i]/errors[i] is written by forcer i's thread only, and read after
// pthread_join in forcers_stop (which orders the writes before the reads).
static struct forcer_stats st;
static _Atomic int stopping;  // relaxed: a flag polled by the forcer threads
static pthread_t threads[FORCE_COUNT];
static bool running[FORCE_COUNT];
static pid_t antagonist_pgid;
static int cpus[CPU_SETSIZE], ncpus;  // the CPUs the job may use

// Registered workers' thread ids; 0 is a free slot. Relaxed: a forcer that reads a
// stale tid gets ESRCH or hits a new thread of the job, both harmless.
static _Atomic int tids[MAX_WORKERS];
static __thread int my_slot = -1;
static __thread timer_t my_timer;
static __thread bool my_timer_armed;
static _Atomic uint64_t timers_armed, timer_errors;  // relaxed: statistics

static int gettid_(void) { return (int)syscall(SYS_gettid); }

size_t cpu_list_format(char *out, size_t size, const int *cpus, const bool *in, int n) {
  size_t len = 0;
  out[0] = 0;
  for (int i = 0; i < n && len + 12 < size; i++)
    if (!in || in[i]) len += (size_t)snprintf(out + len, size - len, "%s%d", len ? "," : "", cpus[i]);
  return len;
}

static uint64_t rnd(uint64_t *s) {  // xorshift64*
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1DULL;
}

static void sleep_us(long us) {
  if (us <= 0) {
    sched_yield();
    return;
  }
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

static bool stop_requested(void) { return atomic_load_explicit(&stopping, memory_order_relaxed); }

static int random_tid(uint64_t *s) {
  for (int tries = 0; tries < 8; tries++) {
    int t = atomic_load_explicit(&tids[rnd(s) % MAX_WORKERS], memory_order_relaxed);
    if (t) return t;
  }
  for (int i = 0; i < MAX_WORKERS; i++) {  // few workers: scan
    int t = atomic_load_explicit(&tids[i], memory_order_relaxed);
    if (t && rnd(s) % 2) return t;
  }
  return 0;
}

// --- migrate: single CPUs in turn (half the time: with two CPUs, every such write
// moves a thread that still runs where the last one put it) and random subsets.
static void *migrate_main(void *arg) {
  (void)arg;
  uint64_t s = cfg.seed ^ 0x1111;
  for (unsigned turn = 0; !stop_requested(); turn++) {
    int tid = random_tid(&s);
    if (tid) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (rnd(&s) % 2) {
        CPU_SET(cpus[((unsigned)tid * 7u + turn) % (unsigned)ncpus], &set);
      } else {
        for (int i = 0; i < ncpus; i++)
          if (rnd(&s) % 2) CPU_SET(cpus[i], &set);
        if (!CPU_COUNT(&set)) CPU_SET(cpus[rnd(&s) % (uint64_t)ncpus], &set);
      }
      // Refusals are expected: the thread exited (ESRCH), or a shrunk cpuset
      // excludes every CPU of the set (EINVAL).
      if (sched_setaffinity(tid, sizeof set, &set) == 0)
        st.done[0]++;
      else
        st.errors[0]++;
    }
    sleep_us(cfg.migrate_us);
  }
  return NULL;
}

// --- storm: bursts of tgkill to random workers.
static void *storm_main(void *arg) {
  (void)arg;
  uint64_t s = cfg.seed ^ 0x2222;
  pid_t pid = getpid();
  while (!stop_requested()) {
    for (int i = 0; i < cfg.storm_burst; i++) {
      int tid = random_tid(&s);
      if (!tid) break;
      if (syscall(SYS_tgkill, pid, tid, cfg.signo) == 0)
        st.done[2]++;
      else
        st.errors[2]++;  // ESRCH: the worker just exited
    }
    sleep_us(cfg.storm_us);
  }
  return NULL;
}

// --- fence: a random CPU, or (one time in four) all of them.
static void *fence_main(void *arg) {
  (void)arg;
  uint64_t s = cfg.seed ^ 0x3333;
  while (!stop_requested()) {
    int cpu = rnd(&s) % 4 == 0 ? -1 : cpus[rnd(&s) % (uint64_t)ncpus];
    causes_fence_begin(cpu);
    int rc = cpu < 0 ? rseq_fence_all() : rseq_fence_cpu(cpu);
    causes_fence_end(cpu);
    if (rc == 0)
      st.done[3]++;
    else
      st.errors[3]++;
    sleep_us(cfg.fence_us);
  }
  return NULL;
}

// --- cgroup: cycle cpuset.cpus through every single CPU, the full set and random
// subsets. The kernel rewrites the affinity of every task in the cgroup each time.
static void *cgroup_main(void *arg) {
  (void)arg;
  uint64_t s = cfg.seed ^ 0x4444;
  for (unsigned step = 0; !stop_requested(); step++) {
    char list[512];
    bool in[CPU_SETSIZE];
    unsigned kind = step % (unsigned)(ncpus + 2);
    for (int i = 0; i < ncpus; i++)
      in[i] = kind < (unsigned)ncpus ? i == (int)kind : kind == (unsigned)ncpus ? true : rnd(&s) % 2;
    if (!cpu_list_format(list, sizeof list, cpus, in, ncpus))
      snprintf(list, sizeof list, "%d", cpus[0]);
    int fd = open(cfg.cgroup_cpus_file, O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && write(fd, list, strlen(list)) == (ssize_t)strlen(list))
      st.done[5]++;
    else
      st.errors[5]++;
    if (fd >= 0) close(fd);
    sleep_us(cfg.cgroup_us);
  }
  return NULL;
}

// --- antagonist: one stress-ng process group, pinned to our CPUs.
static void start_antagonists(void) {
  char taskset[512], timeout[32], classes[256];
  cpu_list_format(taskset, sizeof taskset, cpus, NULL, ncpus);
  snprintf(timeout, sizeof timeout, "%ds", (int)cfg.seconds + 5);  // we reap it before that
  snprintf(classes, sizeof classes, "%s", cfg.antagonists);
  char *argv[64];
  int argc = 0;
  argv[argc++] = "stress-ng";
  static char opts[16][40];
  int nopts = 0;
  for (char *save = NULL, *tok = strtok_r(classes, ",", &save); tok && nopts < 16;
       tok = strtok_r(NULL, ",", &save)) {
    snprintf(opts[nopts], sizeof opts[0], "--%s", tok);
    argv[argc++] = opts[nopts++];
    argv[argc++] = "1";
  }
  char *tail[] = {"--taskset", taskset, "--timeout", timeout, "--quiet", NULL};
  for (int i = 0; tail[i]; i++) argv[argc++] = tail[i];
  argv[argc] = NULL;
  // A close-on-exec pipe tells whether the exec worked: EOF means it did.
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    snprintf(st.why_not[4], sizeof st.why_not[4], "pipe: %s", strerror(errno));
    return;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    close(p[0]);
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) dup2(devnull, 1);
    if (devnull >= 0) dup2(devnull, 2);  // its own metrics complaints after SIGTERM
    execvp("stress-ng", argv);
    int e = errno;
    if (write(p[1], &e, sizeof e) < 0) _exit(127);
    _exit(127);
  }
  close(p[1]);
  int e = 0;
  ssize_t n = pid > 0 ? read(p[0], &e, sizeof e) : -1;
  close(p[0]);
  if (pid < 0) {
    snprintf(st.why_not[4], sizeof st.why_not[4], "fork: %s", strerror(errno));
  } else if (n == sizeof e) {
    waitpid(pid, NULL, 0);
    snprintf(st.why_not[4], sizeof st.why_not[4], "stress-ng could not be run: %s (ci/setup "
             "installs it)", strerror(e));
  } else {
    setpgid(pid, pid);  // also here: no race with the child's own setpgid
    antagonist_pgid = pid;
    st.done[4] = 1;
  }
}

// SIGTERM to the group, then SIGKILL after a bounded wait. Returns when reaped.
static void stop_antagonists(void) {
  if (antagonist_pgid <= 0) return;
  kill(-antagonist_pgid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 500; i++) {  // 5 s
    pid_t r = waitpid(antagonist_pgid, &status, WNOHANG);
    if (r == antagonist_pgid) {
      snprintf(st.detail[4], sizeof st.detail[4], "stress-ng reaped after SIGTERM");
      kill(-antagonist_pgid, SIGKILL);  // any stressor child still there
      antagonist_pgid = 0;
      return;
    }
    sleep_us(10000);
  }
  kill(-antagonist_pgid, SIGKILL);
  waitpid(antagonist_pgid, &status, 0);
  snprintf(st.detail[4], sizeof st.detail[4], "stress-ng killed after 5 s of SIGTERM");
  antagonist_pgid = 0;
}

void forcers_start(const struct forcer_config *c) {
  cfg = *c;
  memset(&st, 0, sizeof st);
  atomic_store_explicit(&stopping, 0, memory_order_relaxed);
  ncpus = test_allowed_cpus(cpus, CPU_SETSIZE);
  if (ncpus == 0) cpus[ncpus++] = 0;  // affinity unreadable: CPU 0
  snprintf(st.detail[3], sizeof st.detail[3], "%s", rseq_fence_method());
  void *(*mains[FORCE_COUNT])(void *) = {migrate_main, NULL, storm_main, fence_main, NULL,
                                          cgroup_main};
  for (int i = 0; i < FORCE_COUNT; i++) {
    if (!(cfg.mask & (1u << i))) {
      snprintf(st.why_not[i], sizeof st.why_not[i], "not requested");
      continue;
    }
    if (i == 5 && !cfg.cgroup_cpus_file) {
      snprintf(st.why_not[i], sizeof st.why_not[i], "%s",
               cfg.cgroup_why_not ? cfg.cgroup_why_not : "no cgroup (the supervisor could not make one)");
      continue;
    }
    if (i == 1 && cfg.signal_us <= 0) snprintf(st.why_not[i], sizeof st.why_not[i], "--signal-us 0");
    if (i == 4) start_antagonists();
    if (mains[i] && pthread_create(&threads[i], NULL, mains[i], NULL) == 0) running[i] = true;
  }
}

void forcers_thread_begin(void) {
  int tid = gettid_();
  for (int i = 0; i < MAX_WORKERS && my_slot < 0; i++) {
    int expect = 0;
    // Relaxed: the slot holds nothing but the tid itself.
    if (atomic_compare_exchange_strong_explicit(&tids[i], &expect, tid, memory_order_relaxed,
                                                memory_order_relaxed))
      my_slot = i;
  }
  my_timer_armed = false;
  if ((cfg.mask & FORCE_SIGNAL) && cfg.signal_us > 0) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = cfg.signo;
    ev._sigev_un._tid = tid;
    long us = cfg.signal_us;
    struct itimerspec its = {{us / 1000000, (us % 1000000) * 1000},
                             {us / 1000000, (us % 1000000) * 1000}};
    my_timer = 0;  // initialized: MSan does not see timer_create write it
    if (timer_create(CLOCK_MONOTONIC, &ev, &my_timer) == 0 &&
        timer_settime(my_timer, 0, &its, NULL) == 0) {
      my_timer_armed = true;
      atomic_fetch_add_explicit(&timers_armed, 1, memory_order_relaxed);
    } else {
      atomic_fetch_add_explicit(&timer_errors, 1, memory_order_relaxed);
    }
  }
}

void forcers_thread_end(void) {
  if (my_timer_armed) timer_delete(my_timer);
  my_timer_armed = false;
  if (my_slot >= 0) atomic_store_explicit(&tids[my_slot], 0, memory_order_relaxed);
  my_slot = -1;
}

void forcers_stop(struct forcer_stats *out) {
  atomic_store_explicit(&stopping, 1, memory_order_relaxed);
  for (int i = 0; i < FORCE_COUNT; i++) {
    if (running[i]) pthread_join(threads[i], NULL);
    running[i] = false;
  }
  stop_antagonists();
  st.done[1] = atomic_load_explicit(&timers_armed, memory_order_relaxed);
  st.errors[1] = atomic_load_explicit(&timer_errors, memory_order_relaxed);
  *out = st;
}
