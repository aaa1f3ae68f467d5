// registry.c: the sections linked into this binary, their counters, delay injection.
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rseq/rseq.h"
#include "rseq/rseq_internal.h"

// One entry per section, emitted by RSEQ_ASM_DEFINE_TABLE into section rseq_registry.
struct registry_entry {
  const struct rseq_cs_desc *desc;
  const char *name;
  intptr_t id;
};

// The linker defines __start_/__stop_ for sections whose names are C identifiers
// (RSEQ_LINKER_SYMBOL: rseq_internal.h, which also declares the tables that tools
// read, __rseq_cs_ptr_array and __rseq_exit_point_array; check_tables below references
// them so that the linker keeps them: nothing else in the program uses them, and an opt
// build links with --gc-sections, which dropped both from libccache_malloc.so).
extern const struct registry_entry __start_rseq_registry[] RSEQ_LINKER_SYMBOL;
extern const struct registry_entry __stop_rseq_registry[] RSEQ_LINKER_SYMBOL;

#define MAX_SECTIONS 64
static struct rseq_section sorted[MAX_SECTIONS];
static int sorted_count;
static pthread_once_t sorted_once = PTHREAD_ONCE_INIT;

static int by_name(const void *a, const void *b) {
  return strcmp(((const struct rseq_section *)a)->name, ((const struct rseq_section *)b)->name);
}

static void die(const char *msg) {
  ssize_t n = write(2, msg, strlen(msg));
  (void)n;  // aborting anyway
  abort();
}

// Every registered section must be in __rseq_cs_ptr_array: RSEQ_ASM_DEFINE_TABLE emits
// both, so a miss means a table was dropped or mangled at link time. The exit-point
// table is only counted (other rseq code linked into the object may add to it).
static volatile int exit_points;  // volatile: the reference must stay, or --gc-sections drops the table
static void check_tables(void) {
  const struct registry_entry *e = __start_rseq_registry;
  for (; e && e < __stop_rseq_registry; e++) {
    const struct rseq_cs_desc *const *p = __start___rseq_cs_ptr_array;
    while (p && p < __stop___rseq_cs_ptr_array && *p != e->desc) p++;
    if (!p || p == __stop___rseq_cs_ptr_array)
      die("rseq: a registered section is missing from __rseq_cs_ptr_array\n");
  }
  exit_points = (int)(__stop___rseq_exit_point_array - __start___rseq_exit_point_array);
}

static void build_sorted(void) {
  check_tables();
  const struct registry_entry *e = __start_rseq_registry;
  for (; e && e < __stop_rseq_registry && sorted_count < MAX_SECTIONS; e++) {
    struct rseq_section *s = &sorted[sorted_count++];
    s->name = e->name;
    s->id = (int)e->id;
    s->desc = e->desc;
    s->start_ip = (uintptr_t)e->desc->start_ip;
    s->post_commit_ip = (uintptr_t)(e->desc->start_ip + e->desc->post_commit_offset);
    s->abort_ip = (uintptr_t)e->desc->abort_ip;
  }
  qsort(sorted, (size_t)sorted_count, sizeof sorted[0], by_name);
}

int rseq_registry_count(void) {
  pthread_once(&sorted_once, build_sorted);
  return sorted_count;
}

int rseq_registry_get(int i, struct rseq_section *out) {
  if (i < 0 || i >= rseq_registry_count()) return -1;
  *out = sorted[i];
  return 0;
}

int rseq_registry_find_ip(uintptr_t ip, struct rseq_section *out) {
  int n = rseq_registry_count();
  for (int i = 0; i < n; i++) {
    const struct rseq_section *s = &sorted[i];
    if ((ip >= s->start_ip && ip < s->post_commit_ip) || ip == s->abort_ip) {
      if (out) *out = *s;
      return i;
    }
  }
  return -1;
}

// ---------------------------------------------------------------------------------
// Counters. Relaxed atomics: they are statistics, read by reporters that accept any
// recent value, and written from signal handlers too (lock-free, so async-signal-safe).

