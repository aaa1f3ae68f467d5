// malloc_static_test: a binary linked with //allocator:malloc_static gets every call
// of the malloc family from the ccache process heap: malloc, calloc, realloc,
// reallocarray, aligned_alloc, posix_memalign, memalign, valloc, pvalloc,
// malloc_usable_size, free, malloc_trim, mallinfo2, mallinfo, malloc_stats, malloc_info,
// mallopt; also from libc itself (strdup) and from threads started
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

// Reads what fd 2 receives while fn runs, through f (a tmpfile opened beforehand).
static void capture_stderr(FILE *f, void (*fn)(void), char *out, size_t size) {
  fflush(stderr);
  int saved = dup(2);
  CHECK(saved >= 0 && dup2(fileno(f), 2) == 2);
  fn();
  fflush(stderr);
  CHECK(dup2(saved, 2) == 2);
  close(saved);
  rewind(f);
  size_t n = fread(out, 1, size - 1, f);
  out[n] = 0;
}

static unsigned long number_after(const char *text, const char *label) {
  const char *p = strstr(text, label);
  CHECK(p != NULL, "no \"%s\" in:\n%s", label, text);
  return strtoul(p + strlen(label), NULL, 10);
}

// mallinfo2, mallinfo, malloc_stats, malloc_info and mallopt answer for the ccache heap,
// not for glibc's arenas: exact deltas for blocks of known classes, single-threaded.
static void test_introspection(void) {
  // Both files and their buffers before the first snapshot: nothing below allocates
  // but the blocks counted.
  static char buf[2][1 << 16];
  FILE *err = tmpfile(), *f = tmpfile();
  CHECK(err != NULL && f != NULL);
  CHECK(setvbuf(err, buf[0], _IOFBF, sizeof buf[0]) == 0 &&
        setvbuf(f, buf[1], _IOFBF, sizeof buf[1]) == 0);
  struct mallinfo2 m0 = mallinfo2();
  static struct ccache_stats st;
  ccache_get_stats(ccache_process_heap(), &st);
  CHECK(m0.uordblks == st.in_use_bytes - st.large_bytes && m0.hblks == st.large_count &&
            m0.hblkhd == st.large_bytes,
        "mallinfo2: uordblks %zu hblks %zu hblkhd %zu; the heap: %lu small B in use, %lu large "
        "blocks, %lu B", m0.uordblks, m0.hblks, m0.hblkhd,
        (unsigned long)(st.in_use_bytes - st.large_bytes), (unsigned long)st.large_count,
        (unsigned long)st.large_bytes);
  enum { N = 1000 };
  static void *small[N];
  for (int i = 0; i < N; i++) check_ours(small[i] = malloc(100), "malloc(100)");
  size_t cls = malloc_usable_size(small[0]);
  void *big = malloc(1 << 20);
  check_ours(big, "malloc(1 MiB)");
  struct mallinfo2 m1 = mallinfo2();
  CHECK(m1.uordblks - m0.uordblks == N * cls,
        "mallinfo2: uordblks grew by %zu for %d blocks of %zu B",
        m1.uordblks - m0.uordblks, N, cls);
  CHECK(m1.hblks == m0.hblks + 1 && m1.hblkhd == m0.hblkhd + (1 << 20),
        "mallinfo2 after a 1 MiB block: hblks %zu -> %zu, hblkhd %zu -> %zu", m0.hblks, m1.hblks,
        m0.hblkhd, m1.hblkhd);
  CHECK(m1.arena >= m1.uordblks + m1.fordblks - m1.keepcost,
        "mallinfo2: arena %zu < in use %zu + free %zu", m1.arena, m1.uordblks, m1.fordblks);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // glibc's old interface: still exported
  struct mallinfo m = mallinfo();
#pragma GCC diagnostic pop
  CHECK(m.uordblks == (int)m1.uordblks && m.hblks == (int)m1.hblks,
        "mallinfo: uordblks %d, hblks %d",
        m.uordblks, m.hblks);
  static char text[1 << 16];
  capture_stderr(err, malloc_stats, text, sizeof text);
  struct mallinfo2 mi = mallinfo2();  // the same: nothing allocated or freed meanwhile
  CHECK(mi.uordblks == m1.uordblks && mi.hblkhd == m1.hblkhd, "mallinfo2 changed with no call");
  CHECK(number_after(text, "in use bytes     =") == m1.uordblks + m1.hblkhd &&
            number_after(text, "large blocks     =") == m1.hblks,
        "malloc_stats printed:\n%s", text);
  errno = 0;
  CHECK(malloc_info(1, f) == -1 && errno == EINVAL, "malloc_info(1, f): options must be 0");
  CHECK_EQ(malloc_info(0, f), 0);
  rewind(f);
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = 0;
  CHECK(strncmp(text, "<malloc version=\"ccache-1\">", 27) == 0 && strstr(text, "</malloc>"),
        "malloc_info wrote:\n%s", text);
  CHECK(number_after(text, "<total type=\"mmap\" count=\"") == mi.hblks &&
            number_after(text, "<total type=\"in_use\" count=\"-\" size=\"") ==
                mi.uordblks + mi.hblkhd,
        "malloc_info wrote (mallinfo2 before it: %zu + %zu B in use, %zu large):\n%s",
        mi.uordblks, mi.hblkhd, mi.hblks, text);
  for (int i = 0; i < N; i++) free(small[i]);
  free(big);
  struct mallinfo2 m2 = mallinfo2();
  CHECK(m2.uordblks == m0.uordblks && m2.hblks == m0.hblks,
        "after the frees: uordblks %zu (was %zu), hblks %zu (was %zu)", m2.uordblks, m0.uordblks,
        m2.hblks, m0.hblks);
  fclose(err);  // (only now: closing frees each FILE, which the counts above include)
  fclose(f);
  // mallopt: M_TRIM_THRESHOLD is the release threshold; what ccache does not have is 0.
  CHECK_EQ(mallopt(M_MXFAST, 0), 0);
  CHECK_EQ(mallopt(M_MMAP_THRESHOLD, 1 << 20), 0);
  CHECK_EQ(mallopt(M_TRIM_THRESHOLD, -1), 0);
  static void *pages[3000];
  for (int round = 0; round < 2; round++) {
    malloc_trim(0);
    if (round == 1) CHECK_EQ(mallopt(M_TRIM_THRESHOLD, 0), 1);
    for (int i = 0; i < 3000; i++) check_ours(pages[i] = malloc(4000), "malloc(4000)");
    for (int i = 0; i < 3000; i++) free(pages[i]);
    CHECK_EQ(ccache_drain_all(ccache_process_heap()), 0);
    ccache_get_stats(ccache_process_heap(), &st);
    if (round == 0)  // the default threshold (4 MiB) keeps some: the check below has teeth
      CHECK(st.page_heap_free_bytes > 0, "12 MB freed kept no free pages at the default threshold");
    else
      CHECK(st.page_heap_free_bytes == 0,
            "mallopt(M_TRIM_THRESHOLD, 0), then 12 MB freed: %lu B of free pages kept",
            (unsigned long)st.page_heap_free_bytes);
  }
  CHECK_EQ(mallopt(M_TRIM_THRESHOLD, 4 << 20), 1);
  printf("ok: mallinfo2, mallinfo, malloc_stats, malloc_info and mallopt(M_TRIM_THRESHOLD) "
         "answer for the ccache heap\n");
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
  // It runs in well under a second; a heap broken so that a call never returns (the
  // mutant free-wrong-class hung it until Bazel's 300 s timeout) fails here instead.
  // A fork child's own alarm (TEST_FORK_CHILD_ALARM_S) replaces this one there, and
  // kills it by SIGALRM as before (the watchdog's handler defers to it in children).
  test_watchdog(60);
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
  test_introspection();
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
