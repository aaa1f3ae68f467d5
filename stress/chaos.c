// chaos: run any command, its threads and its child processes, under the forcers
// that make rseq critical sections abort.
//
//   bazel run //stress:chaos -- [--force migrate,cgroup,fence,antagonist] [--seconds N]
//                               [--signal SIG] [--preload LIB] [--seed S] -- CMD ARGS...
//
// --preload LIB puts LIB (say, libccache_malloc.so) in the command's LD_PRELOAD, not in
// chaos's own.
// Forcers (default: all four; a signal only with --signal):
//   migrate     every 200 us, a random thread of the command's process tree gets a new
//               affinity (a single CPU or a random subset of the allowed CPUs)
//   cgroup      the command runs in a fresh cpuset cgroup (stress/cgroup.c) whose
//               cpuset.cpus is cycled every 2 ms: the kernel moves every task in it
//   fence       membarrier(PRIVATE_EXPEDITED_RSEQ) fences from inside each process of
//               the command, by a preloaded agent (stress/chaos_fence_agent.c): a fence
//               cannot target another process
//   antagonist  stress-ng (cpu, yield, switch, timer, affinity) on the allowed CPUs
//   --signal S  tgkill(S) to random threads every 500 us. Opt-in: a foreign program
//               may not handle S; give one it handles.
// The forcers stop after --seconds N (default: as long as the command runs); the
// command itself is never cut short. stdin, stdout and stderr are the command's. At
// the end chaos prints, on stderr, what each forcer did, and exits with the command's
// exit status (128 + N when signal N killed it).
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rseq/testing.h"
#include "stress/cgroup.h"
#include "stress/forcers.h"

#define MAX_TIDS 4096

static pid_t root;
static int cpus[CPU_SETSIZE], ncpus;
static _Atomic int stopping;  // relaxed: a flag polled by the forcer threads
static struct cgroup cg;
static bool have_cgroup;

// The command's threads, refreshed by the migrate/signal thread every 20 ms.
static int tids[MAX_TIDS], tgids[MAX_TIDS], ntids;
static uint64_t migrations, migrate_errors, signals_sent, signal_errors;

static uint64_t rnd(uint64_t *s) {  // xorshift64*
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1DULL;
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool numeric(const char *s) {
  if (!*s) return false;
  for (; *s; s++)
    if (!isdigit((unsigned char)*s)) return false;
  return true;
}

static void add_tasks_of(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR *d = opendir(path);
  struct dirent *e;
  while (d && (e = readdir(d)) && ntids < MAX_TIDS)
    if (numeric(e->d_name)) tgids[ntids] = pid, tids[ntids++] = atoi(e->d_name);
  if (d) closedir(d);
}

// Every thread of the command's process tree: from the cgroup where there is one (it
// holds exactly the tree), else from /proc, following parent pids down from root.
static void refresh_tids(void) {
  ntids = 0;
  char path[400], line[64];
  if (have_cgroup) {
    // The processes of the cgroup, then their threads: each tid with its process id,
    // which tgkill needs to be safe against a tid reused by another process.
    snprintf(path, sizeof path, "%s/cgroup.procs", cg.dir);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f) && ntids < MAX_TIDS) add_tasks_of(atoi(line));
    if (f) fclose(f);
    if (ntids) return;
  }
  static pid_t tree[MAX_TIDS];
  int ntree = 0;
  tree[ntree++] = root;
  for (bool grew = true; grew;) {
    grew = false;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (!numeric(e->d_name)) continue;
      pid_t p = atoi(e->d_name), parent = 0;
      snprintf(path, sizeof path, "/proc/%d/stat", p);
      FILE *f = fopen(path, "r");
      char buf[512];
      if (f && fgets(buf, sizeof buf, f)) {
        const char *rp = strrchr(buf, ')');  // the name may hold spaces and parens
        if (rp) sscanf(rp + 1, " %*c %d", &parent);
      }
      if (f) fclose(f);
      bool in = false, parent_in = false;
      for (int i = 0; i < ntree; i++) in |= tree[i] == p, parent_in |= tree[i] == parent;
      if (!in && parent_in && ntree < MAX_TIDS) tree[ntree++] = p, grew = true;
    }
    if (d) closedir(d);
  }
  for (int i = 0; i < ntree; i++) add_tasks_of(tree[i]);
}

static bool do_migrate;
static int signo;
static double stop_at;

