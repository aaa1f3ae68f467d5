// cas_stack_test: the CAS-mode per-CPU stack, single-threaded semantics and the ABA
// interleaving forced on purpose. Thread A starts a pop and is held right before its
// top CAS, having read top = {count 2, item y} and the item below it, x. Meanwhile the
// main thread pops y, pops x, pushes z and pushes y again: the stack is {z, y}, with
// the same count and top item that A read. A's CAS must fail (the op counter moved), A
// must retry, take y, and leave exactly {z}. Without the counter, A would install x as
// the top again: x would be both in the main thread's hands and in the stack.
// Also the rseq per-CPU stack sections' single-threaded semantics.
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

#define CAP 8
static rseq_u128_t top __attribute__((aligned(16)));
static rseq_u128_t slots[CAP] __attribute__((aligned(16)));
static sem_t a_paused, a_go;
static __thread int hold_me;  // the thread that must pause at its first CAS
static int a_retries;

static void hook(int where) {
  if (!hold_me) return;
  if (where == RSEQ_CAS_STACK_POP_BEFORE_CAS) {
    if (hold_me == 1) {
      hold_me = 2;
      sem_post(&a_paused);
      sem_wait(&a_go);
    } else {
      a_retries++;
    }
  }
}

static void *thread_a(void *arg) {
  intptr_t *out = arg;
  hold_me = 1;
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, out), RSEQ_COMMIT);
  return NULL;
}

static void test_aba(void) {
  const intptr_t x = 0x1000, y = 0x2000, z = 0x3000;
  memset(&top, 0, sizeof top);
  memset(slots, 0, sizeof slots);
  CHECK_EQ(rseq_cas_stack_push(&top, slots, CAP, x), RSEQ_COMMIT);
  CHECK_EQ(rseq_cas_stack_push(&top, slots, CAP, y), RSEQ_COMMIT);
  sem_init(&a_paused, 0, 0);
  sem_init(&a_go, 0, 0);
  rseq_cas_stack_set_test_hook(hook);
  intptr_t a_got = 0, got;
  pthread_t a;
  CHECK(pthread_create(&a, NULL, thread_a, &a_got) == 0);
  sem_wait(&a_paused);  // A holds top = {2, y} and below = x
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_COMMIT);
  CHECK_EQ(got, y);
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_COMMIT);
  CHECK_EQ(got, x);  // the main thread now owns x
  CHECK_EQ(rseq_cas_stack_push(&top, slots, CAP, z), RSEQ_COMMIT);
  CHECK_EQ(rseq_cas_stack_push(&top, slots, CAP, y), RSEQ_COMMIT);
  CHECK_EQ(rseq_cas_stack_count(&top), 2);  // same count, same top item as A read
  sem_post(&a_go);
  pthread_join(a, NULL);
  rseq_cas_stack_set_test_hook(NULL);
  CHECK_EQ(a_got, y);
  CHECK(a_retries >= 1, "A's stale CAS did not fail");
  CHECK_EQ(rseq_cas_stack_count(&top), 1);
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_COMMIT);
  CHECK(got == z, "after the ABA interleaving the stack holds %#lx, want z", (long)got);
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_CMPFAIL);
  printf("ok: ABA forced: the stale pop's CAS failed %d time(s) and retried; x, y, z each "
         "held once\n",
         a_retries);
}

static void test_cas_semantics(void) {
  memset(&top, 0, sizeof top);
  memset(slots, 0, sizeof slots);
  intptr_t got;
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_CMPFAIL);
  for (int i = 0; i < CAP; i++) CHECK_EQ(rseq_cas_stack_push(&top, slots, CAP, 100 + i), RSEQ_COMMIT);
  CHECK_EQ(rseq_cas_stack_push(&top, slots, CAP, 1), RSEQ_CMPFAIL);
  for (int i = CAP - 1; i >= 0; i--) {
    CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_COMMIT);
    CHECK_EQ(got, 100 + i);
  }
  CHECK_EQ(rseq_cas_stack_pop(&top, slots, &got), RSEQ_CMPFAIL);
  printf("ok: CAS stack: LIFO, CMPFAIL when full and when empty\n");
}

// The rseq sections on a region layout: stopped word, then {count, capacity}, slots.
struct region {
  intptr_t stopped;
  intptr_t count, capacity;
  intptr_t slots[CAP];
};

static void test_rseq_semantics(enum rseq_index index) {
  int n = rseq_index_count(index);
  struct region *regions = calloc((size_t)n, sizeof *regions);
  for (int c = 0; c < n; c++) regions[c].capacity = CAP;
  long count_off = (long)offsetof(struct region, count);
  long slots_off = (long)offsetof(struct region, slots);
  char *base = (char *)regions;
  int cpu = rseq_current_index(index);
  test_context("rseq stack index=%s cpu=%d", rseq_index_name(index), cpu);
  intptr_t got;
  int r;
  while ((r = rseq_percpu_stack_pop(index, base, sizeof *regions, count_off, slots_off, &got,
                                    cpu)) == RSEQ_ABORT)
    cpu = rseq_current_index(index);
  CHECK_EQ(r, RSEQ_CMPFAIL);
  // Fake CPUs make it deterministic: push on each CPU, wrong CPU aborts.
  CHECK(rseq_fake_cpu_enter() == 0);
  for (int c = 0; c < n; c++) {
    rseq_fake_cpu_set(c);
    for (int i = 0; i < CAP; i++)
      CHECK_EQ(rseq_percpu_stack_push(index, base, sizeof *regions, count_off, slots_off,
                                      c * 100 + i, c),
               RSEQ_COMMIT);
    CHECK_EQ(rseq_percpu_stack_push(index, base, sizeof *regions, count_off, slots_off, 7, c),
             RSEQ_CMPFAIL);
    if (n > 1)
      CHECK_EQ(rseq_percpu_stack_pop(index, base, sizeof *regions, count_off, slots_off, &got,
                                     (c + 1) % n),
               RSEQ_ABORT);
    regions[c].stopped = 1;
    CHECK_EQ(rseq_percpu_stack_pop(index, base, sizeof *regions, count_off, slots_off, &got, c),
             RSEQ_CMPFAIL);
    CHECK_EQ(regions[c].count, CAP);
    regions[c].stopped = 0;
  }
  for (int c = 0; c < n; c++) {
    rseq_fake_cpu_set(c);
    for (int i = CAP - 1; i >= 0; i--) {
      CHECK_EQ(rseq_percpu_stack_pop(index, base, sizeof *regions, count_off, slots_off, &got, c),
               RSEQ_COMMIT);
      CHECK_EQ(got, c * 100 + i);
    }
    CHECK_EQ(rseq_percpu_stack_pop(index, base, sizeof *regions, count_off, slots_off, &got, c),
             RSEQ_CMPFAIL);
  }
  CHECK(rseq_fake_cpu_exit() == 0);
  free(regions);
  printf("ok: rseq per-CPU stack, index %s: LIFO per CPU, full/empty/stopped CMPFAIL, wrong "
         "CPU aborts\n",
         rseq_index_name(index));
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  test_cas_semantics();
  test_aba();
  if (!rseq_available()) test_skip("rseq unavailable: %s", rseq_unavailable_reason());
  test_rseq_semantics(RSEQ_INDEX_CPU_ID);
  if (rseq_mm_cid_available()) test_rseq_semantics(RSEQ_INDEX_MM_CID);
  printf("PASS\n");
  return 0;
}
