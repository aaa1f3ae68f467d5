// rseq.c: registration, availability, the current index, fake CPUs.
#include "rseq/rseq.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

// glibc >= 2.35 exports these from ld.so when it registered rseq itself. Weak, so
// that the library also links and runs against a libc without them.
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

// How the process gets its areas, decided once by probe().
enum process_state {
  STATE_UNKNOWN = 0,
  STATE_GLIBC,        // glibc registered every thread: use its area
  STATE_SELF,         // we register each thread on first use
  STATE_UNAVAILABLE,  // no rseq; `unavailable_reason` says why
};

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
// Written once inside pthread_once, read after it (pthread_once orders them).
static enum process_state process_state;
static const char *unavailable_reason = "";
static char unavailable_reason_buf[160];
static pthread_key_t exit_key;

// Initial-exec TLS: the preloaded malloc may run this before the thread is fully set
// up, and a dynamic TLS access could itself call malloc.
#define RSEQ_TLS __thread __attribute__((tls_model("initial-exec")))

// Our own area, used only in STATE_SELF. cpu_id starts as "unregistered".
static RSEQ_TLS struct rseq_abi self_area = {.cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED};
// The thread's area once set up (NULL before); read by the inline fast paths in rseq.h.
RSEQ_TLS struct rseq_abi *rseq_tls_area_;
#define thread_area rseq_tls_area_
int rseq_index_limit_;
static RSEQ_TLS enum rseq_owner thread_owner;
static RSEQ_TLS enum rseq_owner owner_before_fake;
// Fake-CPU mode: the fake CPU, and the one to move to after the next index read
// (-1: none pending).
static RSEQ_TLS int fake_cpu;
static RSEQ_TLS int fake_migrate_to = -1;

// Relaxed: these are statistics for tests, read after the threads were joined.
static _Atomic uint64_t self_registered, self_unregistered;

int rseq_syscall(struct rseq_abi *area, uint32_t len, int flags, uint32_t sig) {
  return (int)syscall(RSEQ_SYSCALL_NR, area, len, flags, sig);
}

