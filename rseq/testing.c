#include "rseq/testing.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char command_line[1024];
static char context[512];

void test_init(int argc, char **argv) {
  size_t n = 0;
  for (int i = 0; i < argc && n < sizeof command_line - 2; i++)
    n += (size_t)snprintf(command_line + n, sizeof command_line - n, "%s%s", i ? " " : "",
                          argv[i]);
  setvbuf(stdout, NULL, _IOLBF, 0);
}

void test_context(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(context, sizeof context, fmt, ap);
  va_end(ap);
}

void test_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *m = msg[0] == ' ' ? msg + 1 : msg;  // CHECK's leading space (testing.h)
  fflush(stdout);
  fprintf(stderr, "FAIL %s:%d: %s%s%s\n  context: %s\n  command: %s\n", file, line, cond,
          m[0] ? ": " : "", m, context[0] ? context : "(none)", command_line);
  exit(1);
}

static unsigned watchdog_seconds;
static pid_t watchdog_pid;  // the process that armed it (a fork child inherits the handler)

static void write_str(const char *s) {
  if (write(2, s, strlen(s)) < 0) {
  }
}

static void watchdog_fired(int sig) {
  if (getpid() != watchdog_pid) {
    // A forked child's own alarm (TEST_FORK_CHILD_ALARM_S, test_run_self's until exec):
    // it dies by SIGALRM as it would without the watchdog, so that its parent's
    // diagnosis ("hung ... lock held across fork?") is the one printed.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGALRM, &dfl, NULL);
    raise(sig);
    return;
  }
  // write(2) and strlen only: this runs in a signal handler. context and command_line
  // are written by the test's own thread between checks; a torn copy just prints oddly.
  char num[24], *p = num + sizeof num - 1;
  *p = 0;
  unsigned v = watchdog_seconds;
  do *--p = (char)('0' + v % 10); while ((v /= 10) != 0);
  write_str("FAIL: no result after ");
  write_str(p);
  write_str(" s (test_watchdog): a loop that never ends?\n  context: ");
  write_str(context[0] ? context : "(none)");
  write_str("\n  command: ");
  write_str(command_line);
  write_str("\n");
  _exit(1);
}

void test_watchdog(unsigned seconds) {
  watchdog_seconds = seconds;
  watchdog_pid = getpid();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = watchdog_fired;
  sigaction(SIGALRM, &sa, NULL);
  alarm(seconds);
}

void test_skip(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("SKIPPED: %s\n", msg);
  exit(0);
}

int test_allowed_cpus(int *cpus, int max) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  int n = 0;
  for (int c = 0; c < CPU_SETSIZE && n < max; c++)
    if (CPU_ISSET(c, &set)) cpus[n++] = c;
  return n;
}

int test_pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set);
}

int test_unpin(const int *cpus, int n) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int i = 0; i < n; i++) CPU_SET(cpus[i], &set);
  return sched_setaffinity(0, sizeof set, &set);
}

static int install_seccomp_nosys_rseq(void) {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_rseq, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

extern char **environ;

// Whether environment entry `e` ("K=V") sets the same name as one of `env`.
static bool env_overridden(const char *e, char *const env[]) {
  for (int i = 0; env && env[i]; i++) {
    size_t k = strcspn(env[i], "=");
    if (!strncmp(e, env[i], k) && e[k] == '=') return true;
  }
  return false;
}

int test_run_self(char *const args[], char *const env[], bool seccomp_nosys_rseq, char *out,
                  size_t out_size) {
  int fds[2] = {-1, -1};
  if (out && pipe(fds) != 0) return -1;
  fflush(stdout);
  fflush(stderr);
  size_t nenv = 0, nextra = 0;
  while (environ[nenv]) nenv++;
  while (env && env[nextra]) nextra++;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    // Nothing here allocates (no putenv: the environment is built on the stack), so a
    // child of a process whose allocator is broken across fork still execs. The alarm
    // is the backstop: a child stuck before exec dies in seconds, and is reported,
    // instead of leaving the parent to wait until the test's timeout.
    alarm(TEST_FORK_CHILD_ALARM_S);
    if (out) {
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
    }
    char *envp[nenv + nextra + 1];
    size_t m = 0;
    for (size_t i = 0; i < nenv; i++)
      if (!env_overridden(environ[i], env)) envp[m++] = environ[i];
    for (size_t i = 0; i < nextra; i++) envp[m++] = env[i];
    envp[m] = NULL;
    if (seccomp_nosys_rseq && install_seccomp_nosys_rseq() != 0) {
      perror("seccomp");
      _exit(126);
    }
    char *argv[64];
    int n = 0;
    argv[n++] = "self";
    for (int i = 0; args[i] && n < 63; i++) argv[n++] = args[i];
    argv[n] = NULL;
    alarm(0);  // an alarm survives execve: the program run gets its own time
    execve("/proc/self/exe", argv, envp);
    _exit(127);
  }
  if (out) {
    close(fds[1]);
    size_t len = 0;
    for (;;) {
      ssize_t r = read(fds[0], out + len, out_size - 1 - len);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      len += (size_t)r;
      if (len >= out_size - 1) {
        char sink[4096];  // keep draining so the child never blocks on a full pipe
        while (read(fds[0], sink, sizeof sink) > 0) {
        }
        break;
      }
    }
    out[len] = 0;
    close(fds[0]);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
    fprintf(stderr, "test_run_self: the child hung for %d s between fork and exec (a lock "
                    "held across fork?)\n", TEST_FORK_CHILD_ALARM_S);
  return status;
}

uint64_t test_seed(uint64_t fallback) {
  const char *s = getenv("TEST_SEED");
  if (s && *s) return strtoull(s, NULL, 0);
  return fallback;
}

int test_thread_timer_start(void **timer, int signo, long period_us) {
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = signo;
  ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  timer_t t = 0;  // initialized: MSan does not see timer_create write it
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) return -1;
  struct itimerspec its = {{period_us / 1000000, (period_us % 1000000) * 1000},
                           {period_us / 1000000, (period_us % 1000000) * 1000}};
  if (timer_settime(t, 0, &its, NULL) != 0) {
    timer_delete(t);
    return -1;
  }
  *timer = (void *)t;
  return 0;
}

void test_thread_timer_stop(void *timer) { timer_delete((timer_t)timer); }

int test_gettid(void) { return (int)syscall(SYS_gettid); }

double test_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void test_wait_fork_child(pid_t pid, const char *doing) {
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid: errno %d", errno);
  CHECK(!(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
        "fork child hung for %d s %s (a lock held across fork?)", TEST_FORK_CHILD_ALARM_S, doing);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork child failed: status %#x", status);
}
