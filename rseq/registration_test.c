// registration_test: the registration paths and the syscall behaviour we rely on.
//   default        glibc owns registration: we use its area and never register again
//                  (a second registration would get EBUSY).
//   --self         child with GLIBC_TUNABLES=glibc.pthread.rseq=0: we register each
//                  thread ourselves, and unregister it at thread exit; the syscall's
//                  EBUSY / EINVAL / EPERM answers.
//   --nosys        child under a seccomp filter that makes rseq return ENOSYS: AUTO
//                  picks CAS and says why; explicit RSEQ fails with ENOSYS.
//   --disabled     child with CCACHE_RSEQ=0: AUTO picks CAS, reason "disabled".
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

extern const unsigned int __rseq_size __attribute__((weak));

static void *use_rseq_thread(void *arg) {
  (void)arg;
  int cpu = rseq_current_index(RSEQ_INDEX_CPU_ID);
  CHECK(cpu >= 0);
  CHECK_EQ(rseq_thread_owner(), RSEQ_OWNER_SELF);
  intptr_t v = 0;
  while (rseq_addv(RSEQ_INDEX_CPU_ID, &v, 1, cpu) != RSEQ_COMMIT)
    cpu = rseq_current_index(RSEQ_INDEX_CPU_ID);
  CHECK_EQ(v, 1);
  return NULL;
}

