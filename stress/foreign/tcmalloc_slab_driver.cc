// tcmalloc_slab_driver.cc: a driver of our own for tcmalloc's per-CPU slab
// (TcmallocSlab, tcmalloc/internal/percpu_tcmalloc.h: code we did not write and do not
// keep here), so that abortscan --object and chaos can be pointed at its rseq
// sections. Not part of the Bazel build: the README ("tcmalloc's per-CPU slab") gives
// the commands that build it against a tcmalloc checkout and Debian's libabsl-dev.
// tcmalloc registers rseq itself: run it with GLIBC_TUNABLES=glibc.pthread.rseq=0.
//
//   tcmalloc_slab_driver scan [OPS]
//       One thread, pinned to the CPU it starts on: OPS (default 2000) seeded Push,
//       Pop, PushBatch and PopBatch calls on 3 size classes of capacity 8, each result
//       checked against a model (a LIFO stack per class). stdout is the same on every
//       run (no addresses, no timing): what abortscan compares.
//   tcmalloc_slab_driver stress THREADS SECONDS
//       THREADS threads on any CPU push objects of their own and pop whatever their
//       CPU's slab holds, for SECONDS. Each object carries its class and a state word
//       (held by a thread, or in a slab) that every push and pop moves with an
//       exchange: an object popped twice, popped from the wrong class or lost fails
//       the run. At the end every CPU's slab is drained and every object accounted
//       for. stdout: the object count and PASS; stderr: the operation counts.
// Exit status: 0 pass, 1 a check failed (the failure on stderr), 2 bad usage or no
// rseq.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#include "tcmalloc/internal/percpu.h"
#include "tcmalloc/internal/percpu_tcmalloc.h"
#include "tcmalloc/internal/sysinfo.h"

using tcmalloc::tcmalloc_internal::NumCPUs;
using namespace tcmalloc::tcmalloc_internal::subtle::percpu;

