// fork_test: a forked child keeps a working rseq registration (the kernel copies it
// with the thread), its sections commit, its own threads register, and the counters
// stay consistent. Run as is (glibc owns the area) and, in a child process, with
// GLIBC_TUNABLES=glibc.pthread.rseq=0 (we own it).
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

static intptr_t counter[1024];

static void add_many(int n) {
  for (int i = 0; i < n;) {
    int cpu = rseq_current_index(RSEQ_INDEX_CPU_ID);
    CHECK(cpu >= 0 && cpu < 1024);
    if (rseq_addv(RSEQ_INDEX_CPU_ID, &counter[cpu], 1, cpu) == RSEQ_COMMIT) i++;
  }
}

static intptr_t total(void) {
  intptr_t s = 0;
  for (int i = 0; i < 1024; i++) s += counter[i];
  return s;
}

static void *thread_adds(void *arg) {
  (void)arg;
  add_many(1000);
  return NULL;
}

static void check_counters(void) {
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    rseq_registry_get(i, &s);
    struct rseq_section_counters c;
    rseq_section_counters_get(s.id, &c);
    CHECK(c.entered == c.committed + c.aborted + c.cmpfail, "%s counters inconsistent", s.name);
  }
}

static int run(void) {
  enum rseq_owner owner = rseq_thread_owner();
  test_context("owner=%s", rseq_owner_name(owner));
  add_many(1000);
  CHECK_EQ(total(), 1000);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    CHECK_EQ(rseq_thread_owner(), owner);
    CHECK(rseq_current_index(RSEQ_INDEX_CPU_ID) >= 0);
    add_many(5000);
    CHECK_EQ(total(), 6000);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, thread_adds, NULL) == 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    CHECK_EQ(total(), 10000);
    check_counters();
    _exit(0);
  }
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork child failed: status %d", status);
  CHECK_EQ(total(), 1000);  // the child's adds went to its own copy
  add_many(10);
  CHECK_EQ(total(), 1010);
  check_counters();
  printf("fork with owner %s: child committed 9000 adds in 5 threads; parent unaffected\n",
         rseq_owner_name(owner));
  return 0;
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (!rseq_available()) test_skip("rseq unavailable: %s", rseq_unavailable_reason());
  if (argc == 2 && !strcmp(argv[1], "--child")) return run();
  run();
  char out[4096];
  char *args[] = {"--child", NULL};
  char *env[] = {"GLIBC_TUNABLES=glibc.pthread.rseq=0", NULL};
  int status = test_run_self(args, env, false, out, sizeof out);
  printf("%s", out);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "self-registered run failed");
  CHECK(strstr(out, "owner self") != NULL, "the child did not self-register");
  printf("PASS\n");
  return 0;
}
