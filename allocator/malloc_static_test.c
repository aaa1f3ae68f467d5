// malloc_static_test: a binary linked with //allocator:malloc_static gets every call
// of the malloc family from the ccache process heap: malloc, calloc, realloc,
// reallocarray, aligned_alloc, posix_memalign, memalign, valloc, pvalloc,
// malloc_usable_size, free, malloc_trim; also from libc itself (strdup) and from threads started
// before and after the first malloc, and in a fork child. CCACHE_MODE picks the mode.
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allocator/ccache.h"
#include "rseq/testing.h"

void *reallocarray(void *ptr, size_t n, size_t size);
void *pvalloc(size_t size);

static void check_ours(void *p, const char *what) {
  CHECK(p != NULL, "%s returned NULL", what);
  CHECK(ccache_owns(ccache_process_heap(), p), "%s: %p is not from the ccache heap", what, p);
}

static void *thread_work(void *arg) {
  (void)arg;
  for (int i = 0; i < 10000; i++) {
    char *p = malloc((size_t)(i % 3000) + 1);
    check_ours(p, "malloc in a thread");
    p[0] = 1;
    free(p);
  }
  return NULL;
}

static int child_mode(const char *want) {
  void *p = malloc(10);
  check_ours(p, "malloc");
  free(p);
  const char *got = rseq_mode_name(ccache_heap_mode(ccache_process_heap()));
  printf("CCACHE_MODE=%s -> process heap in %s mode\n", want, got);
  return strcmp(got, want) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  // A thread that starts before the first malloc of main.
  pthread_t early;
  CHECK(pthread_create(&early, NULL, thread_work, NULL) == 0);
  test_init(argc, argv);
  if (argc == 3 && !strcmp(argv[1], "--mode")) return child_mode(argv[2]);

  void *p = malloc(100);
  check_ours(p, "malloc");
  CHECK_EQ(malloc_usable_size(p), 112);
  p = realloc(p, 5000);
  check_ours(p, "realloc");
  free(p);
  int *z = calloc(100, sizeof(int));
  check_ours(z, "calloc");
  for (int i = 0; i < 100; i++) CHECK_EQ(z[i], 0);
  z = reallocarray(z, 200, sizeof(int));
  check_ours(z, "reallocarray");
  errno = 0;
  CHECK(reallocarray(z, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
  free(z);
  void *a = aligned_alloc(256, 1000);
  check_ours(a, "aligned_alloc");
  CHECK(((uintptr_t)a & 255) == 0);
  free(a);
  void *m = NULL;
  CHECK(posix_memalign(&m, 4096, 10) == 0);
  check_ours(m, "posix_memalign");
  CHECK(((uintptr_t)m & 4095) == 0);
  free(m);
  CHECK_EQ(posix_memalign(&m, 3, 10), EINVAL);
  m = memalign(64, 33);
  check_ours(m, "memalign");
  free(m);
  m = valloc(100);
  check_ours(m, "valloc");
  CHECK(((uintptr_t)m & 4095) == 0);
  free(m);
  m = pvalloc(100);
  check_ours(m, "pvalloc");
  CHECK(malloc_usable_size(m) >= 4096);
  free(m);
  // malloc_trim is ours: what the heap holds free goes back to the OS. (The early thread
  // first: its frees could otherwise bring back free pages after the trim.)
  pthread_join(early, NULL);
  void *blocks[2000];
  for (int i = 0; i < 2000; i++) check_ours(blocks[i] = malloc((size_t)(i % 50) * 100 + 1), "malloc");
  void *large = malloc(4 << 20);
  check_ours(large, "malloc (large)");
  for (int i = 0; i < 2000; i++) free(blocks[i]);
  free(large);
  CHECK_EQ(malloc_trim(0), 1);
  struct ccache_stats st;
  ccache_get_stats(ccache_process_heap(), &st);
  CHECK(st.large_spares == 0 && st.page_heap_free_bytes == 0,
        "after malloc_trim: %lu large spares, %lu B of free pages kept",
        (unsigned long)st.large_spares, (unsigned long)st.page_heap_free_bytes);
  char *s = strdup("libc allocates through us too");
  check_ours(s, "strdup (libc)");
  free(s);
  free(NULL);
  pthread_t late[4];
  for (int i = 0; i < 4; i++) CHECK(pthread_create(&late[i], NULL, thread_work, NULL) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(TEST_FORK_CHILD_ALARM_S);  // a lock held across fork would hang the child: fail instead
    for (int i = 0; i < 1000; i++) free(malloc((size_t)i * 13 + 1));
    _exit(0);
  }
  test_wait_fork_child(pid, "in malloc/free");
  for (int i = 0; i < 4; i++) pthread_join(late[i], NULL);
  printf("ok: every entry of the malloc family, libc's strdup, threads started before and "
         "after the first malloc, and a fork child use the ccache heap (%s mode)\n",
         rseq_mode_name(ccache_heap_mode(ccache_process_heap())));
  const char *modes[] = {"rseq", "cas"};
  for (int i = 0; i < 2; i++) {
    if (i == 0 && !rseq_available()) continue;
    char env[64];
    snprintf(env, sizeof env, "CCACHE_MODE=%s", modes[i]);
    char *envs[] = {env, NULL};
    char *args[] = {"--mode", (char *)modes[i], NULL};
    char out[4096];
    int status = test_run_self(args, envs, false, out, sizeof out);
    printf("%s", out);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "CCACHE_MODE=%s not honoured", modes[i]);
  }
  printf("PASS\n");
  return 0;
}