static int child_self(void) {
  test_context("child: GLIBC_TUNABLES=glibc.pthread.rseq=0");
  CHECK(&__rseq_size == NULL || __rseq_size == 0, "glibc registered despite the tunable");
  CHECK(rseq_available(), "self-registration failed: %s", rseq_unavailable_reason());
  CHECK_EQ(rseq_thread_owner(), RSEQ_OWNER_SELF);
  struct rseq_percpu_mode m;
  const char *why;
  CHECK(rseq_resolve_mode(RSEQ_MODE_AUTO, RSEQ_INDEX_CPU_ID, &m, &why) == 0);
  CHECK_EQ(m.mode, RSEQ_MODE_RSEQ);
  struct rseq_abi *mine = rseq_thread_area();

  // The syscall's answers (area not owned by glibc here, so we may probe them).
  static struct rseq_abi other __attribute__((aligned(32)));
  errno = 0;
  CHECK(rseq_syscall(mine, sizeof *mine, 0, RSEQ_SIG) == -1 && errno == EBUSY,
        "second registration: errno %d, want EBUSY", errno);
  errno = 0;
  CHECK(rseq_syscall(mine, sizeof *mine, RSEQ_FLAG_UNREGISTER, RSEQ_SIG + 1) == -1 &&
            errno == EPERM,
        "unregister with a wrong signature: errno %d, want EPERM", errno);
  errno = 0;
  CHECK(rseq_syscall(mine, 16, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == -1 && errno == EINVAL,
        "unregister with a wrong length: errno %d, want EINVAL", errno);
  // Leave our registration, then probe the registration-time checks on a fresh area.
  CHECK(rseq_syscall(mine, sizeof *mine, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0);
  errno = 0;
  CHECK(rseq_syscall(&other, 16, 0, RSEQ_SIG) == -1 && errno == EINVAL,
        "bad length: errno %d, want EINVAL", errno);
  errno = 0;
  CHECK(rseq_syscall((struct rseq_abi *)((char *)&other + 8), sizeof other, 0, RSEQ_SIG) == -1 &&
            errno == EINVAL,
        "misaligned area: errno %d, want EINVAL", errno);
  CHECK(rseq_syscall(mine, sizeof *mine, 0, RSEQ_SIG) == 0, "re-register: errno %d", errno);

  // Threads register on first use and unregister at exit.
  uint64_t reg0, unreg0, reg1, unreg1;
  rseq_self_registration_counts(&reg0, &unreg0);
  enum { N = 8 };
  pthread_t t[N];
  for (int i = 0; i < N; i++) CHECK(pthread_create(&t[i], NULL, use_rseq_thread, NULL) == 0);
  for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
  rseq_self_registration_counts(&reg1, &unreg1);
  CHECK_EQ(reg1 - reg0, N);
  CHECK_EQ(unreg1 - unreg0, N);
  printf("child --self: registered and unregistered %d threads; EBUSY/EPERM/EINVAL as documented\n",
         N);
  return 0;
}

static int child_unavailable(const char *what, const char *want_reason) {
  test_context("child: %s", what);
  CHECK(!rseq_available(), "rseq should be unavailable");
  const char *reason = rseq_unavailable_reason();
  CHECK(strstr(reason, want_reason) != NULL, "reason '%s' lacks '%s'", reason, want_reason);
  struct rseq_percpu_mode m;
  const char *why = NULL;
  CHECK(rseq_resolve_mode(RSEQ_MODE_AUTO, RSEQ_INDEX_CPU_ID, &m, &why) == 0);
  CHECK_EQ(m.mode, RSEQ_MODE_CAS);
  CHECK(why && strstr(why, want_reason), "AUTO's reason '%s'", why ? why : "(null)");
  errno = 0;
  CHECK(rseq_resolve_mode(RSEQ_MODE_RSEQ, RSEQ_INDEX_CPU_ID, &m, &why) == -1 && errno == ENOSYS);
  CHECK(rseq_thread_area() == NULL);
  CHECK_EQ(rseq_current_index(RSEQ_INDEX_CPU_ID), -1);
  // CAS mode works without rseq.
  struct rseq_percpu_mode cas = {RSEQ_MODE_CAS, RSEQ_INDEX_CPU_ID};
  intptr_t v = 0;
  CHECK_EQ(rseq_percpu_addv(&cas, &v, 3, 0), RSEQ_COMMIT);
  CHECK_EQ(v, 3);
  printf("child %s: AUTO -> cas because: %s\n", what, why);
  return 0;
}

static void run_child(const char *flag, char *const env[], bool seccomp) {
  char out[8192];
  char *args[] = {(char *)flag, NULL};
  int status = test_run_self(args, env, seccomp, out, sizeof out);
  printf("%s", out);
  CHECK(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %s failed (status %d)",
        flag, status);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (argc == 2 && !strcmp(argv[1], "--self")) return child_self();
  if (argc == 2 && !strcmp(argv[1], "--nosys")) return child_unavailable("--nosys", "ENOSYS");
  if (argc == 2 && !strcmp(argv[1], "--disabled"))
    return child_unavailable("--disabled", "disabled");

  if (!rseq_available()) test_skip("rseq unavailable: %s", rseq_unavailable_reason());
  if (&__rseq_size != NULL && __rseq_size > 0) {
    // glibc owns registration: we use its area and never register.
    CHECK_EQ(rseq_thread_owner(), RSEQ_OWNER_GLIBC);
    uint64_t reg, unreg;
    rseq_self_registration_counts(&reg, &unreg);
    CHECK_EQ(reg, 0);
    errno = 0;
    CHECK(rseq_syscall(rseq_thread_area(), 32, 0, RSEQ_SIG) == -1 && errno == EBUSY,
          "registering over glibc's area must fail with EBUSY");
    printf("default: glibc owns the area (__rseq_size=%u); we did not register\n", __rseq_size);
  } else {
    printf("default: this glibc does not register rseq; owner %s\n",
           rseq_owner_name(rseq_thread_owner()));
  }
  char *self_env[] = {"GLIBC_TUNABLES=glibc.pthread.rseq=0", NULL};
  run_child("--self", self_env, false);
  char *nosys_env[] = {"GLIBC_TUNABLES=glibc.pthread.rseq=0", NULL};
  run_child("--nosys", nosys_env, true);
  // Also with glibc trying (and failing) to register under the filter.
  run_child("--nosys", NULL, true);
  char *disabled_env[] = {"CCACHE_RSEQ=0", NULL};
  run_child("--disabled", disabled_env, false);
  printf("PASS\n");
  return 0;
}
