// thread_exit_test: malloc, free and realloc where real programs call them at thread
// and process exit, in every mode and index:
//   - pthread_key destructors that run before the rseq layer's own exit handling (a
//     key created before the first allocation) and after it (keys created later; the
//     rseq layer's key unregisters a thread that registered its own area);
//   - a destructor that sets its key again, so it runs in a later destructor round;
//   - a destructor that creates a new key and sets it, whose destructor runs later;
//   - an atexit handler.
// Every block must come back usable (a realloc keeps its bytes), the heap's invariants
// must hold and nothing may stay in use. With GLIBC_TUNABLES=glibc.pthread.rseq=0 (the
// *_self_rseq targets) the threads register their own rseq areas: every registration,
// including one made again by a late destructor, must be matched by an unregistration.
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocator/ccache.h"
#include "rseq/rseq.h"
#include "rseq/testing.h"

#define THREADS 8
#define ROUNDS 3  // destructor rounds a key asks for (glibc runs at most 4)

static struct ccache_heap *heaps[4];  // [mode][index]
static int nheaps;
// Relaxed: counted by exiting threads, read after they were joined.
static _Atomic int calls, failures;

// One allocate-touch-realloc-check-free cycle on every heap; records a failure with
// where it happened.
static void exercise(const char *where) {
  for (int h = 0; h < nheaps; h++) {
    size_t size = 24 + (size_t)h * 200;
    unsigned char *p = ccache_malloc(heaps[h], size);
    if (!p) {
      fprintf(stderr, "FAIL: %s: heap %d: malloc(%zu) returned NULL (errno %d)\n", where, h, size, errno);
      atomic_fetch_add_explicit(&failures, 1, memory_order_relaxed);
      continue;
    }
    memset(p, 0x3C, size);
    unsigned char *q = ccache_realloc(heaps[h], p, size * 40);
    if (!q || q[0] != 0x3C || q[size - 1] != 0x3C) {
      fprintf(stderr, "FAIL: %s: heap %d: realloc lost the block's bytes\n", where, h);
      atomic_fetch_add_explicit(&failures, 1, memory_order_relaxed);
      if (!q) ccache_free(heaps[h], p);
    }
    if (q) ccache_free(heaps[h], q);
    void *r = ccache_calloc(heaps[h], 3, 100);
    ccache_free(heaps[h], r);
  }
  atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
}

static pthread_key_t early_key, late_key, spawning_key;
static _Atomic int made_keys;  // keys created by destructors (relaxed: a count)

static void early_destructor(void *arg) {
  (void)arg;
  exercise("a key destructor that runs before the rseq layer's");
}

// Sets itself again for ROUNDS rounds: the later rounds run after every other
// destructor of this thread, the rseq layer's included.
static void late_destructor(void *arg) {
  intptr_t round = (intptr_t)arg;
  exercise("a key destructor in a later round");
  if (round < ROUNDS) pthread_setspecific(late_key, (void *)(round + 1));
}

static void made_key_destructor(void *arg) {
  (void)arg;
  exercise("the destructor of a key created by a destructor");
}

static void spawning_destructor(void *arg) {
  (void)arg;
  exercise("a key destructor that creates a key");
  pthread_key_t k;
  if (pthread_key_create(&k, made_key_destructor) == 0) {
    atomic_fetch_add_explicit(&made_keys, 1, memory_order_relaxed);
    pthread_setspecific(k, (void *)1);
  }
}

static void *thread_main(void *arg) {
  (void)arg;
  exercise("a running thread");
  pthread_setspecific(early_key, (void *)1);
  pthread_setspecific(late_key, (void *)1);
  pthread_setspecific(spawning_key, (void *)1);
  return NULL;
}

static bool main_passed;  // set last in main: an exit from a failed CHECK prints no PASS

static void at_exit_handler(void) {
  int before = atomic_load(&failures);
  exercise("an atexit handler");
  for (int h = 0; h < nheaps; h++) {
    if (ccache_check_heap(heaps[h]) != 0) {
      fprintf(stderr, "FAIL: heap %d: invariants broken at exit\n", h);
      _exit(1);
    }
  }
  if (atomic_load(&failures) != before) _exit(1);
  printf("ok: malloc, realloc and free from an atexit handler\n%s", main_passed ? "PASS\n" : "");
  fflush(stdout);
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  // Before anything allocates: this key's destructor runs before the rseq layer's.
  CHECK(pthread_key_create(&early_key, early_destructor) == 0);
  const char *tunables = getenv("GLIBC_TUNABLES");
  bool self = tunables && strstr(tunables, "glibc.pthread.rseq=0");
  for (int m = 0; m < 2; m++)
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
      heaps[nheaps] = ccache_heap_create(&o);
      CHECK(heaps[nheaps], "heap %s/%s: errno %d", rseq_mode_name(mode), rseq_index_name(index), errno);
      printf("heap %d: %s mode, %s index\n", nheaps, rseq_mode_name(mode), rseq_index_name(index));
      nheaps++;
    }
  CHECK(nheaps > 0);
  printf("rseq: %s (glibc registration %s)\n", rseq_owner_name(rseq_thread_owner()),
         self ? "disabled by GLIBC_TUNABLES" : "as the system has it");
  if (self && rseq_available())
    CHECK(rseq_thread_owner() == RSEQ_OWNER_SELF, "GLIBC_TUNABLES=glibc.pthread.rseq=0, but the "
          "thread's area is %s's", rseq_owner_name(rseq_thread_owner()));
  CHECK(pthread_key_create(&late_key, late_destructor) == 0);
  CHECK(pthread_key_create(&spawning_key, spawning_destructor) == 0);
  CHECK(atexit(at_exit_handler) == 0);

  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, thread_main, NULL) == 0);
  for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);

  // Per thread: its body, the early destructor, ROUNDS late rounds, the spawning one
  // and the destructor of the key it made.
  int want = THREADS * (1 + 1 + ROUNDS + 1 + 1);
  CHECK(atomic_load(&failures) == 0, "%d allocator calls failed at thread exit (above)",
        atomic_load(&failures));
  CHECK(atomic_load(&calls) == want, "%d exercise calls, want %d: a destructor did not run",
        atomic_load(&calls), want);
  CHECK(atomic_load(&made_keys) == THREADS);
  for (int h = 0; h < nheaps; h++) {
    struct ccache_stats st;
    ccache_get_stats(heaps[h], &st);
    CHECK(st.in_use_bytes == 0, "heap %d: %lu bytes in use after every thread freed all",
          h, (unsigned long)st.in_use_bytes);
    CHECK(ccache_check_heap(heaps[h]) == 0, "heap %d: invariants broken", h);
  }
  uint64_t reg, unreg;
  rseq_self_registration_counts(&reg, &unreg);
  printf("ok: %d threads, %d allocator calls from bodies and key destructors; our own rseq "
         "registrations %lu, unregistrations %lu\n", THREADS, want, (unsigned long)reg,
         (unsigned long)unreg);
  if (rseq_thread_owner() == RSEQ_OWNER_SELF)  // the main thread is still registered
    CHECK(reg == unreg + 1, "a thread exited with its own rseq area still registered: %lu "
          "registrations, %lu unregistrations (a destructor after the rseq layer's "
          "registered it again?)", (unsigned long)reg, (unsigned long)unreg);
  main_passed = true;
  return 0;  // at_exit_handler runs now, and prints PASS
}
