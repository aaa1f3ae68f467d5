// primitives_test: exact single-threaded semantics of every primitive and its CAS twin,
// in every mode x index; the abort path on a CPU mismatch; fake CPUs; the counters.
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "rseq/rseq.h"
#include "rseq/testing.h"

struct node {
  long payload;
  intptr_t next;
};

#define NEXT_OFF ((long)offsetof(struct node, next))

static void check_counters_consistent(void) {
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    CHECK(rseq_registry_get(i, &s) == 0);
    struct rseq_section_counters c;
    rseq_section_counters_get(s.id, &c);
    CHECK(c.entered == c.committed + c.aborted + c.cmpfail,
          "section %s: entered %lu != committed %lu + aborted %lu + cmpfail %lu", s.name,
          (unsigned long)c.entered, (unsigned long)c.committed, (unsigned long)c.aborted,
          (unsigned long)c.cmpfail);
  }
}

static uint64_t committed_of(const char *name) {
  for (int i = 0; i < rseq_registry_count(); i++) {
    struct rseq_section s;
    rseq_registry_get(i, &s);
    if (strcmp(s.name, name) == 0) {
      struct rseq_section_counters c;
      rseq_section_counters_get(s.id, &c);
      return c.committed;
    }
  }
  test_fail(__FILE__, __LINE__, name, "section not in the registry");
}

