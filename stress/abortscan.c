// abortscan: force an abort at every instruction of every critical section of a
// binary, one run per instruction, and verify the outcome.
//
//   abortscan --workload BIN [--index cpu|cid] [--json FILE] [--section NAME] [--expect-broken]
//   abortscan --workload BIN --window [--index cpu|cid] [--json FILE] [--section NAME [--offset N]]
//   abortscan --object PATH [options] -- CMD ARGS...   (any ELF: see abortscan_object.c)
//
// The sections come from the binary's registry (rseq_registry / __rseq_cs, printed by
// the workload with --list, as offsets from its load base, so PIE works). Instruction
// boundaries in [start_ip, post_commit_ip) come from capstone, reading the code from
// the ELF file. For each instruction, and for post_commit_ip itself:
//   - the workload runs under ptrace; a breakpoint at that address stops the first
//     thread that reaches it (any thread: clones are traced too); the original byte is
//     restored and the thread resumed. A ptrace stop inside a critical section makes
//     the kernel abort it when the thread returns to user space;
//   - a run that takes over 30 s is killed and reported as hung (a forced abort that
//     corrupts a list can make the workload loop for ever);
//   - checks: inside the section, the section's abort counter moved (aborted?); its
//     commit count equals the undisturbed baseline's (the retry committed exactly
//     once); the workload's own invariants hold (exit 0). At post_commit_ip: no extra
//     abort, same commits, invariants hold.
// Before the forced aborts, each section's shape is checked statically: the first
// instruction compares the CPU and jumps to abort_ip on mismatch; the last one ends
// exactly at post_commit_ip and stores to memory; every branch that leaves the section
// for anywhere but abort_ip is listed in the binary's __rseq_exit_point_array.
// Report: a table (section, offset, instruction) -> aborted?, retry committed?,
// invariants ok?, and the same as JSON. Exit 1 on any failure (or, with
// --expect-broken, 0 only when every section has at least one failing instruction:
// the self-test on deliberately broken sections).
//
// --window: the window scan, for the state a section depends on changing between the
// operation's index read and start_ip (no abort protects that stretch: a thread
// preempted there resumes without one, after other threads ran on its CPU). For every
// instruction from the entry of the function that holds the section up to start_ip
// (the index read lies there, or in the caller before it), one run: the workload runs
// with --window-actor (an actor thread on the same CPU, waiting on a pipe); the first
// time the main thread reaches the instruction while the workload has the window
// armed, it is held there, the actor is told to act (change that CPU's data: push,
// append, take blocks, drain) and, once it answers, the main thread goes on. The
// workload's invariants count the actor's changes in: they fail when a section used a
// value read before start_ip. Reported per instruction: reached?, the actor acted
// (on the main thread's index?), invariants ok. A section whose window was never
// reached, or where the actor never ran on the main thread's index, fails; so do a
// hardware breakpoint that cannot be set and a WINDOW-ACTORS name that is not in the
// registry. Exit 1 on any failure.
#include <capstone/capstone.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stress/abortscan.h"
#include "stress/rseq_elf.h"

struct section {
  char name[64];
  uint64_t start, len, abort_off;
  long base_committed;  // commits in the undisturbed run
};

static struct section sections[64];
static int nsections;
static const char *workload;
static const char *index_name = "cpu";

// Runs the workload; if bp_off != 0 forces one stop at that offset. Fills the output
// buffer with its stdout. Returns the wait status; *hit tells whether the breakpoint
// was reached.
// Where the forced stop led: 1 the thread went to the abort handler's target, 0 it
// went on normally, -1 unknown. `abort_target_off` is where the handler jumps.
static int landed_in_abort;
static uint64_t abort_target_off;

// A workload run that takes longer than this is killed and counts as hung (a forced
// abort that corrupts a list can make the workload loop for ever).
#define RUN_TIMEOUT_S 30
#define RSEQ_STR_S_(x) #x
#define RSEQ_STR_S(x) RSEQ_STR_S_(x)
static volatile sig_atomic_t hung;
static volatile pid_t running_pid;