namespace {

constexpr size_t kClasses = 4;  // class 0 unused, as in tcmalloc
constexpr size_t kCap = 8;
constexpr size_t kShift = 18;
TcmallocSlab<kClasses> slab;

[[noreturn]] void fail(const char *what, long op) {
  std::fprintf(stderr, "tcmalloc_slab_driver: FAIL at op %ld: %s\n", op, what);
  std::exit(1);
}

uint64_t next_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

void *alloc(size_t size, std::align_val_t align) { return ::operator new(size, align); }

void init_slab() {
  void *slabs = alloc(GetSlabsAllocSize(ToShiftType(kShift), NumCPUs()),
                      SlabAlignment(ToShiftType(kShift)));
  slab.Init(alloc, slabs, [](size_t cl) { return cl ? kCap : 0; }, ToShiftType(kShift));
  for (int cpu = 0; cpu < NumCPUs(); cpu++) {
    slab.InitCpu(cpu, [](size_t cl) { return cl ? kCap : 0; });
    for (size_t cl = 1; cl < kClasses; cl++)
      slab.GrowOtherCache(cpu, cl, kCap, [](uint8_t) { return kCap; });
  }
}

// A push or pop that tcmalloc refused because the thread's slab is not cached (after
// any preemption or migration: the kernel's write of cpu_id_start uncaches it) is
// retried after CacheCpuSlab. Counted, on stderr only: the count varies run to run.
long recached;
// How many times one call is retried so. A section stopped inside (a preemption, a
// signal, a debugger's breakpoint) finds its slab uncached when it resumes, so under
// abortscan's first pass, with a one-shot breakpoint on every instruction, a call is
// refused once per instruction of its section before it goes through.
constexpr int kRetries = 64;

void recache() {
  recached++;
  slab.CacheCpuSlab();
}

int scan(long ops) {
  int cpu = sched_getcpu();
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) return 2;
  init_slab();
  slab.CacheCpuSlab();
  // Objects: 3 classes x 64 each; the model: each class's stack of object numbers.
  static long objs[kClasses][64];
  std::vector<int> model[kClasses], spare[kClasses];
  for (size_t cl = 1; cl < kClasses; cl++)
    for (int i = 63; i >= 0; i--) spare[cl].push_back(i);
  uint64_t seed = 0x9E3779B97F4A7C15ull, sum = 0;
  long pushes = 0, pops = 0, overflows = 0, underflows = 0;
  auto index_of = [&](size_t cl, void *p) -> int {
    long *q = static_cast<long *>(p);
    if (q < objs[cl] || q >= objs[cl] + 64) return -1;
    return static_cast<int>(q - objs[cl]);
  };
  for (long op = 0; op < ops; op++) {
    uint64_t r = next_rand(&seed);
    size_t cl = 1 + r % 3, n = 1 + (r >> 8) % 4;
    switch ((r >> 4) % 4) {
      case 0: {  // Push one
        int o = spare[cl].back();
        bool want = model[cl].size() < kCap;
        bool ok = slab.Push(cl, &objs[cl][o]);
        for (int tries = 0; !ok && want && tries < kRetries; tries++) {
          recache();
          ok = slab.Push(cl, &objs[cl][o]);
        }
        if (ok != want) fail(want ? "Push refused below capacity" : "Push past capacity", op);
        if (ok) {
          spare[cl].pop_back();
          model[cl].push_back(o);
          pushes++;
        } else {
          overflows++;
        }
        break;
      }
      case 1: {  // Pop one
        void *p = slab.Pop(cl);
        for (int tries = 0; !p && !model[cl].empty() && tries < kRetries; tries++) {
          recache();
          p = slab.Pop(cl);
        }
        if (model[cl].empty()) {
          if (p) fail("Pop of an empty class returned an object", op);
          underflows++;
          break;
        }
        if (!p) fail("Pop of a non-empty class returned nothing", op);
        if (index_of(cl, p) != model[cl].back()) fail("Pop returned another object than the last pushed", op);
        sum = sum * 31 + static_cast<uint64_t>(model[cl].back());
        spare[cl].push_back(model[cl].back());
        model[cl].pop_back();
        pops++;
        break;
      }
      case 2: {  // PushBatch of n
        size_t room = kCap - model[cl].size(), want = n < room ? n : room;
        void *batch[4];
        std::vector<int> taken(spare[cl].end() - n, spare[cl].end());
        for (size_t i = 0; i < n; i++) batch[i] = &objs[cl][taken[i]];
        size_t got = slab.PushBatch(cl, batch, n);
        for (int tries = 0; got == 0 && want > 0 && tries < kRetries; tries++) {
          recache();
          got = slab.PushBatch(cl, batch, n);
        }
        if (got != want) fail("PushBatch pushed another count than the room", op);
        // Pushed: the last `got` of the batch, from the end (batch[n - 1] first); what
        // is left stays at the start of the array.
        for (size_t i = n; i-- > n - got;) {
          model[cl].push_back(taken[i]);
          spare[cl].erase(std::find(spare[cl].begin(), spare[cl].end(), taken[i]));
        }
        for (size_t i = 0; i < n - got; i++)
          if (batch[i] != &objs[cl][taken[i]]) fail("PushBatch changed an item it did not push", op);
        pushes += static_cast<long>(got);
        break;
      }
      default: {  // PopBatch of up to n
        size_t want = n < model[cl].size() ? n : model[cl].size();
        void *batch[4] = {};
        size_t got = slab.PopBatch(cl, batch, n);
        for (int tries = 0; got == 0 && want > 0 && tries < kRetries; tries++) {
          recache();
          got = slab.PopBatch(cl, batch, n);
        }
        if (got != want) fail("PopBatch popped another count than the class holds", op);
        // The batch holds the top `got` objects, the top first.
        for (size_t i = 0; i < got; i++) {
          int o = model[cl][model[cl].size() - 1 - i];
          if (index_of(cl, batch[i]) != o) fail("PopBatch returned other objects than the top ones", op);
        }
        for (size_t i = 0; i < got; i++) {
          sum = sum * 31 + static_cast<uint64_t>(model[cl].back());
          spare[cl].push_back(model[cl].back());
          model[cl].pop_back();
        }
        pops += static_cast<long>(got);
        break;
      }
    }
  }
  for (size_t cl = 1; cl < kClasses; cl++)
    if (slab.Length(cpu, cl) != model[cl].size()) fail("Length differs from the model", ops);
  std::printf("ops %ld pushed %ld popped %ld overflows %ld underflows %ld checksum %016llx\n",
              ops, pushes, pops, overflows, underflows, static_cast<unsigned long long>(sum));
  std::printf("PASS\n");
  std::fprintf(stderr, "tcmalloc_slab_driver: %ld pushes or pops retried after CacheCpuSlab\n",
               recached);
  return 0;
}

// stress: objects with their class and state.
enum : int { kHeld = 0, kInSlab = 1 };
struct Obj {
  std::atomic<int> state{kHeld};
  size_t cl = 0;
};

std::atomic<bool> stop{false};
std::atomic<long> ops_done{0}, recaches{0};