// Not static, and under a name no other object uses: abortscan --object finds it in
// the symbol table and reads the aborted counts of a traced process at its exit, so
// the layout below is fixed (4 words per section id, aborted the third).
struct rseq_counter_slot {
  _Atomic uint64_t entered, committed, aborted, cmpfail;
};
_Static_assert(sizeof(struct rseq_counter_slot) == 32 &&
                   __builtin_offsetof(struct rseq_counter_slot, aborted) == 16,
               "stress/abortscan_object.c reads this layout");
__attribute__((
    visibility("hidden"))) struct rseq_counter_slot rseq_section_counter_table[RSEQ_SECTION_MAX];

static _Atomic(rseq_abort_hook_fn) abort_hook;
static _Atomic(rseq_enter_hook_fn) enter_hook;

void rseq_count_entered(int id, enum rseq_index index, int cpu) {
  atomic_fetch_add_explicit(&rseq_section_counter_table[id].entered, 1, memory_order_relaxed);
  // Acquire pairs with the release in rseq_set_enter_hook: the hook's data is ready.
  rseq_enter_hook_fn hook = atomic_load_explicit(&enter_hook, memory_order_acquire);
  if (hook) hook(id, index, cpu);
}
void rseq_count_committed(int id) {
  atomic_fetch_add_explicit(&rseq_section_counter_table[id].committed, 1, memory_order_relaxed);
}
void rseq_count_cmpfail(int id) {
  atomic_fetch_add_explicit(&rseq_section_counter_table[id].cmpfail, 1, memory_order_relaxed);
}
void rseq_count_aborted(int id) {
  atomic_fetch_add_explicit(&rseq_section_counter_table[id].aborted, 1, memory_order_relaxed);
  // Acquire pairs with the release in rseq_set_abort_hook: the hook's data is ready.
  rseq_abort_hook_fn hook = atomic_load_explicit(&abort_hook, memory_order_acquire);
  if (hook) hook(id);
}

void rseq_set_abort_hook(rseq_abort_hook_fn hook) {
  atomic_store_explicit(&abort_hook, hook, memory_order_release);
}

int rseq_set_enter_hook(rseq_enter_hook_fn hook) {
  if (!rseq_stats_enabled()) {
    errno = ENOTSUP;
    return -1;
  }
  atomic_store_explicit(&enter_hook, hook, memory_order_release);
  return 0;
}

void rseq_section_counters_get(int id, struct rseq_section_counters *out) {
  memset(out, 0, sizeof *out);
  if (id < 0 || id >= RSEQ_SECTION_MAX) return;
  out->entered =
      atomic_load_explicit(&rseq_section_counter_table[id].entered, memory_order_relaxed);
  out->committed =
      atomic_load_explicit(&rseq_section_counter_table[id].committed, memory_order_relaxed);
  out->aborted =
      atomic_load_explicit(&rseq_section_counter_table[id].aborted, memory_order_relaxed);
  out->cmpfail =
      atomic_load_explicit(&rseq_section_counter_table[id].cmpfail, memory_order_relaxed);
}

void rseq_section_counters_reset(void) {
  for (int i = 0; i < RSEQ_SECTION_MAX; i++) {
    atomic_store_explicit(&rseq_section_counter_table[i].entered, 0, memory_order_relaxed);
    atomic_store_explicit(&rseq_section_counter_table[i].committed, 0, memory_order_relaxed);
    atomic_store_explicit(&rseq_section_counter_table[i].aborted, 0, memory_order_relaxed);
    atomic_store_explicit(&rseq_section_counter_table[i].cmpfail, 0, memory_order_relaxed);
  }
}

bool rseq_stats_enabled(void) {
#if defined(RSEQ_STATS) || defined(RSEQ_INJECT) || defined(RSEQ_COMPARE_TWICE)
  return true;
#else
  return false;
#endif
}

static const char *variant_name(void) {
#if defined(RSEQ_INJECT)
  return "inject";
#elif defined(RSEQ_COMPARE_TWICE)
  return "debug";
#elif defined(RSEQ_STATS)
  return "stats";
#else
  return "release";
#endif
}