static void *tree_forcer_main(void *arg) {
  (void)arg;
  uint64_t s = (uint64_t)arg | 0x9e3779b97f4a7c15ull;
  double next_refresh = 0, next_signal = 0;
  while (!atomic_load_explicit(&stopping, memory_order_relaxed) && (!stop_at || now_s() < stop_at)) {
    double t = now_s();
    if (t >= next_refresh) {
      refresh_tids();
      next_refresh = t + 0.02;
    }
    if (ntids && do_migrate) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (rnd(&s) % 2) {
        CPU_SET(cpus[rnd(&s) % (uint64_t)ncpus], &set);
      } else {
        for (int i = 0; i < ncpus; i++)
          if (rnd(&s) % 2) CPU_SET(cpus[i], &set);
        if (!CPU_COUNT(&set)) CPU_SET(cpus[0], &set);
      }
      // Refusals are expected: the thread exited (ESRCH), or the cgroup's cpuset has
      // just shrunk to exclude the set (EINVAL).
      if (sched_setaffinity(tids[rnd(&s) % (uint64_t)ntids], sizeof set, &set) == 0)
        migrations++;
      else
        migrate_errors++;
    }
    if (ntids && signo && t >= next_signal) {
      uint64_t k = rnd(&s) % (uint64_t)ntids;
      // The process id recorded with the tid: a tid reused since (by another process)
      // does not match it, and tgkill refuses.
      if (syscall(SYS_tgkill, tgids[k], tids[k], signo) == 0)
        signals_sent++;
      else
        signal_errors++;
      next_signal = t + 0.0005;
    }
    sleep_us(200);
  }
  return NULL;
}

static void usage(void) {
  fprintf(stderr,
          "usage: chaos [--force migrate,cgroup,fence,antagonist] [--seconds N] [--signal SIG]\n"
          "             [--preload LIB] [--seed S] -- CMD ARGS...\n");
  exit(2);
}