void worker(std::vector<Obj *> mine, uint64_t seed, std::vector<Obj *> *out) {
  // tcmalloc registers each thread's rseq area on its first use (IsFast).
  if (!IsFast()) fail("a thread could not register rseq", 0);
  long ops = 0, rc = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    uint64_t r = next_rand(&seed);
    size_t cl = 1 + r % 3;
    bool push = (r >> 4) & 1;
    if (push) {
      // An object of this class that we hold (scan a few from the back).
      Obj *o = nullptr;
      for (size_t k = mine.size(), seen = 0; k > 0 && seen < 8; k--, seen++)
        if (mine[k - 1]->cl == cl) {
          o = mine[k - 1];
          mine.erase(mine.begin() + static_cast<long>(k - 1));
          break;
        }
      if (!o) continue;
      // In the slab from before the push: once pushed, another thread may pop it.
      if (o->state.exchange(kInSlab, std::memory_order_acq_rel) != kHeld) fail("pushed an object not held", ops);
      if (!slab.Push(cl, o)) {
        if (o->state.exchange(kHeld, std::memory_order_acq_rel) != kInSlab)
          fail("an object whose push failed was taken meanwhile", ops);
        mine.push_back(o);
        rc++;
        slab.CacheCpuSlab();  // uncached, or full: either way, go on
      }
    } else {
      Obj *o = static_cast<Obj *>(slab.Pop(cl));
      if (!o) {
        rc++;
        slab.CacheCpuSlab();
        continue;
      }
      if (o->cl != cl) fail("Pop returned an object of another class", ops);
      if (o->state.exchange(kHeld, std::memory_order_acq_rel) != kInSlab)
        fail("Pop returned an object that was not in a slab (popped twice, or pushed never)", ops);
      mine.push_back(o);
    }
    ops++;
  }
  ops_done.fetch_add(ops, std::memory_order_relaxed);
  recaches.fetch_add(rc, std::memory_order_relaxed);
  *out = std::move(mine);
}

int stress(int threads, double seconds) {
  init_slab();
  const int per_thread = 48;
  std::vector<Obj> objs(static_cast<size_t>(threads) * per_thread);
  for (size_t i = 0; i < objs.size(); i++) objs[i].cl = 1 + i % 3;
  std::vector<std::thread> th;
  std::vector<std::vector<Obj *>> held(static_cast<size_t>(threads));
  for (int t = 0; t < threads; t++) {
    std::vector<Obj *> mine;
    for (int i = 0; i < per_thread; i++) mine.push_back(&objs[static_cast<size_t>(t) * per_thread + i]);
    th.emplace_back(worker, std::move(mine), 0x1234567ull * (t + 1), &held[static_cast<size_t>(t)]);
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true, std::memory_order_relaxed);
  for (auto &t : th) t.join();
  size_t in_threads = 0, drained = 0;
  for (auto &h : held) {
    in_threads += h.size();
    for (Obj *o : h)
      if (o->state.load(std::memory_order_relaxed) != kHeld) fail("a thread holds an object marked in a slab", -1);
  }
  for (int cpu = 0; cpu < NumCPUs(); cpu++)
    slab.Drain(cpu, [&](int, size_t cl, void **batch, size_t n, size_t) {
      for (size_t i = 0; i < n; i++) {
        Obj *o = static_cast<Obj *>(batch[i]);
        if (o->cl != cl) fail("Drain returned an object under another class", -1);
        if (o->state.exchange(kHeld, std::memory_order_relaxed) != kInSlab)
          fail("Drain returned an object not in a slab (or twice)", -1);
        drained++;
      }
    });
  if (in_threads + drained != objs.size()) {
    std::fprintf(stderr, "tcmalloc_slab_driver: %zu objects held, %zu drained, of %zu\n", in_threads,
                 drained, objs.size());
    fail("objects lost or duplicated", -1);
  }
  std::printf("objects %zu, every one accounted for\nPASS\n", objs.size());
  std::fprintf(stderr, "tcmalloc_slab_driver: %ld operations, %ld refused (uncached or full), %zu drained\n",
               ops_done.load(), recaches.load(), drained);
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  if (!IsFast()) {
    std::fprintf(stderr, "tcmalloc_slab_driver: tcmalloc could not register rseq (glibc registered "
                         "it first: run with GLIBC_TUNABLES=glibc.pthread.rseq=0)\n");
    return 2;
  }
  if (argc >= 2 && !std::strcmp(argv[1], "scan")) return scan(argc > 2 ? std::atol(argv[2]) : 2000);
  if (argc == 4 && !std::strcmp(argv[1], "stress")) return stress(std::atoi(argv[2]), std::atof(argv[3]));
  std::fprintf(stderr, "usage: %s scan [OPS] | stress THREADS SECONDS\n", argv[0]);
  return 2;
}