// Every operation: result and memory effects, exactly.
static void exercise(const struct rseq_percpu_mode *m) {
  int cas = m->mode == RSEQ_MODE_CAS;
  int cpu = cas ? 0 : rseq_current_index(m->index);
  CHECK(cpu >= 0);
  test_context("mode=%s index=%s cpu=%d", rseq_mode_name(m->mode), rseq_index_name(m->index),
               cpu);

  // addv
  intptr_t v = 10;
  CHECK_EQ(rseq_percpu_addv(m, &v, 5, cpu), RSEQ_COMMIT);
  CHECK_EQ(v, 15);
  CHECK_EQ(rseq_percpu_addv(m, &v, -20, cpu), RSEQ_COMMIT);
  CHECK_EQ(v, -5);

  // cmpeqv_storev
  v = 7;
  CHECK_EQ(rseq_percpu_cmpeqv_storev(m, &v, 8, 100, cpu), RSEQ_CMPFAIL);
  CHECK_EQ(v, 7);
  CHECK_EQ(rseq_percpu_cmpeqv_storev(m, &v, 7, 100, cpu), RSEQ_COMMIT);
  CHECK_EQ(v, 100);

  // cmpeqv_trystorev_storev
  intptr_t v2 = 1;
  v = 3;
  int r = cas ? rseq_cas_cmpeqv_trystorev_storev(&v, 4, &v2, 9, 5)
              : rseq_cmpeqv_trystorev_storev(m->index, &v, 4, &v2, 9, 5, cpu);
  CHECK_EQ(r, RSEQ_CMPFAIL);
  CHECK_EQ(v, 3);
  CHECK_EQ(v2, 1);
  r = cas ? rseq_cas_cmpeqv_trystorev_storev(&v, 3, &v2, 9, 5)
          : rseq_cmpeqv_trystorev_storev(m->index, &v, 3, &v2, 9, 5, cpu);
  CHECK_EQ(r, RSEQ_COMMIT);
  CHECK_EQ(v, 5);
  CHECK_EQ(v2, 9);

  // cmpeqv_trymemcpy_storev, every length 0..72: exactly len bytes copied.
  for (size_t len = 0; len <= 72; len++) {
    unsigned char src[80], dst[80];
    for (size_t i = 0; i < sizeof src; i++) {
      src[i] = (unsigned char)(i * 7 + len);
      dst[i] = 0xAA;
    }
    v = (intptr_t)len;
    r = cas ? rseq_cas_cmpeqv_trymemcpy_storev(&v, (intptr_t)len + 1, dst, src, len, 0)
            : rseq_cmpeqv_trymemcpy_storev(m->index, &v, (intptr_t)len + 1, dst, src, len, 0, cpu);
    CHECK_EQ(r, RSEQ_CMPFAIL);
    CHECK_EQ(v, (intptr_t)len);
    for (size_t i = 0; i < sizeof dst; i++) CHECK(dst[i] == 0xAA, "len %zu byte %zu", len, i);
    r = cas ? rseq_cas_cmpeqv_trymemcpy_storev(&v, (intptr_t)len, dst, src, len, -1)
            : rseq_cmpeqv_trymemcpy_storev(m->index, &v, (intptr_t)len, dst, src, len, -1, cpu);
    CHECK_EQ(r, RSEQ_COMMIT);
    CHECK_EQ(v, -1);
    for (size_t i = 0; i < sizeof dst; i++)
      CHECK(dst[i] == (i < len ? src[i] : 0xAA), "len %zu byte %zu", len, i);
  }

  // lists: LIFO order, CMPFAIL when empty.
  static struct node nodes[100];
  struct rseq_list list = {0, 0};
  intptr_t load = 0;
  CHECK_EQ(rseq_list_pop(m, &list, NEXT_OFF, &load, cpu), RSEQ_CMPFAIL);
  for (int i = 0; i < 100; i++) {
    nodes[i].payload = i;
    CHECK_EQ(rseq_list_push(m, &list, (intptr_t)&nodes[i], NEXT_OFF, cpu), RSEQ_COMMIT);
  }
  for (int i = 99; i >= 0; i--) {
    CHECK_EQ(rseq_list_pop(m, &list, NEXT_OFF, &load, cpu), RSEQ_COMMIT);
    CHECK(load == (intptr_t)&nodes[i], "pop %d", i);
  }
  CHECK_EQ(rseq_list_pop(m, &list, NEXT_OFF, &load, cpu), RSEQ_CMPFAIL);
  CHECK_EQ(list.head, 0);

  // offset_deref_addv
  intptr_t sums[4] = {0, 0, 0, 0};
  intptr_t base = (intptr_t)sums;
  r = cas ? rseq_cas_offset_deref_addv(&base, 2 * sizeof(intptr_t), 6)
          : rseq_offset_deref_addv(m->index, &base, 2 * sizeof(intptr_t), 6, cpu);
  CHECK_EQ(r, RSEQ_COMMIT);
  CHECK(sums[0] == 0 && sums[1] == 0 && sums[2] == 6 && sums[3] == 0);

  if (cas) return;
  // rseq only: a CPU the thread is not on aborts every section before any store.
  int other = cpu + 1;
  test_context("mode=rseq index=%s cpu=%d passing wrong cpu %d", rseq_index_name(m->index), cpu,
               other);
  v = 1;
  v2 = 2;
  CHECK_EQ(rseq_addv(m->index, &v, 1, other), RSEQ_ABORT);
  CHECK_EQ(rseq_cmpeqv_storev(m->index, &v, 1, 5, other), RSEQ_ABORT);
  CHECK_EQ(rseq_cmpeqv_trystorev_storev(m->index, &v, 1, &v2, 5, 5, other), RSEQ_ABORT);
  unsigned char a[8] = {0}, b[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  CHECK_EQ(rseq_cmpeqv_trymemcpy_storev(m->index, &v, 1, a, b, 8, 5, other), RSEQ_ABORT);
  CHECK_EQ(rseq_offset_deref_addv(m->index, &base, 0, 1, other), RSEQ_ABORT);
  CHECK_EQ(rseq_list_push(m, &list, (intptr_t)&nodes[0], NEXT_OFF, other), RSEQ_ABORT);
  CHECK_EQ(v, 1);
  CHECK_EQ(v2, 2);
  CHECK_EQ(list.head, 0);
  CHECK_EQ(sums[0], 0);
}

// Fake CPUs: one thread drives every CPU's slot, and sections never abort.
static void *fake_cpu_thread(void *arg) {
  enum rseq_index index = *(enum rseq_index *)arg;
  int n = rseq_index_count(index);
  enum rseq_owner before = rseq_thread_owner();
  CHECK(rseq_fake_cpu_enter() == 0, "rseq_fake_cpu_enter");
  CHECK_EQ(rseq_thread_owner(), RSEQ_OWNER_FAKE);
  intptr_t slots[64] = {0};
  for (int cpu = 0; cpu < n && cpu < 64; cpu++) {
    rseq_fake_cpu_set(cpu);
    CHECK_EQ(rseq_current_index(index), cpu);
    for (int k = 0; k <= cpu; k++) CHECK_EQ(rseq_addv(index, &slots[cpu], 1, cpu), RSEQ_COMMIT);
    if (n > 1) CHECK_EQ(rseq_addv(index, &slots[cpu], 1, (cpu + 1) % n), RSEQ_ABORT);
  }
  for (int cpu = 0; cpu < n && cpu < 64; cpu++) CHECK_EQ(slots[cpu], cpu + 1);
  // A migration right after an index read: that read returns the old CPU, the next
  // the new one, and a section for the old CPU aborts.
  rseq_fake_cpu_set(0);
  rseq_fake_cpu_migrate_after_next_read(n - 1);
  CHECK_EQ(rseq_current_index(index), 0);
  if (n > 1) CHECK_EQ(rseq_addv(index, &slots[0], 1, 0), RSEQ_ABORT);
  CHECK_EQ(slots[0], 1);  // the aborted add left it alone
  CHECK_EQ(rseq_current_index(index), n - 1);
  CHECK_EQ(rseq_addv(index, &slots[n - 1], 1, n - 1), RSEQ_COMMIT);
  CHECK(rseq_fake_cpu_exit() == 0, "rseq_fake_cpu_exit");
  CHECK_EQ(rseq_thread_owner(), before);
  int now = rseq_current_index(index);
  CHECK(now >= 0 && now < n);
  intptr_t v = 0;
  CHECK_EQ(rseq_addv(index, &v, 1, now), RSEQ_COMMIT);  // registered again: works
  return NULL;
}

// The enter and abort hooks see every section call with its id, index and cpu.
static int hook_entered_id = -1, hook_entered_index = -1, hook_entered_cpu = -1, hook_aborted_id = -1;
static void on_enter(int id, enum rseq_index index, int cpu) {
  hook_entered_id = id;
  hook_entered_index = (int)index;
  hook_entered_cpu = cpu;
}
static void on_abort(int id) { hook_aborted_id = id; }

static void check_hooks(void) {
  test_context("enter/abort hooks");
  CHECK(rseq_set_enter_hook(on_enter) == 0, "the stats variant takes an enter hook");
  rseq_set_abort_hook(on_abort);
  int cpu = rseq_current_index(RSEQ_INDEX_CPU_ID);
  intptr_t v = 0;
  CHECK_EQ(rseq_addv(RSEQ_INDEX_CPU_ID, &v, 1, cpu), RSEQ_COMMIT);
  CHECK_EQ(hook_entered_id, 0);  // rseq_addv's id
  CHECK_EQ(hook_entered_index, RSEQ_INDEX_CPU_ID);
  CHECK_EQ(hook_entered_cpu, cpu);
  CHECK_EQ(hook_aborted_id, -1);
  CHECK_EQ(rseq_cmpeqv_storev(RSEQ_INDEX_CPU_ID, &v, 1, 2, cpu + 1), RSEQ_ABORT);  // wrong cpu
  CHECK_EQ(hook_entered_id, 1);
  CHECK_EQ(hook_entered_cpu, cpu + 1);
  CHECK_EQ(hook_aborted_id, 1);
  rseq_set_enter_hook(NULL);
  rseq_set_abort_hook(NULL);
  printf("ok: enter and abort hooks\n");
}

int main(int argc, char **argv) {
  test_init(argc, argv);
  if (!rseq_available()) test_skip("rseq unavailable on this kernel: %s", rseq_unavailable_reason());
  printf("rseq owner: %s, mm_cid: %s, possible cpus: %d\n", rseq_owner_name(rseq_thread_owner()),
         rseq_mm_cid_available() ? "yes" : "no", rseq_possible_cpus());
  rseq_section_counters_reset();
  int runs = 0;
  for (int mode = RSEQ_MODE_RSEQ; mode <= RSEQ_MODE_CAS; mode++) {
    for (int index = RSEQ_INDEX_CPU_ID; index <= RSEQ_INDEX_MM_CID; index++) {
      struct rseq_percpu_mode m;
      const char *why = NULL;
      if (rseq_resolve_mode((enum rseq_mode)mode, (enum rseq_index)index, &m, &why) != 0) {
        printf("SKIPPED: mode %s index %s: %s\n", rseq_mode_name(mode), rseq_index_name(index), why);
        continue;
      }
      exercise(&m);
      runs++;
      printf("ok: mode=%s index=%s\n", rseq_mode_name(m.mode), rseq_index_name(m.index));
    }
  }
  CHECK(runs >= 2, "at least rseq+cas with cpu_id ran");

  // Exact counters: each rseq run commits rseq_addv twice (the two percpu_addv calls).
  int rseq_runs = rseq_mm_cid_available() ? 2 : 1;
  CHECK_EQ(committed_of("rseq_addv"), 2 * rseq_runs);
  CHECK_EQ(committed_of("rseq_cmpeqv_trymemcpy_storev"), 73 * rseq_runs);
  check_counters_consistent();

  for (int index = RSEQ_INDEX_CPU_ID; index <= RSEQ_INDEX_MM_CID; index++) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fake_cpu_thread, &index) == 0);
    pthread_join(t, NULL);
    printf("ok: fake cpus, index=%s\n", rseq_index_name(index));
  }
  check_counters_consistent();
  check_hooks();
  check_counters_consistent();
  rseq_registry_dump_json(stdout);
  printf("PASS\n");
  return 0;
}