static int child_main(char **argv, int hold_fd) {
  char c;
  if (read(hold_fd, &c, 1) != 1) _exit(126);  // until the parent has put us in the cgroup
  close(hold_fd);
  execvp(argv[0], argv);
  fprintf(stderr, "chaos: cannot run %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

int main(int argc, char **argv) {
  const char *force = "migrate,cgroup,fence,antagonist";
  double seconds = 0;
  uint64_t seed = 1;
  const char *preload = NULL;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--")) {
      i++;
      break;
    }
    if (!strcmp(a, "--force") && v) force = argv[++i];
    else if (!strcmp(a, "--seconds") && v) seconds = atof(argv[++i]);
    else if (!strcmp(a, "--seed") && v) seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(a, "--preload") && v) preload = argv[++i];
    else if (!strcmp(a, "--signal") && v) {
      const char *sv = argv[++i];
      signo = atoi(sv);
      if (!signo) {
        for (int k = 1; k < NSIG && !signo; k++) {
          const char *name = sigabbrev_np(k);
          if (name && (!strcmp(sv, name) || (!strncmp(sv, "SIG", 3) && !strcmp(sv + 3, name)))) signo = k;
        }
      }
      if (signo <= 0 || signo >= NSIG) usage();
    } else {
      usage();
    }
  }
  if (i >= argc) usage();
  int mask = forcers_parse(force);
  if (mask < 0 || (mask & ~(FORCE_MIGRATE | FORCE_CGROUP | FORCE_FENCE | FORCE_ANTAGONIST))) {
    fprintf(stderr, "chaos: --force takes migrate, cgroup, fence, antagonist (signals: --signal)\n");
    return 2;
  }
  ncpus = test_allowed_cpus(cpus, CPU_SETSIZE);
  if (ncpus <= 0) cpus[ncpus++] = 0;

  char why_cgroup[300] = "not requested", fence_report[64] = "";
  if (mask & FORCE_CGROUP) {
    have_cgroup = cgroup_create(&cg, why_cgroup, sizeof why_cgroup) == 0;
    if (!have_cgroup) fprintf(stderr, "chaos: cgroup forcer not exercised: %s\n", why_cgroup);
  }
  static char saved_copy[8400], preload_env[8400];
  const char *saved_preload = getenv("LD_PRELOAD");
  if (saved_preload) snprintf(saved_copy, sizeof saved_copy, "%s", saved_preload);
  if (saved_preload) saved_preload = saved_copy;
  snprintf(preload_env, sizeof preload_env, "%s", saved_copy);
  if (preload) {
    char real[4096];
    if (!realpath(preload, real)) {
      fprintf(stderr, "chaos: --preload %s: %s\n", preload, strerror(errno));
      return 2;
    }
    size_t len = strlen(preload_env);
    snprintf(preload_env + len, sizeof preload_env - len, "%s%s", len ? ":" : "", real);
    setenv("LD_PRELOAD", preload_env, 1);
  }
  if (mask & FORCE_FENCE) {  // the agent, next to this binary (bazel-bin/stress/)
    char self[4096], agent[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(agent, sizeof agent, "%s/libchaos_fence_agent.so", self);
    if (access(agent, R_OK) != 0) {
      fprintf(stderr, "chaos: fence forcer not exercised: %s not found\n", agent);
      mask &= ~FORCE_FENCE;
    } else {
      const char *old = getenv("LD_PRELOAD");
      char v[8400];
      snprintf(v, sizeof v, "%s%s%s", old && *old ? old : "", old && *old ? ":" : "", agent);
      setenv("LD_PRELOAD", v, 1);
      setenv("CHAOS_FENCE_US", "500", 1);
      snprintf(fence_report, sizeof fence_report, "/tmp/chaos-fence.%d", (int)getpid());
      unlink(fence_report);
      setenv("CHAOS_FENCE_REPORT", fence_report, 1);
    }
  }
  int hold[2];
  if (pipe2(hold, O_CLOEXEC) != 0) return 2;
  fflush(NULL);
  root = fork();
  if (root < 0) return 2;
  if (root == 0) {
    close(hold[1]);
    return child_main(&argv[i], hold[0]);
  }
  close(hold[0]);
  // Only the command's processes carry --preload and the agent (stress-ng does not).
  if (saved_preload)
    setenv("LD_PRELOAD", saved_preload, 1);
  else
    unsetenv("LD_PRELOAD");
  if (have_cgroup && cgroup_add_process(&cg, root) != 0) {
    snprintf(why_cgroup, sizeof why_cgroup, "cannot move the command into %s: %s", cg.dir, strerror(errno));
    fprintf(stderr, "chaos: cgroup forcer not exercised: %s\n", why_cgroup);
    cgroup_remove(&cg);
    have_cgroup = false;
  }
  if (write(hold[1], "go", 1) != 1) return 2;
  close(hold[1]);

  double t0 = now_s();
  stop_at = seconds > 0 ? t0 + seconds : 0;
  struct forcer_config fc = {0};
  fc.mask = (unsigned)mask & (FORCE_ANTAGONIST | (have_cgroup ? FORCE_CGROUP : 0));
  fc.cgroup_us = 2000;
  fc.antagonists = "cpu,yield,switch,timer,affinity";
  fc.seconds = seconds > 0 ? seconds : 3600;
  fc.cgroup_cpus_file = have_cgroup ? cg.cpus_file : NULL;
  fc.seed = seed;
  forcers_start(&fc);
  do_migrate = mask & FORCE_MIGRATE;
  pthread_t tree;
  bool tree_running = (do_migrate || signo) &&
                      pthread_create(&tree, NULL, tree_forcer_main, (void *)(uintptr_t)seed) == 0;

  // Wait for the command; stop the forcers at --seconds if it runs longer.
  int status = 0;
  bool forcers_stopped = false;
  struct forcer_stats st;
  for (;;) {
    pid_t r = waitpid(root, &status, WNOHANG);
    if (r == root) break;
    if (r < 0 && errno != EINTR) {
      status = 0x7f00;  // cannot happen: our own child
      break;
    }
    if (!forcers_stopped && stop_at && now_s() >= stop_at) {
      atomic_store_explicit(&stopping, 1, memory_order_relaxed);
      forcers_stop(&st);
      forcers_stopped = true;
    }
    sleep_us(2000);
  }
  double elapsed = now_s() - t0;
  atomic_store_explicit(&stopping, 1, memory_order_relaxed);
  if (tree_running) pthread_join(tree, NULL);
  if (!forcers_stopped) forcers_stop(&st);
  if (have_cgroup) cgroup_remove(&cg);

  unsigned long fences = 0, fence_errors = 0, fence_procs = 0;
  FILE *f = fence_report[0] ? fopen(fence_report, "r") : NULL;
  char line[128];
  while (f && fgets(line, sizeof line, f)) {
    unsigned long d, e;
    if (sscanf(line, "fence %*d %lu %lu", &d, &e) == 2) fences += d, fence_errors += e, fence_procs++;
  }
  if (f) fclose(f);
  if (fence_report[0]) unlink(fence_report);

  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  fprintf(stderr, "chaos: the command ran %.2f s and %s %d\n", elapsed,
          WIFEXITED(status) ? "exited" : "was killed by signal",
          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  if (mask & FORCE_MIGRATE)
    fprintf(stderr, "chaos: migrate: %lu affinity changes (%lu refused)\n",
            (unsigned long)migrations, (unsigned long)migrate_errors);
  if ((mask & FORCE_CGROUP) && have_cgroup)
    fprintf(stderr, "chaos: cgroup: %lu cpuset.cpus writes (%lu refused)\n",
            (unsigned long)st.done[5], (unsigned long)st.errors[5]);
  else if (mask & FORCE_CGROUP)
    fprintf(stderr, "chaos: cgroup: not exercised: %s\n", why_cgroup);
  if (mask & FORCE_FENCE)
    fprintf(stderr, "chaos: fence: %lu membarrier fences from %lu process(es) (%lu failed)%s\n",
            fences, fence_procs, fence_errors,
            fence_procs ? "" : ": no process took the agent (static binary?)");
  if ((mask & FORCE_ANTAGONIST) && st.done[4])
    fprintf(stderr, "chaos: antagonist: stress-ng ran (%s)\n", st.detail[4]);
  else if (mask & FORCE_ANTAGONIST)
    fprintf(stderr, "chaos: antagonist: not exercised: %s\n", st.why_not[4]);
  if (signo)
    fprintf(stderr, "chaos: signal %d: %lu sent (%lu refused)\n", signo, (unsigned long)signals_sent,
            (unsigned long)signal_errors);
  return code;
}