// Window mode: the workload's abortscan_window_armed (offset from its load base), and
// what the actor did at the stop of the last run.
static bool window_mode;
static long window_only_offset = -1;  // --offset N: that function offset alone (to reproduce a row)
static uint64_t armed_off;
enum actor_reply { ACTOR_NOT_ASKED, ACTOR_ANSWERED, ACTOR_LATE };
static enum actor_reply actor_reply;
static int window_bp_errno;  // the hardware breakpoint could not be set: why
// How long a stopped main thread waits for the actor's answer. No window the workload
// arms is reached with a lock the actor needs held, so only a very loaded machine
// makes it late; then the main thread goes on, and a row whose actor found its phase
// already over fails as "did not act".
#define ACTOR_WAIT_MS 10000

static void on_alarm(int sig) {
  (void)sig;
  hung = 1;
  if (running_pid > 0) kill(running_pid, SIGKILL);
}

static int run_workload(uint64_t bp_off, bool *hit, char *out, size_t out_size, bool list) {
  int fds[2], req[2] = {-1, -1}, done[2] = {-1, -1};
  if (pipe(fds) != 0) return -1;
  if (window_mode && (pipe(req) != 0 || pipe(done) != 0)) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    if (window_mode) {  // the actor's pipes become fds 3 (requests) and 4 (answers)
      int r = dup(req[0]), w = dup(done[1]);
      close(req[0]), close(req[1]), close(done[0]), close(done[1]);
      dup2(r, 3), dup2(w, 4);
      if (r != 3 && r != 4) close(r);
      if (w != 3 && w != 4) close(w);
    }
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    // LeakSanitizer cannot run under ptrace (an ASan build of the workload would die
    // at exit); leaks are the other tests' business.
    const char *asan = getenv("ASAN_OPTIONS");
    char opts[1024];
    snprintf(opts, sizeof opts, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    execl(workload, workload, "--index", index_name, list ? "--list" : window_mode ? "--window-actor" : NULL,
          (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  if (window_mode) close(req[0]), close(done[1]);
  actor_reply = ACTOR_NOT_ASKED;
  int status;
  waitpid(pid, &status, 0);  // the exec stop
  ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL);
  uint64_t addr = 0;
  long orig = 0;
  if (bp_off) {
    // The load base: the first mapping of the workload's file.
    char maps[64], line[512], real[4096];
    snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
    if (!realpath(workload, real)) snprintf(real, sizeof real, "%s", workload);
    FILE *m = fopen(maps, "r");
    uint64_t base = 0;
    while (m && fgets(line, sizeof line, m)) {
      unsigned long lo, off;
      char path[4096] = "";
      if (sscanf(line, "%lx-%*lx %*s %lx %*s %*s %4095s", &lo, &off, path) >= 2 && off == 0 &&
          strcmp(path, real) == 0) {
        base = lo;
        break;
      }
    }
    if (m) fclose(m);
    addr = base + bp_off;
    errno = 0;
    orig = ptrace(PTRACE_PEEKTEXT, pid, addr, 0);
    if (errno || !base) {
      fprintf(stderr, "abortscan: cannot read the workload at %#lx (base %#lx)\n", (unsigned long)addr, (unsigned long)base);
      kill(pid, SIGKILL);
    } else if (window_mode) {
      // A hardware execution breakpoint (DR0), on the main thread alone (clones do not
      // inherit it). Unlike int3 it needs no single step to go on from a hit that is
      // not taken: the kernel sets the resume flag. A single step from the instruction
      // that arms rseq_cs would stop the thread at start_ip, inside the section, and
      // the abort would bring it back to the breakpoint for ever.
      window_bp_errno = 0;
      if (ptrace(PTRACE_POKEUSER, pid, offsetof(struct user, u_debugreg[0]), addr) != 0 ||
          ptrace(PTRACE_POKEUSER, pid, offsetof(struct user, u_debugreg[7]), 1L) != 0)  // L0, execute, 1 byte
        window_bp_errno = errno ? errno : EIO;
    } else {
      ptrace(PTRACE_POKETEXT, pid, addr, (orig & ~0xffL) | 0xcc);
    }
  }
  *hit = false;
  hung = 0;
  running_pid = pid;
  signal(SIGALRM, on_alarm);
  alarm(RUN_TIMEOUT_S);
  ptrace(PTRACE_CONT, pid, 0, 0);
  int result = -1;
  size_t len = 0;
  for (;;) {
    pid_t t = waitpid(-1, &status, __WALL);
    if (t < 0) break;
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      if (t == pid) result = status;
      continue;
    }
    if (!WIFSTOPPED(status)) continue;
    int sig = WSTOPSIG(status);
    if (sig == SIGTRAP && (status >> 16) == PTRACE_EVENT_CLONE) {
      ptrace(PTRACE_CONT, t, 0, 0);
      continue;
    }
    if (sig == SIGTRAP && bp_off && !*hit && window_mode && t == pid) {
      struct user_regs_struct regs;
      ptrace(PTRACE_GETREGS, t, 0, &regs);
      long dr6 = ptrace(PTRACE_PEEKUSER, t, offsetof(struct user, u_debugreg[6]), 0);
      if (regs.rip == addr && (dr6 & 1)) {
        ptrace(PTRACE_POKEUSER, t, offsetof(struct user, u_debugreg[6]), 0L);
        errno = 0;
        long armed = ptrace(PTRACE_PEEKDATA, t, addr - bp_off + armed_off, 0);
        if (errno == 0 && (int)armed) {
          // An armed phase: hold the main thread here while the actor acts.
          ptrace(PTRACE_POKEUSER, t, offsetof(struct user, u_debugreg[7]), 0L);
          *hit = true;
          struct pollfd p = {done[0], POLLIN, 0};
          char b = 'w';
          if (write(req[1], &b, 1) == 1) {
            actor_reply = ACTOR_LATE;
            if (poll(&p, 1, ACTOR_WAIT_MS) == 1 && read(done[0], &b, 1) == 1) actor_reply = ACTOR_ANSWERED;
          }
        }
        ptrace(PTRACE_CONT, t, 0, 0);  // not armed: on, past the breakpoint (resume flag)
        continue;
      }
    }
    if (sig == SIGTRAP && bp_off && !*hit) {
      struct user_regs_struct regs;
      ptrace(PTRACE_GETREGS, t, 0, &regs);
      if (regs.rip - 1 == addr) {
        // Stopped at the instruction: put it back and resume. The stop itself is what
        // makes the kernel abort the section on the way back to user space. One single
        // step shows where the thread went: an aborted section runs the abort
        // handler's jump, so the step ends at its target.
        ptrace(PTRACE_POKETEXT, t, addr, orig);
        regs.rip = addr;
        ptrace(PTRACE_SETREGS, t, 0, &regs);
        *hit = true;
        ptrace(PTRACE_SINGLESTEP, t, 0, 0);
        int st2;
        waitpid(t, &st2, __WALL);
        landed_in_abort = -1;
        if (WIFSTOPPED(st2)) {
          ptrace(PTRACE_GETREGS, t, 0, &regs);
          landed_in_abort = regs.rip == addr - bp_off + abort_target_off;
        }
        ptrace(PTRACE_CONT, t, 0, 0);
        continue;
      }
    }
    // New threads start with SIGSTOP; other signals go to the workload.
    ptrace(PTRACE_CONT, t, 0, (sig == SIGSTOP || sig == SIGTRAP) ? 0 : sig);
  }
  alarm(0);
  running_pid = 0;
  if (window_mode) close(req[1]), close(done[0]);
  for (;;) {
    ssize_t n = read(fds[0], out + len, out_size - 1 - len);
    if (n <= 0) break;
    len += (size_t)n;
    if (len >= out_size - 1) break;
  }
  out[len] = 0;
  close(fds[0]);
  return result;
}

// Section counters from the workload's "REGISTRY" JSON.
static bool counters_of(const char *out, const char *name, long *committed, long *aborted) {
  char key[96];
  snprintf(key, sizeof key, "{\"name\": \"%s\"", name);
  const char *p = strstr(out, key);
  if (!p) return false;
  const char *c = strstr(p, "\"committed\": "), *a = strstr(p, "\"aborted\": ");
  if (!c || !a) return false;
  *committed = atol(c + 13);
  *aborted = atol(a + 11);
  return true;
}

static int parse_sections(const char *out) {
  for (const char *p = strstr(out, "{\"name\": \""); p; p = strstr(p + 1, "{\"name\": \"")) {
    struct section *s = &sections[nsections];
    if (sscanf(p, "{\"name\": \"%63[^\"]\"", s->name) != 1) continue;
    const char *st = strstr(p, "\"start_offset\": \""), *pc = strstr(p, "\"post_commit_offset\": "),
               *ab = strstr(p, "\"abort_offset\": \"");
    if (!st || !pc || !ab) continue;
    s->start = strtoull(st + 17, NULL, 16);
    s->len = strtoull(pc + 22, NULL, 10);
    s->abort_off = strtoull(ab + 17, NULL, 16);
    if (++nsections == 64) break;
  }
  return nsections;
}

bool abortscan_writes_memory(const cs_insn *i) {
  const char *comma = strchr(i->op_str, ',');
  const char *bracket = strchr(i->op_str, '[');
  if (!bracket || (comma && bracket > comma)) return false;
  return strcmp(i->mnemonic, "cmp") && strcmp(i->mnemonic, "test") && i->mnemonic[0] != 'j';
}

// NULL when the section has the required shape, else what is wrong.
static const char *structure_problem(const cs_insn *insn, size_t count, const struct section *sec) {
  if (count < 3) return "cannot disassemble the section";
  if (strcmp(insn[0].mnemonic, "cmp") || strncmp(insn[0].op_str, "dword ptr [", 11))
    return "the first instruction at start_ip is not the CPU comparison (cmp of a 32-bit field)";
  if (strcmp(insn[1].mnemonic, "jne") || strtoull(insn[1].op_str, NULL, 16) != sec->abort_off)
    return "the CPU comparison is not followed by a jump to abort_ip";
  uint64_t end = sec->start + sec->len;
  for (size_t k = 0; k < count; k++) {
    uint64_t next = insn[k].address + insn[k].size;
    if (next < end) continue;
    if (next > end) return "post_commit_ip falls inside an instruction";
    if (!abortscan_writes_memory(&insn[k])) return "the last instruction before post_commit_ip is not a store";
    return NULL;
  }
  return "post_commit_ip is past the disassembled code";
}

// The next name on the WINDOW-ACTORS line after *p (which must start inside it; end
// is the line's end): its start, with *len set and *p moved past it; NULL at the end.
static const char *next_window_name(const char **p, const char *end, size_t *len) {
  if (*p >= end) return NULL;
  *p += strspn(*p, " ");
  *len = strcspn(*p, " \n");
  if (!*len || *p >= end) return NULL;
  const char *name = *p;
  *p += *len;
  return name;
}

// Whether the WINDOW-ACTORS line (line_len bytes) names `name` as a whole word.
static bool window_names_section(const char *line, size_t line_len, const char *name) {
  const char *p = line + strlen("WINDOW-ACTORS"), *w;
  size_t len;
  while ((w = next_window_name(&p, line + line_len, &len)))
    if (len == strlen(name) && !strncmp(w, name, len)) return true;
  return false;
}

// A failing window row: the workload's first failed invariant, and the command that
// reruns that instruction alone.
static void window_repro(const char *out, const char *section, uint64_t offset) {
  const char *f = strstr(out, "INVARIANT FAILED");
  if (f) printf("    %.*s\n", (int)(strcspn(f, "\n")), f);
  printf("    reproduce: abortscan --workload %s --window --index %s --section %s --offset %lu\n", workload, index_name,
         section, (unsigned long)offset);
}

// The window scan (--window; see the top). Returns the number of failures.
static int window_scan(struct rseq_elf *elf, csh cs, const char *baseline_out, const char *only, FILE *js) {
  static char out[1 << 20];
  const char *line = strstr(baseline_out, "WINDOW-ACTORS");
  if (!line) {
    printf("abortscan: %s names no window actors (no WINDOW-ACTORS line)\n", workload);
    return 1;
  }
  const char *eol = strchr(line, '\n');
  size_t line_len = eol ? (size_t)(eol - line) : strlen(line);
  armed_off = rseq_elf_symbol(elf, "abortscan_window_armed");
  if (!armed_off) {
    printf("abortscan: %s has no abortscan_window_armed symbol\n", workload);
    return 1;
  }
  printf("| section | function+offset | instruction | reached? | actor | invariants ok? | verdict |\n");
  printf("|---|---|---|---|---|---|---|\n");
  int bad = 0, runs = 0, first_json = 1;
  for (int s = 0; s < nsections; s++) {
    struct section *sec = &sections[s];
    if (only && strcmp(only, sec->name)) continue;
    if (!window_names_section(line, line_len, sec->name)) {
      printf("| %s | - | - | - | - | - | no window actor in the workload: not scanned |\n", sec->name);
      continue;
    }
    uint64_t fstart = rseq_elf_function_start(elf, sec->start);
    static uint8_t code[1 << 16];
    size_t n = sec->start - fstart;
    if (!fstart || n > sizeof code || rseq_elf_read(elf, fstart, code, n) != 0) {
      printf("| %s | - | - | - | - | - | FAIL: cannot read the function that holds it |\n", sec->name);
      bad++;
      continue;
    }
    char fname[160];
    rseq_elf_describe(elf, fstart, fname, sizeof fname);
    char *plus = strrchr(fname, '+');
    if (plus) *plus = 0;
    cs_insn *insn;
    size_t count = cs_disasm(cs, code, n, fstart, 0, &insn);
    if (!count || insn[count - 1].address + insn[count - 1].size != sec->start) {
      printf("| %s | %s | - | - | - | - | FAIL: the disassembly of its function does not end at start_ip |\n",
             sec->name, fname);
      if (count) cs_free(insn, count);
      bad++;
      continue;
    }
    int reached = 0, same_index = 0, not_reached = 0;
    for (size_t k = 0; k < count; k++) {
      if (window_only_offset >= 0 && insn[k].address - fstart != (uint64_t)window_only_offset) continue;
      bool hit;
      int status = run_workload(insn[k].address, &hit, out, sizeof out, false);
      runs++;
      if (window_bp_errno) {
        printf("abortscan: cannot set a hardware breakpoint in %s (PTRACE_POKEUSER of DR0/DR7): %s\n", workload,
               strerror(window_bp_errno));
        cs_free(insn, count);
        return bad + 1;
      }
      bool inv = !hung && WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(out, "INVARIANTS OK");
      long actions = -1, other = -1;
      const char *a = strstr(out, "WINDOW-ACTOR actions=");
      if (a) sscanf(a, "WINDOW-ACTOR actions=%ld other-index=%ld", &actions, &other);
      char text[96];
      snprintf(text, sizeof text, "%s %s", insn[k].mnemonic, insn[k].op_str);
      if (!hit) {
        not_reached++;
        // Not on the armed path (another branch, or code before the phase's arming):
        // counted, listed in the JSON; a failure only if the run itself failed.
        if (!inv) {
          printf("| %s | %s+%lu | `%s` | not reached | - | NO | FAIL: the run failed without a stop |\n", sec->name,
                 fname, (unsigned long)(insn[k].address - fstart), text);
          window_repro(out, sec->name, insn[k].address - fstart);
          bad++;
        }
      } else {
        reached++;
        char no_act[96];
        snprintf(no_act, sizeof no_act, "DID NOT ACT (%ld actions; %s)", actions,
                 actor_reply == ACTOR_ANSWERED ? "it answered"
                 : actor_reply == ACTOR_LATE   ? "no answer in " RSEQ_STR_S(ACTOR_WAIT_MS) " ms"
                                               : "the request could not be written");
        const char *actor = actions != 1                   ? no_act
                            : other != 0                   ? "acted, on another index"
                            : actor_reply == ACTOR_LATE    ? "acted, after the thread went on (late)"
                                                           : "acted";
        if (actions == 1 && other == 0) same_index++;
        bool ok = inv && actions == 1;
        printf("| %s | %s+%lu | `%s` | yes | %s | %s | %s |\n", sec->name, fname,
               (unsigned long)(insn[k].address - fstart), text, actor,
               hung ? "HUNG (killed after " RSEQ_STR_S(RUN_TIMEOUT_S) " s)" : inv ? "yes" : "NO", ok ? "ok" : "FAIL");
        if (!ok) {
          bad++;
          window_repro(out, sec->name, insn[k].address - fstart);
        }
      }
      if (js)
        fprintf(js,
                "%s\n {\"section\": \"%s\", \"function\": \"%s\", \"offset\": %lu, \"instruction\": \"%s\", "
                "\"reached\": %s, \"actor_acted\": %s, \"actor_same_index\": %s, \"invariants_ok\": %s}",
                first_json ? "" : ",", sec->name, fname, (unsigned long)(insn[k].address - fstart), text,
                hit ? "true" : "false", hit && actions == 1 ? "true" : "false",
                hit && actions == 1 && other == 0 ? "true" : "false", inv ? "true" : "false");
      first_json = 0;
    }
    cs_free(insn, count);
    const char *verdict = !reached      ? "FAIL: the window was never reached"
                          : !same_index ? "FAIL: the actor never ran on the stopped thread's index"
                                        : "ok";
    if (strcmp(verdict, "ok")) bad++;
    printf("| %s | %s | window of %zu instructions | %d reached, %d not | actor on the same index in %d | - | %s |\n",
           sec->name, fname, count, reached, not_reached, same_index, verdict);
    if (strcmp(verdict, "ok"))
      printf("    the rows above and the JSON (--json) list each instruction; rerun the section with: abortscan "
             "--workload %s --window --index %s --section %s\n", workload, index_name, sec->name);
  }
  // Every section the workload names must exist: a renamed one would drop out unseen.
  const char *p = line + strlen("WINDOW-ACTORS"), *w;
  size_t len;
  while ((w = next_window_name(&p, line + line_len, &len))) {
    bool found = false;
    for (int s = 0; s < nsections; s++)
      if (strlen(sections[s].name) == len && !strncmp(sections[s].name, w, len)) found = true;
    if (!found) {
      printf("abortscan: the workload names a window actor for %.*s, which is not in its registry\n", (int)len, w);
      bad++;
    }
  }
  printf("\nabortscan --window: %d runs over the windows of the actor's sections (index %s): %d failed\n", runs,
         index_name, bad);
  return bad;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
    if (!strcmp(argv[i], "--object")) return abortscan_object_main(argc, argv);
  const char *json_path = NULL, *only = NULL;
  bool expect_broken = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--workload") && i + 1 < argc) workload = argv[++i];
    else if (!strcmp(argv[i], "--index") && i + 1 < argc) index_name = argv[++i];
    else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!strcmp(argv[i], "--section") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--expect-broken")) expect_broken = true;
    else if (!strcmp(argv[i], "--window")) window_mode = true;
    else if (!strcmp(argv[i], "--offset") && i + 1 < argc) window_only_offset = atol(argv[++i]);
    else {
      fprintf(stderr, "usage: %s --workload BIN [--index cpu|cid] [--json FILE] [--section NAME] [--expect-broken]\n"
                      "       %s --workload BIN --window [--index cpu|cid] [--json FILE] [--section NAME [--offset N]]\n", argv[0], argv[0]);
      return 2;
    }
  }
  if (!workload) {
    fprintf(stderr, "abortscan: --workload is required\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);  // a workload that died: its pipes' writes fail, we go on
  static char out[1 << 20];
  bool hit;
  int status = run_workload(0, &hit, out, sizeof out, false);
  if (strstr(out, "SKIPPED")) {
    printf("%s", out);
    return 0;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !strstr(out, "INVARIANTS OK")) {
    if (!expect_broken) {
      printf("abortscan: the undisturbed workload fails (status %#x):\n%s\n", status, out);
      return 1;
    }
  }
  if (parse_sections(out) == 0) {
    printf("abortscan: no critical sections in the registry of %s\n", workload);
    return 1;
  }
  for (int s = 0; s < nsections; s++) {
    long aborted;  // not compared: the undisturbed run may be preempted inside a section
    counters_of(out, sections[s].name, &sections[s].base_committed, &aborted);
  }

  csh cs;
  if (cs_open(CS_ARCH_X86, CS_MODE_64, &cs) != CS_ERR_OK) {
    printf("abortscan: capstone failed to open\n");
    return 1;
  }
  // The workload's code and exit-point table, read from its file (stress/rseq_elf.c).
  struct rseq_elf elf;
  char elf_err[300];
  if (rseq_elf_open(workload, &elf, elf_err, sizeof elf_err) != 0) {
    printf("abortscan: cannot read the tables of %s: %s\n", workload, elf_err);
    return 1;
  }
  FILE *js = json_path ? fopen(json_path, "w") : NULL;
  if (js) fprintf(js, "{\"workload\": \"%s\", \"index\": \"%s\", \"results\": [", workload, index_name);
  if (window_mode) {
    int wbad = window_scan(&elf, cs, out, only, js);
    if (js) {
      fprintf(js, "\n]}\n");
      fclose(js);
    }
    cs_close(&cs);
    rseq_elf_close(&elf);
    return wbad ? 1 : 0;
  }
  printf("| section | offset | instruction | aborted? | retry committed once? | invariants ok? | verdict |\n");
  printf("|---|---|---|---|---|---|---|\n");
  int total = 0, bad = 0, first_json = 1;
  int broken_flagged[64] = {0};
  for (int s = 0; s < nsections; s++) {
    struct section *sec = &sections[s];
    if (only && strcmp(only, sec->name)) continue;
    if (sec->base_committed == 0) {
      printf("| %s | - | - | - | - | - | NOT EXERCISED by the workload |\n", sec->name);
      bad++;
      continue;
    }
    uint8_t code[4096];
    size_t n = rseq_elf_read_some(&elf, sec->start, code,
                                  sec->len + 16 < sizeof code ? sec->len + 16 : sizeof code);
    if (n <= sec->len) {
      printf("| %s | - | - | - | - | - | cannot read its code |\n", sec->name);
      bad++;
      continue;
    }
    // The abort handler is one jump (to the C code that counts the abort and retries).
    uint8_t handler[16];
    cs_insn *jmp;
    abort_target_off = 0;
    size_t hn = rseq_elf_read_some(&elf, sec->abort_off, handler, sizeof handler);
    if (hn > 0 && cs_disasm(cs, handler, hn, sec->abort_off, 1, &jmp) == 1) {
      if (!strcmp(jmp->mnemonic, "jmp")) abort_target_off = strtoull(jmp->op_str, NULL, 16);
      cs_free(jmp, 1);
    }
    if (!abort_target_off) {
      printf("| %s | - | - | - | - | - | its abort handler is not a jump |\n", sec->name);
      bad++;
      continue;
    }
    cs_insn *insn;
    size_t count = cs_disasm(cs, code, n, sec->start, 0, &insn);
    // The shape every section must have (DESIGN.md's discipline), read statically:
    // the first instruction compares the CPU (a 32-bit field in memory) and the next
    // jumps to abort_ip on mismatch; the last instruction inside ends exactly at
    // post_commit_ip and stores to memory (the commit).
    const char *shape = structure_problem(insn, count, sec);
    // And every branch out of the section, but to abort_ip, is a listed exit point.
    char exit_why[200];
    // Our own sections list their exits directly: no teardown stubs followed.
    if (!shape && abortscan_unlisted_exit(&elf, cs, false, insn, count, sec->start,
                                          sec->start + sec->len, sec->abort_off, exit_why,
                                          sizeof exit_why) == ABORTSCAN_EXIT_UNLISTED)
      shape = exit_why;
    if (shape) {
      printf("| %s | - | structure | - | - | - | FAIL: %s |\n", sec->name, shape);
      if (js)
        fprintf(js, "%s\n {\"section\": \"%s\", \"structure\": \"%s\", \"ok\": false}",
                first_json ? "" : ",", sec->name, shape);
      first_json = 0;
      bad++;
      broken_flagged[s] = 1;
    }
    for (size_t k = 0; k < count && insn[k].address <= sec->start + sec->len; k++) {
      uint64_t off = insn[k].address;
      bool inside = off < sec->start + sec->len;
      bool is_commit = inside && k + 1 < count && insn[k + 1].address == sec->start + sec->len;
      landed_in_abort = -1;
      status = run_workload(off, &hit, out, sizeof out, false);
      long committed = -1, aborted = -1;
      bool counted = counters_of(out, sec->name, &committed, &aborted);
      bool inv = !hung && WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(out, "INVARIANTS OK");
      // Precise: where the single step after the stop landed; the counter only confirms
      // that the C abort path ran. Not "more than the baseline": the undisturbed run can
      // itself be preempted inside this section on a loaded machine.
      bool did_abort = landed_in_abort == 1 && counted && aborted >= 1;
      bool once = counted && committed == sec->base_committed;
      bool ok = hit && inv && once && (inside ? did_abort : !did_abort);
      const char *where = !inside ? " (post-commit)" : is_commit ? " (commit)" : "";
      char text[96];
      snprintf(text, sizeof text, "%s %s%s", insn[k].mnemonic, insn[k].op_str, where);
      printf("| %s | +%lu | `%s` | %s | %s | %s | %s |\n", sec->name, (unsigned long)(off - sec->start), text,
             !hit ? "not reached" : did_abort ? "yes" : "no", once ? "yes" : "NO",
             hung ? "HUNG (killed after " RSEQ_STR_S(RUN_TIMEOUT_S) " s)" : inv ? "yes" : "NO",
             ok ? "ok" : "FAIL");
      if (js)
        fprintf(js,
                "%s\n {\"section\": \"%s\", \"offset\": %lu, \"instruction\": \"%s\", \"reached\": %s, "
                "\"aborted\": %s, \"committed_once\": %s, \"invariants_ok\": %s, \"ok\": %s}",
                first_json ? "" : ",", sec->name, (unsigned long)(off - sec->start), text,
                hit ? "true" : "false", did_abort ? "true" : "false", once ? "true" : "false",
                inv ? "true" : "false", ok ? "true" : "false");
      first_json = 0;
      total++;
      if (!ok) {
        bad++;
        broken_flagged[s] = 1;
      }
    }
    cs_free(insn, count);
  }
  if (js) {
    fprintf(js, "\n]}\n");
    fclose(js);
  }
  cs_close(&cs);
  rseq_elf_close(&elf);
  printf("\nabortscan: %d forced aborts over %d sections (index %s): %d failed\n", total, nsections,
         index_name, bad);
  if (expect_broken) {
    int unflagged = 0;
    for (int s = 0; s < nsections; s++)
      if ((!only || !strcmp(only, sections[s].name)) && !broken_flagged[s]) {
        printf("self-test: broken section %s was NOT flagged\n", sections[s].name);
        unflagged++;
      }
    printf("self-test: %s\n", unflagged ? "FAILED" : "every broken section was flagged");
    return unflagged ? 1 : 0;
  }
  return bad ? 1 : 0;
}