uint32_t rseq_inject_points_of(int section_id) {
#define POINTS_CASE(id, name, points) \
  case id:                            \
    return points;
  switch (section_id) { RSEQ_SECTIONS(POINTS_CASE) }
#undef POINTS_CASE
  return 0;
}

void rseq_registry_dump_json(FILE *out) {
  Dl_info info;
  uintptr_t base = 0;
  if (dladdr((void *)rseq_registry_dump_json, &info) && info.dli_fbase)
    base = (uintptr_t)info.dli_fbase;
  int n = rseq_registry_count();
  fprintf(out, "{\"variant\": \"%s\", \"stats\": %s, \"sections\": [", variant_name(),
          rseq_stats_enabled() ? "true" : "false");
  for (int i = 0; i < n; i++) {
    const struct rseq_section *s = &sorted[i];
    struct rseq_section_counters c;
    rseq_section_counters_get(s->id, &c);
    fprintf(out,
            "%s\n  {\"name\": \"%s\", \"id\": %d, \"start_offset\": \"0x%lx\", "
            "\"post_commit_offset\": %lu, \"abort_offset\": \"0x%lx\", \"inject_points\": [",
            i ? "," : "", s->name, s->id, (unsigned long)(s->start_ip - base),
            (unsigned long)(s->post_commit_ip - s->start_ip), (unsigned long)(s->abort_ip - base));
    uint32_t points = rseq_inject_points_of(s->id);
    int first = 1;
    for (int p = 1; p <= RSEQ_INJECT_POINTS; p++) {
      if (points & (1u << p)) {
        fprintf(out, "%s%d", first ? "" : ", ", p);
        first = 0;
      }
    }
    fprintf(out, "], \"entered\": %lu, \"committed\": %lu, \"aborted\": %lu, \"cmpfail\": %lu}",
            (unsigned long)c.entered, (unsigned long)c.committed, (unsigned long)c.aborted,
            (unsigned long)c.cmpfail);
  }
  fprintf(out, "\n]}\n");
}

// ---------------------------------------------------------------------------------
// Delay injection.

#ifdef RSEQ_INJECT
volatile uint32_t rseq_inject_loops[RSEQ_INJECT_POINTS + 1];

// Written by the harness before or while workers run; read with relaxed loads since
// any recent value is fine for a delay.
static _Atomic int block_kind;
static _Atomic uint32_t block_every;
static __thread uint32_t block_counter;

int rseq_inject_set_loops(int point, uint32_t loops) {
  if (point < 1 || point > RSEQ_INJECT_POINTS) {
    errno = EINVAL;
    return -1;
  }
  __atomic_store_n(&rseq_inject_loops[point], loops, __ATOMIC_RELAXED);
  return 0;
}

int rseq_inject_set_blocking(enum rseq_inject_block kind, uint32_t every) {
  if ((unsigned)kind > RSEQ_BLOCK_RAISE) {
    errno = EINVAL;
    return -1;
  }
  atomic_store_explicit(&block_kind, kind, memory_order_relaxed);
  atomic_store_explicit(&block_every, every, memory_order_relaxed);
  return 0;
}

bool rseq_inject_enabled(void) {
  return true;
}

void rseq_inject_block_maybe(void) {
  uint32_t every = atomic_load_explicit(&block_every, memory_order_relaxed);
  if (every == 0 || ++block_counter % every != 0) return;
  switch (atomic_load_explicit(&block_kind, memory_order_relaxed)) {
    case RSEQ_BLOCK_SLEEP: {
      struct timespec ts = {0, 1000 * 1000};
      nanosleep(&ts, NULL);
      break;
    }
    case RSEQ_BLOCK_YIELD:
      sched_yield();
      break;
    case RSEQ_BLOCK_RAISE:
      raise(SIGUSR1);
      break;
    default:
      break;
  }
}
#else
int rseq_inject_set_loops(int point, uint32_t loops) {
  (void)point;
  (void)loops;
  errno = ENOTSUP;
  return -1;
}

int rseq_inject_set_blocking(enum rseq_inject_block kind, uint32_t every) {
  (void)kind;
  (void)every;
  errno = ENOTSUP;
  return -1;
}

bool rseq_inject_enabled(void) {
  return false;
}
#endif
