// testing.h: small helpers shared by the tests of every package (test-only target
// //rseq:testing). A failing check prints the file, line, condition, the test's
// context (mode, index, seed, ...) and the command line, then exits 1.
#ifndef CCACHE_RSEQ_TESTING_H_
#define CCACHE_RSEQ_TESTING_H_

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

// Remember argv for failure messages; call first in main().
void test_init(int argc, char **argv);
// What the test is doing now, printed with every failure ("mode=rseq index=cpu_id ...").
void test_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void test_fail(const char *file, int line, const char *cond,
                                         const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Print "SKIPPED: <reason>" and exit 0 (Bazel has no skip status: the log says it).
__attribute__((noreturn)) void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The message is optional. CHECK puts a space before it (dropped when printed): with
// none, the format is " ", not "", which GCC's -Wformat-zero-length would warn about.
#define CHECK(cond, ...)                                                \
  do {                                                                  \
    if (!(cond)) test_fail(__FILE__, __LINE__, #cond, " " __VA_ARGS__); \
  } while (0)

#define CHECK_EQ(a, b)                                                                  \
  do {                                                                                  \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b);                     \
    if (check_a_ != check_b_)                                                           \
      test_fail(__FILE__, __LINE__, #a " == " #b, "%lld != %lld", check_a_, check_b_); \
  } while (0)

// The CPUs this thread may run on, ascending; returns how many (at most max).
int test_allowed_cpus(int *cpus, int max);
// Pin the calling thread to one CPU; returns 0 or -1.
int test_pin(int cpu);
// Restore the calling thread's affinity to every CPU in the allowed set `cpus`.
int test_unpin(const int *cpus, int n);

// Run /proc/self/exe with `args` (NULL-terminated, argv[1..]) and extra environment
// `env` (NULL-terminated "K=V" entries, may be NULL). Its stdout and stderr go to
// `out` (NUL-terminated, truncated to `out_size`) when out is not NULL. Returns the
// wait status, or -1. If `seccomp_nosys_rseq`, the child installs a seccomp filter
// that makes rseq fail with ENOSYS before it execs. The child allocates nothing before
// it execs; one stuck there anyway is killed after TEST_FORK_CHILD_ALARM_S (SIGALRM,
// with a message on stderr).
int test_run_self(char *const args[], char *const env[], bool seccomp_nosys_rseq, char *out,
                  size_t out_size);

// A per-thread POSIX timer (SIGEV_THREAD_ID) that sends `signo` to the calling thread
// every `period_us`. Returns 0 or -1; stop it with test_thread_timer_stop().
int test_thread_timer_start(void **timer, int signo, long period_us);
void test_thread_timer_stop(void *timer);
// The calling thread's kernel thread id.
int test_gettid(void);
// CLOCK_MONOTONIC in seconds.
double test_now_s(void);

// A watchdog for a test that must finish in seconds (a retry loop that never ends is a
// bug of its own): after `seconds` the process prints FAIL, the context of
// test_context() and the command line, and exits 1, before Bazel's timeout. Uses
// SIGALRM and alarm(): not for tests that use either themselves.
void test_watchdog(unsigned seconds);

// A forked child that may hang (a lock held across fork) calls
// alarm(TEST_FORK_CHILD_ALARM_S) first; the parent then calls test_wait_fork_child,
// which fails the test with `doing` in the message if the alarm ended the child, or
// with its status if it did not exit 0.
#define TEST_FORK_CHILD_ALARM_S 30
void test_wait_fork_child(pid_t pid, const char *doing);

// xorshift64*: deterministic per seed.
static inline uint64_t test_rand(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1DULL;
}

// Seed from $TEST_SEED when set, else `fallback`; printed by the caller.
uint64_t test_seed(uint64_t fallback);

#endif  // CCACHE_RSEQ_TESTING_H_
