// fork_locks_test: fork() while another thread holds each of the allocator's locks in
// turn, in every mode and index. The locks (internal.h's lock order): the process's
// list of heaps, then per heap reclaim_lock, drain_lock, every central stripe,
// page_lock, large_lock and meta_lock. For each one, a helper thread takes it and holds
// it until 50 ms after the main thread announced its fork (so the fork starts while
// the lock is held, however late the main thread gets to it): the atfork handlers
// must wait for it, and
// the child must find every lock free. The child then mallocs and frees every size
// class, a large block, reallocs a large block bigger and smaller, and exits. A lock
// left held hangs the child: its own alarm ends it after 5 s and the test names the
// lock, the mode and the index.
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "allocator/internal.h"
#include "allocator/size_class.h"
#include "rseq/testing.h"
#include "sanitizers/sanitizers.h"

#if CCACHE_HAVE_TSAN
// The fork child inherits the record of the holder thread, which it cannot join: TSan
// would call that a leak at the child's exit and fail it.
const char *__tsan_default_options(void) { return "report_thread_leaks=0"; }
#endif

#define CHILD_ALARM_S 5

struct held {
  pthread_mutex_t *lock;
  _Atomic int taken;    // relaxed is not enough: the main thread forks on seeing it
  _Atomic int forking;  // set by the main thread right before fork() (relaxed: a signal only)
};

static void *holder(void *arg) {
  struct held *h = arg;
  pthread_mutex_lock(h->lock);
  // Release: the fork that follows must see the lock held.
  atomic_store_explicit(&h->taken, 1, memory_order_release);
  // Hold it until the main thread is about to fork, and 50 ms more: the fork starts
  // with the lock held (a fixed hold could end before a delayed main thread forks, and
  // prove nothing).
  struct timespec ms = {0, 1000 * 1000}, hold = {0, 50 * 1000 * 1000};
  while (!atomic_load_explicit(&h->forking, memory_order_relaxed)) nanosleep(&ms, NULL);
  nanosleep(&hold, NULL);
  pthread_mutex_unlock(h->lock);
  return NULL;
}

// The child: every class, a large block, a realloc of a large block. Exit codes name
// the step that failed.
static void child_work(struct ccache_heap *heap) {
  alarm(CHILD_ALARM_S);
  for (unsigned cls = 1; cls < CCACHE_NUM_CLASSES; cls++) {
    size_t size = ccache_class_size(cls);
    void *p[4];
    for (int i = 0; i < 4; i++) {
      p[i] = ccache_malloc(heap, size);
      if (!p[i]) _exit(10);
      memset(p[i], 0xA5, size);
    }
    for (int i = 0; i < 4; i++) ccache_free(heap, p[i]);
  }
  char *big = ccache_malloc(heap, (size_t)1 << 20);
  if (!big) _exit(11);
  memset(big, 1, (size_t)1 << 20);
  big = ccache_realloc(heap, big, (size_t)3 << 20);
  if (!big || big[(1 << 20) - 1] != 1) _exit(12);
  big = ccache_realloc(heap, big, (size_t)300 << 10);
  if (!big || big[1000] != 1) _exit(13);
  ccache_free(heap, big);
  if (ccache_check_heap(heap) != 0) _exit(14);
  _exit(0);
}

static void fork_with_held(struct ccache_heap *heap, pthread_mutex_t *lock, const char *name,
                           enum rseq_mode mode, enum rseq_index index) {
  struct held h = {lock, 0, 0};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, holder, &h) == 0);
  while (!atomic_load_explicit(&h.taken, memory_order_acquire)) sched_yield();
  atomic_store_explicit(&h.forking, 1, memory_order_relaxed);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork: errno %d", errno);
  if (pid == 0) child_work(heap);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid: errno %d", errno);
  CHECK(!(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
        "%s mode, %s index: the fork child hung for %d s after a fork while another thread "
        "held %s: a lock left held across fork", rseq_mode_name(mode), rseq_index_name(index),
        CHILD_ALARM_S, name);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "%s mode, %s index: fork with %s held: the child failed (status %#x: exit 10 malloc, "
        "11 large malloc, 12/13 realloc, 14 heap check)", rseq_mode_name(mode),
        rseq_index_name(index), name, status);
  CHECK(pthread_join(t, NULL) == 0);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  int runs = 0;
  for (int m = 0; m < 2; m++) {
    for (int x = 0; x < 2; x++) {
      enum rseq_mode mode = m ? RSEQ_MODE_CAS : RSEQ_MODE_RSEQ;
      enum rseq_index index = x ? RSEQ_INDEX_MM_CID : RSEQ_INDEX_CPU_ID;
      struct rseq_percpu_mode resolved;
      const char *why = "";
      if (rseq_resolve_mode(mode, index, &resolved, &why) != 0) {
        printf("SKIP: %s mode, %s index: %s\n", rseq_mode_name(mode), rseq_index_name(index), why);
        continue;
      }
      struct ccache_options o = {.mode = mode, .index = index, .reserve_bytes = (size_t)1 << 30};
      struct ccache_heap *heap = ccache_heap_create(&o);
      CHECK(heap, "ccache_heap_create(%s, %s): errno %d", rseq_mode_name(mode),
            rseq_index_name(index), errno);
      // Warm: blocks in the CPU caches and central lists, a large block freed.
      void *warm[256];
      for (int i = 0; i < 256; i++) warm[i] = ccache_malloc(heap, (size_t)(i * 97 % 9000) + 1);
      for (int i = 0; i < 256; i++) ccache_free(heap, warm[i]);
      ccache_free(heap, ccache_malloc(heap, (size_t)2 << 20));

      struct {
        pthread_mutex_t *lock;
        char name[40];
      } locks[8 + CENTRAL_STRIPES];
      int n = 0;
      locks[n].lock = ccache_debug_heaps_lock();
      snprintf(locks[n++].name, sizeof locks[0].name, "the list of heaps");
      locks[n].lock = &heap->reclaim_lock;
      snprintf(locks[n++].name, sizeof locks[0].name, "reclaim_lock");
      locks[n].lock = &heap->drain_lock;
      snprintf(locks[n++].name, sizeof locks[0].name, "drain_lock");
      for (int s = 0; s < CENTRAL_STRIPES; s++) {
        locks[n].lock = &heap->central_lock[s].lock;
        snprintf(locks[n++].name, sizeof locks[0].name, "central_lock[%d]", s);
      }
      locks[n].lock = &heap->page_lock;
      snprintf(locks[n++].name, sizeof locks[0].name, "page_lock");
      locks[n].lock = &heap->large_lock;
      snprintf(locks[n++].name, sizeof locks[0].name, "large_lock");
      locks[n].lock = &heap->meta_lock;
      snprintf(locks[n++].name, sizeof locks[0].name, "meta_lock");
      for (int k = 0; k < n; k++) {
        fork_with_held(heap, locks[k].lock, locks[k].name, mode, index);
        runs++;
      }
      printf("ok: %s mode, %s index: %d forks, each with one lock held by another thread\n",
             rseq_mode_name(mode), rseq_index_name(index), n);
      ccache_heap_destroy(heap);
    }
  }
  CHECK(runs > 0, "no mode could run");
  printf("PASS\n");
  return 0;
}