static struct rseq_abi *glibc_area(void) {
  return (struct rseq_abi *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

// The length glibc registered with: 32 (the original area) on 2.35-2.39, where
// __rseq_size reads 20; the feature size, rounded up to 32, on later releases.
static uint32_t glibc_registered_len(void) {
  uint32_t n = __rseq_size;
  return n <= 32 ? 32 : (n + 31) & ~31u;
}

// Not instrumented: a key destructor that allocates after this one ran registers the
// thread again, which sets the key again, so this can run in the last destructor round,
// after TSan has finished the thread (its function-entry hook crashed there; found by
// allocator/thread_exit_test_self_rseq under --config=tsan).
#if defined(__clang__)
__attribute__((disable_sanitizer_instrumentation))
#endif
static void unregister_at_exit(void *arg) {
  (void)arg;
  if (thread_owner != RSEQ_OWNER_SELF) return;
  if (syscall(RSEQ_SYSCALL_NR, &self_area, sizeof self_area, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0) {
    atomic_fetch_add_explicit(&self_unregistered, 1, memory_order_relaxed);
  }
  thread_owner = RSEQ_OWNER_NONE;
  thread_area = NULL;
}

static int register_self(void) {
  if (rseq_syscall(&self_area, sizeof self_area, 0, RSEQ_SIG) != 0) return -1;
  atomic_fetch_add_explicit(&self_registered, 1, memory_order_relaxed);
  thread_owner = RSEQ_OWNER_SELF;
  thread_area = &self_area;
  // Unregister when the thread exits: the key's destructor runs while its TLS is alive.
  pthread_setspecific(exit_key, &self_area);
  return 0;
}

static void set_unavailable(const char *what, int err) {
  snprintf(unavailable_reason_buf, sizeof unavailable_reason_buf, "%s", what);
  if (err) {
    size_t n = strlen(unavailable_reason_buf);
    snprintf(unavailable_reason_buf + n, sizeof unavailable_reason_buf - n, " (%s)",
             strerrorname_np(err) ? strerrorname_np(err) : "unknown errno");
  }
  unavailable_reason = unavailable_reason_buf;
  process_state = STATE_UNAVAILABLE;
}

static void probe(void) {
  pthread_key_create(&exit_key, unregister_at_exit);
  // Relaxed: pthread_once orders it before any area is handed out by this probe.
  __atomic_store_n(&rseq_index_limit_, rseq_possible_cpus(), __ATOMIC_RELAXED);
  const char *env = getenv("CCACHE_RSEQ");
  if (env && strcmp(env, "0") == 0) {
    set_unavailable("disabled by CCACHE_RSEQ=0", 0);
    return;
  }
  if (&__rseq_size != NULL && __rseq_size > 0 &&
      (int32_t)glibc_area()->cpu_id >= 0) {
    process_state = STATE_GLIBC;
    return;
  }
  // glibc did not register (an old glibc, GLIBC_TUNABLES=glibc.pthread.rseq=0, or its
  // registration failed): register this thread ourselves, which also probes.
  if (register_self() == 0) {
    process_state = STATE_SELF;
    return;
  }
  int err = errno;
  if (err == ENOSYS)
    set_unavailable("no rseq syscall", err);
  else
    set_unavailable("rseq registration refused", err);
}

static enum process_state state(void) {
  pthread_once(&probe_once, probe);
  return process_state;
}

bool rseq_available(void) { return state() != STATE_UNAVAILABLE; }

const char *rseq_unavailable_reason(void) {
  state();
  return unavailable_reason;
}

bool rseq_mm_cid_available(void) { return getauxval(RSEQ_AT_FEATURE_SIZE) >= 28; }

static struct rseq_abi *thread_area_slow(void) {
  switch (state()) {
    case STATE_GLIBC:
      thread_owner = RSEQ_OWNER_GLIBC;
      thread_area = glibc_area();
      return thread_area;
    case STATE_SELF:
      if (register_self() == 0) return thread_area;
      return NULL;
    default:
      return NULL;
  }
}

struct rseq_abi *rseq_thread_area_slow_(void) {
  struct rseq_abi *a = thread_area;
  return a ? a : thread_area_slow();
}

enum rseq_owner rseq_thread_owner(void) {
  rseq_thread_area();
  return thread_owner;
}

int rseq_current_index_slow_(enum rseq_index index) {
  struct rseq_abi *a = rseq_thread_area();
  if (!a) {
    errno = ENOSYS;
    return -1;
  }
  if (thread_owner == RSEQ_OWNER_FAKE && fake_migrate_to >= 0) {
    // The read that rseq_fake_cpu_migrate_after_next_read() set up (the area held an
    // out-of-range value so that the inline fast path came here).
    int was = fake_cpu;
    rseq_fake_cpu_set(fake_migrate_to);  // clears fake_migrate_to
    return was;
  }
  // Relaxed: the kernel writes these fields on return to user space; we only need a
  // value that was current at some point, and the section re-checks it.
  uint32_t v = index == RSEQ_INDEX_MM_CID ? __atomic_load_n(&a->mm_cid, __ATOMIC_RELAXED)
                                          : __atomic_load_n(&a->cpu_id, __ATOMIC_RELAXED);
  if ((int32_t)v < 0 || (int)v >= rseq_index_count(index)) {
    errno = ERANGE;
    return -1;
  }
  return (int)v;
}

static int parse_possible(void) {
  int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[256];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  // "0-1", "0-3,8-11", "0": the highest number + 1.
  int max = -1;
  for (char *p = buf; *p;) {
    if (*p >= '0' && *p <= '9') {
      int v = (int)strtol(p, &p, 10);
      if (v > max) max = v;
    } else {
      p++;
    }
  }
  return max + 1;
}

int rseq_possible_cpus(void) {
  static _Atomic int cached;  // relaxed: any thread computes the same value
  int n = atomic_load_explicit(&cached, memory_order_relaxed);
  if (n > 0) return n;
  n = parse_possible();
  if (n <= 0) n = get_nprocs_conf();
  if (n <= 0) n = 1;
  atomic_store_explicit(&cached, n, memory_order_relaxed);
  return n;
}

int rseq_index_count(enum rseq_index index) {
  (void)index;  // mm_cid < min(threads, possible CPUs) <= possible CPUs
  return rseq_possible_cpus();
}

void rseq_self_registration_counts(uint64_t *registered, uint64_t *unregistered) {
  *registered = atomic_load_explicit(&self_registered, memory_order_relaxed);
  *unregistered = atomic_load_explicit(&self_unregistered, memory_order_relaxed);
}

const char *rseq_owner_name(enum rseq_owner owner) {
  switch (owner) {
    case RSEQ_OWNER_GLIBC:
      return "glibc";
    case RSEQ_OWNER_SELF:
      return "self";
    case RSEQ_OWNER_FAKE:
      return "fake";
    default:
      return "none";
  }
}

// ---------------------------------------------------------------------------------
// Fake CPUs.

int rseq_fake_cpu_enter(void) {
  struct rseq_abi *a = rseq_thread_area();
  if (!a) {
    errno = ENOSYS;
    return -1;
  }
  if (thread_owner == RSEQ_OWNER_FAKE) return 0;
  uint32_t len = thread_owner == RSEQ_OWNER_GLIBC ? glibc_registered_len() : sizeof self_area;
  if (rseq_syscall(a, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) != 0) return -1;
  if (thread_owner == RSEQ_OWNER_SELF)
    atomic_fetch_add_explicit(&self_unregistered, 1, memory_order_relaxed);
  owner_before_fake = thread_owner;
  thread_owner = RSEQ_OWNER_FAKE;
  // The area is ours now: no kernel writes it, and no section in it can abort.
  rseq_fake_cpu_set(0);
  return 0;
}

void rseq_fake_cpu_set(int cpu) {
  struct rseq_abi *a = thread_area;
  if (!a || thread_owner != RSEQ_OWNER_FAKE) {
    fprintf(stderr, "rseq_fake_cpu_set(%d): the thread is not in fake-CPU mode\n", cpu);
    abort();
  }
  fake_cpu = cpu;
  fake_migrate_to = -1;
  // Relaxed: only this thread reads its own area.
  __atomic_store_n(&a->cpu_id_start, (uint32_t)cpu, __ATOMIC_RELAXED);
  __atomic_store_n(&a->cpu_id, (uint32_t)cpu, __ATOMIC_RELAXED);
  __atomic_store_n(&a->mm_cid, (uint32_t)cpu, __ATOMIC_RELAXED);
}

void rseq_fake_cpu_migrate_after_next_read(int cpu) {
  struct rseq_abi *a = thread_area;
  if (!a || thread_owner != RSEQ_OWNER_FAKE) {
    fprintf(stderr, "rseq_fake_cpu_migrate_after_next_read(%d): not in fake-CPU mode\n", cpu);
    abort();
  }
  fake_migrate_to = cpu;
  // An index no array has: the inline fast path of rseq_current_index() takes the slow
  // path, which returns fake_cpu and moves. (A section would abort until then.)
  // Relaxed: only this thread reads its own area.
  __atomic_store_n(&a->cpu_id, (uint32_t)RSEQ_CPU_ID_UNINITIALIZED, __ATOMIC_RELAXED);
  __atomic_store_n(&a->mm_cid, (uint32_t)RSEQ_CPU_ID_UNINITIALIZED, __ATOMIC_RELAXED);
}

int rseq_fake_cpu_exit(void) {
  if (thread_owner != RSEQ_OWNER_FAKE) return 0;
  struct rseq_abi *a = thread_area;
  uint32_t len = owner_before_fake == RSEQ_OWNER_GLIBC ? glibc_registered_len() : sizeof self_area;
  __atomic_store_n(&a->rseq_cs, 0, __ATOMIC_RELAXED);
  if (rseq_syscall(a, len, 0, RSEQ_SIG) != 0) return -1;
  if (owner_before_fake == RSEQ_OWNER_SELF)
    atomic_fetch_add_explicit(&self_registered, 1, memory_order_relaxed);
  thread_owner = owner_before_fake;
  return 0;
}

// ---------------------------------------------------------------------------------
// Names and mode resolution.

const char *rseq_mode_name(enum rseq_mode mode) {
  switch (mode) {
    case RSEQ_MODE_AUTO:
      return "auto";
    case RSEQ_MODE_RSEQ:
      return "rseq";
    case RSEQ_MODE_CAS:
      return "cas";
  }
  return "invalid";
}

const char *rseq_index_name(enum rseq_index index) {
  switch (index) {
    case RSEQ_INDEX_CPU_ID:
      return "cpu_id";
    case RSEQ_INDEX_MM_CID:
      return "mm_cid";
  }
  return "invalid";
}

int rseq_mode_parse(const char *s) {
  if (!s) return -1;
  if (!strcmp(s, "auto")) return RSEQ_MODE_AUTO;
  if (!strcmp(s, "rseq")) return RSEQ_MODE_RSEQ;
  if (!strcmp(s, "cas")) return RSEQ_MODE_CAS;
  return -1;
}

int rseq_index_parse(const char *s) {
  if (!s) return -1;
  if (!strcmp(s, "cpu") || !strcmp(s, "cpu_id")) return RSEQ_INDEX_CPU_ID;
  if (!strcmp(s, "cid") || !strcmp(s, "mm_cid")) return RSEQ_INDEX_MM_CID;
  return -1;
}

const char *rseq_result_name(int result) {
  switch (result) {
    case RSEQ_COMMIT:
      return "commit";
    case RSEQ_ABORT:
      return "abort";
    case RSEQ_CMPFAIL:
      return "cmpfail";
  }
  return "invalid";
}

int rseq_resolve_mode(enum rseq_mode requested, enum rseq_index index,
                      struct rseq_percpu_mode *out, const char **why_cas) {
  const char *why = "";
  if ((unsigned)requested > RSEQ_MODE_CAS || (unsigned)index > RSEQ_INDEX_MM_CID) {
    errno = EINVAL;
    return -1;
  }
  // Probe now, in CAS mode too: the probe runs under pthread_once, which is not
  // async-signal-safe. Left to the first index read, it can run in a producer whose
  // signal handler then offers too (rings are async-signal-safe): the handler waits
  // for the once that its own thread is running, for ever (mpsc_test_cas under ASan).
  rseq_available();
  out->index = index;
  if (requested == RSEQ_MODE_CAS) {
    out->mode = RSEQ_MODE_CAS;
    why = "CAS mode requested";
  } else if (!rseq_available()) {
    why = rseq_unavailable_reason();
    if (requested == RSEQ_MODE_RSEQ) {
      if (why_cas) *why_cas = why;
      errno = ENOSYS;
      return -1;
    }
    out->mode = RSEQ_MODE_CAS;
  } else if (index == RSEQ_INDEX_MM_CID && !rseq_mm_cid_available()) {
    why = "the kernel does not maintain mm_cid (AT_RSEQ_FEATURE_SIZE < 28)";
    if (requested == RSEQ_MODE_RSEQ) {
      if (why_cas) *why_cas = why;
      errno = EOPNOTSUPP;
      return -1;
    }
    out->mode = RSEQ_MODE_CAS;
  } else {
    out->mode = RSEQ_MODE_RSEQ;
  }
  if (why_cas) *why_cas = why;
  return 0;
}
