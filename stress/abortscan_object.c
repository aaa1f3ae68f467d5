// abortscan --object: forced aborts in the critical sections of any ELF object, under
// any command.
//
//   abortscan --object PATH [--index cpu|cid] [--json F] [--preload] [--stdin F]
//             [--check CMD] [--max-runs N] [--seed S] [--section NAME] -- CMD ARGS...
//
// The sections come from the object's own __rseq_cs_ptr_array (stress/rseq_elf.c:
// relocations applied, so PIE executables and shared objects work; named by symbol
// and offset, and by our registry's name where the object has one). Each entry is
// checked statically: inside an executable segment; the signature word right before
// abort_ip; the last instruction before post_commit_ip a store (the commit).
//
// The command runs under ptrace, its threads and child processes traced. The object's
// load base is read from /proc/PID/maps once the object is mapped executable in the
// command's own process; until then the process is stopped at every system call, so
// an object that the loader maps late (LD_PRELOAD, dlopen) is found too. After an
// exec the search starts again.
//
// 1. Undisturbed runs until two agree (at most 5): the same exit status and stdout,
//    or the command is refused (exit 2): without that, no difference proves anything. With
//    --preload the object is put in LD_PRELOAD, and a third run without it (glibc's
//    malloc, for our allocator) must give the same output too.
// 2. A reach run: a breakpoint on every instruction of every section; each one hit
//    is removed. Sections never entered are reported "not reached".
// 3. One run per instruction of every entered section, and per post_commit_ip: a
//    breakpoint stops the first thread that gets there (a ptrace stop inside a section
//    makes the kernel abort it on the way back); the byte is restored and one single
//    step taken. The oracle, since the object has no counters of ours:
//      - inside the section, the step executed the instruction at abort_ip (it landed
//        on that instruction's successor), so the abort happened; at post_commit_ip it
//        did not;
//      - the exit status and stdout are byte-identical to the undisturbed run;
//      - --check CMD (sh -c, with ABORTSCAN_STDOUT and ABORTSCAN_STATUS set), if given,
//        exits 0.
//    An instruction whose breakpoint was never hit is "not reached", never a pass.
//    --max-runs N forces only N of them, chosen with --seed, and says so.
//    A failing point is forced again: FAIL when a rerun fails too; FLAKY (still exit 1,
//    but not pinned on that point) when two reruns pass, as when a natural abort in
//    another, broken, section spoiled the first run. A differing stdout is shown by its
//    first differing line.
// Breakpoints are planted only in the command's own process. Its forked children
// inherit them and are traced only so that a planted byte can be put back in them.
//
// Exit status: 0 every forced abort passed; 1 a failure, a flaky point, or an entry with
// a problem;
// 2 bad usage, an object without rseq tables, a command that is not deterministic,
// or an object that the command never loaded.
#include <capstone/capstone.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stress/abortscan.h"
#include "stress/rseq_elf.h"

#define RUN_TIMEOUT_S 60
#define MAX_TASKS 4096

struct breakpoint {
  uint64_t addr;  // link-time address
  uint8_t orig;
  bool hit;
};

struct run_spec {
  struct breakpoint *bps;
  int nbps;
  bool measure;             // one breakpoint: single-step after it and see where it went
  uint64_t landings[2];     // link-time addresses that mean "the abort handler ran"
  bool preload;
  uint64_t counter;         // our registry's aborted counter of the section; 0: none
};

struct run_result {
  int status;        // wait status of the command's process; -1 when none
  bool hung;
  bool mapped;       // the object was found mapped in the command's process
  int landed;        // measure: 1 the abort handler ran, 0 it did not, -1 unknown
  long our_aborted;  // spec->counter's value when the process exited; -1 unread
  long aborted_at_stop;  // its value at the forced stop; -1 unread
  char out[4096];    // files holding stdout and stderr
  char err[4096];
};

static struct rseq_elf elf;
static char object_real[4096];
static char **command;
static const char *stdin_path = "/dev/null";
static const char *index_name;
static char tmpdir[64];

static volatile sig_atomic_t hung_flag;
static volatile pid_t running_pgid;

static void on_alarm(int sig) {
  (void)sig;
  hung_flag = 1;
  if (running_pgid > 0) kill(-running_pgid, SIGKILL);
}

// The tasks that share the command's address space (its threads, and vfork
// children until they exec): the ones whose breakpoints we own.
static pid_t own[MAX_TASKS];
static int nown;

static bool is_own(pid_t t) {
  for (int i = 0; i < nown; i++)
    if (own[i] == t) return true;
  return false;
}

static void add_own(pid_t t) {
  if (!is_own(t) && nown < MAX_TASKS) own[nown++] = t;
}

static void drop_own(pid_t t) {
  for (int i = 0; i < nown; i++)
    if (own[i] == t) own[i] = own[--nown];
}

// The object's load base in pid, once every breakpoint address is mapped executable
// from the object's file; 0 until then.
static uint64_t find_base(pid_t pid, const struct run_spec *spec, bool *mapped) {
  char maps[64], line[4096 + 256];
  snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
  FILE *m = fopen(maps, "r");
  if (!m) return 0;
  struct range {
    uint64_t lo, hi;
  } exec[64];
  int nexec = 0;
  uint64_t base = 0;
  bool have_base = false;
  while (fgets(line, sizeof line, m)) {
    unsigned long lo, hi, off;
    char perms[8], path[4096] = "";
    if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %4095s", &lo, &hi, perms, &off, path) < 4) continue;
    if (strcmp(path, object_real)) continue;
    if (off == 0 && !have_base) {
      base = lo - rseq_elf_first_page(&elf);
      have_base = true;
    }
    if (perms[2] == 'x' && nexec < 64) exec[nexec++] = (struct range){lo, hi};
  }
  fclose(m);
  if (!have_base || nexec == 0) return 0;
  *mapped = true;
  for (int i = 0; i < spec->nbps; i++) {
    uint64_t a = base + spec->bps[i].addr;
    bool in = false;
    for (int k = 0; k < nexec && !in; k++) in = a >= exec[k].lo && a < exec[k].hi;
    if (!in) return 0;
  }
  return base ? base : 1;  // a non-PIE executable's base is 0: 1 marks "found"
}

static int poke_byte(pid_t t, uint64_t addr, uint8_t byte, uint8_t *old) {
  errno = 0;
  long w = ptrace(PTRACE_PEEKTEXT, t, addr, 0);
  if (errno) return -1;
  if (old) *old = (uint8_t)w;
  w = (w & ~0xffL) | byte;
  return ptrace(PTRACE_POKETEXT, t, addr, w) == 0 ? 0 : -1;
}

// Plants every breakpoint once the object is mapped; returns the load base (1 for a
// base of 0: a non-PIE executable, whose addresses are absolute), or 0 when not yet.
// `stopped` is the task that is stopped now (a thread of pid, or pid itself): ptrace
// writes only through a stopped task. A failed write undoes the others and returns 0,
// so that a later stop tries again.
static uint64_t try_plant(pid_t pid, pid_t stopped, const struct run_spec *spec,
                          struct run_result *r) {
  uint64_t b = find_base(pid, spec, &r->mapped);
  if (!b) return 0;
  uint64_t base = b == 1 ? 0 : b;
  for (int i = 0; i < spec->nbps; i++)
    if (poke_byte(stopped, base + spec->bps[i].addr, 0xcc, &spec->bps[i].orig) != 0) {
      while (i-- > 0) poke_byte(stopped, base + spec->bps[i].addr, spec->bps[i].orig, NULL);
      return 0;
    }
  return b;
}

static void write_env(bool preload) {
  if (index_name) {
    setenv("CCACHE_INDEX", index_name, 1);
    setenv("ABORTSCAN_INDEX", index_name, 1);
  }
  if (preload) {
    const char *old = getenv("LD_PRELOAD");
    char v[8192];
    snprintf(v, sizeof v, "%s%s%s", object_real, old && *old ? ":" : "", old ? old : "");
    setenv("LD_PRELOAD", v, 1);
  } else {
    unsetenv("LD_PRELOAD");
  }
}

// Runs the command once under ptrace with spec's breakpoints.
static void run_traced(const struct run_spec *spec, struct run_result *r) {
  static int serial;
  memset(r, 0, sizeof *r);
  r->status = -1;
  r->landed = -1;
  r->our_aborted = -1;
  r->aborted_at_stop = -1;
  snprintf(r->out, sizeof r->out, "%s/out.%d", tmpdir, serial);
  snprintf(r->err, sizeof r->err, "%s/err.%d", tmpdir, serial++);
  for (int i = 0; i < spec->nbps; i++) spec->bps[i].hit = false;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return;
  if (pid == 0) {
    setpgid(0, 0);
    int in = open(stdin_path, O_RDONLY);
    int out = open(r->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(r->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) _exit(126);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    write_env(spec->preload);
    // LeakSanitizer cannot run under ptrace: an ASan-built command would fail at exit,
    // every run alike, and hide every difference.
    const char *asan = getenv("ASAN_OPTIONS");
    char opts[1024];
    snprintf(opts, sizeof opts, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    execvp(command[0], command);
    dprintf(2, "abortscan: cannot run %s: %m\n", command[0]);
    _exit(127);
  }
  setpgid(pid, pid);
  int status;
  if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) {  // the exec stop
    r->status = status;
    return;
  }
  ptrace(PTRACE_SETOPTIONS, pid, 0,
         PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACEEXEC |
             PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL | (spec->counter ? PTRACE_O_TRACEEXIT : 0));
  nown = 0;
  add_own(pid);
  uint64_t base = 0;  // 0: not planted yet
  bool measured = false;
  hung_flag = 0;
  running_pgid = pid;
  signal(SIGALRM, on_alarm);
  alarm(RUN_TIMEOUT_S);
  base = try_plant(pid, pid, spec, r);  // the object may be the executable itself
  pid_t t = pid;
  int resume_sig = 0;
  for (;;) {
    // Resume t: stopped at every system call while the breakpoints wait for the
    // object to be mapped in our process.
    if (t > 0) ptrace(is_own(t) && !base ? PTRACE_SYSCALL : PTRACE_CONT, t, 0, resume_sig);
    resume_sig = 0;
    t = waitpid(-1, &status, __WALL);
    if (t < 0) break;
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      if (t == pid) r->status = status;
      drop_own(t);
      t = 0;
      continue;
    }
    if (!WIFSTOPPED(status)) {
      t = 0;
      continue;
    }
    int sig = WSTOPSIG(status), event = status >> 16;
    if (sig == (SIGTRAP | 0x80) || (sig == SIGTRAP && event == PTRACE_EVENT_EXEC)) {
      if (sig == SIGTRAP && event == PTRACE_EVENT_EXEC) {
        if (t == pid) {  // a new image: nothing planted in it
          nown = 0;
          add_own(pid);
          base = 0;
        } else {
          drop_own(t);
        }
      }
      if (!base && is_own(t)) base = try_plant(pid, t, spec, r);
      continue;
    }
    if (sig == SIGTRAP && event == PTRACE_EVENT_EXIT) {
      if (t == pid && base) {  // the process is exiting: its memory is still there
        errno = 0;
        long v = ptrace(PTRACE_PEEKDATA, t, (base == 1 ? 0 : base) + spec->counter, 0);
        if (!errno) r->our_aborted = v;
      }
      continue;
    }
    if (sig == SIGTRAP && event) {
      unsigned long child = 0;
      ptrace(PTRACE_GETEVENTMSG, t, 0, &child);
      if (is_own(t) && (event == PTRACE_EVENT_CLONE || event == PTRACE_EVENT_VFORK))
        add_own((pid_t)child);  // a thread, or a vfork child: our address space
      continue;
    }
    if (sig == SIGTRAP && base) {
      struct user_regs_struct regs;
      ptrace(PTRACE_GETREGS, t, 0, &regs);
      uint64_t b = base == 1 ? 0 : base;
      int k = -1;
      for (int i = 0; i < spec->nbps && k < 0; i++)
        if (regs.rip - 1 == b + spec->bps[i].addr) k = i;
      if (k >= 0) {
        // Put the byte back (in t's address space: a forked child has its own copy)
        // and go back over the instruction. The stop itself aborts a section.
        poke_byte(t, b + spec->bps[k].addr, spec->bps[k].orig, NULL);
        regs.rip--;
        ptrace(PTRACE_SETREGS, t, 0, &regs);
        if (is_own(t)) {
          spec->bps[k].hit = true;
          if (spec->measure && !measured) {
            measured = true;
            // Our registry's count before the forced abort is handled (it runs after
            // the resume), so that the exit value can prove this abort was counted.
            if (spec->counter) {
              errno = 0;
              long v = ptrace(PTRACE_PEEKDATA, t, b + spec->counter, 0);
              r->aborted_at_stop = errno ? -1 : v;
            }
            // One step. A stop for a signal before the step ran (SIGCHLD, a timer) is
            // kept for the command and the step tried again, a few times at most.
            for (int tries = 0; tries < 8; tries++) {
              ptrace(PTRACE_SINGLESTEP, t, 0, 0);
              int st2;
              if (waitpid(t, &st2, __WALL) != t || !WIFSTOPPED(st2)) {
                if (t == pid) r->status = st2;  // it died in the step
                drop_own(t);
                t = 0;
                break;
              }
              if (WSTOPSIG(st2) == SIGTRAP && (st2 >> 16) == 0) {
                ptrace(PTRACE_GETREGS, t, 0, &regs);
                r->landed = regs.rip == b + spec->landings[0] || regs.rip == b + spec->landings[1];
                break;
              }
              if (WSTOPSIG(st2) != SIGTRAP) resume_sig = WSTOPSIG(st2);
            }
          }
        }
        continue;
      }
    }
    // The first stop of a new task is a SIGSTOP; other signals belong to the command.
    if (sig != SIGSTOP) resume_sig = sig;
  }
  alarm(0);
  running_pgid = 0;
  r->hung = hung_flag;
}

static bool same_file(const char *a, const char *b) {
  FILE *x = fopen(a, "rb"), *y = fopen(b, "rb");
  bool same = x && y;
  while (same) {
    int c = fgetc(x), d = fgetc(y);
    if (c != d) same = false;
    if (c == EOF) break;
  }
  if (x) fclose(x);
  if (y) fclose(y);
  return same;
}

static void show_file(const char *path, int max_lines) {
  FILE *f = fopen(path, "r");
  char line[512];
  for (int n = 0; f && n < max_lines && fgets(line, sizeof line, f); n++) printf("    %s", line);
  if (f) fclose(f);
}

static const char *check_cmd;

static bool user_check(const struct run_result *r) {
  if (!check_cmd) return true;
  char st[32];
  snprintf(st, sizeof st, "%d", WIFEXITED(r->status) ? WEXITSTATUS(r->status) : 128 + WTERMSIG(r->status));
  setenv("ABORTSCAN_STDOUT", r->out, 1);
  setenv("ABORTSCAN_STATUS", st, 1);
  int rc = system(check_cmd);
  return rc == 0;
}

struct target {
  int section;
  uint64_t addr;
  bool post_commit;
  char text[112];
};

static bool exit_listed(const struct rseq_elf *e, uint64_t start, uint64_t target) {
  for (int x = 0; x < e->nexits; x++)
    if (e->exits[x].start == start && e->exits[x].exit == target) return true;
  return false;
}

// A branch's target when its operand is an address, or 0 (an indirect branch: a
// register or memory operand, whose target cannot be read from the code).
static uint64_t direct_target(const cs_insn *i) {
  char *tail;
  uint64_t target = strtoull(i->op_str, &tail, 16);
  return *tail || tail == i->op_str ? 0 : target;
}

// The direct jump's target, or 0 when the instruction is not `jmp <address>`.
static uint64_t direct_jmp_target(const cs_insn *i) {
  return strcmp(i->mnemonic, "jmp") ? 0 : direct_target(i);
}

// Where the teardown stub at `at` jumps (see abortscan.h), or 0 when the code there is
// not one; *n gets its length in instructions before the jump.
static uint64_t stub_exit(const struct rseq_elf *e, csh cs, uint64_t at, size_t *n) {
  static const char *const register_only[] = {"mov", "movzx", "movsx", "movsxd", "lea", "xor",
                                              "and", "or", "add", "sub", "nop", "endbr64"};
  uint8_t code[9 * 15];
  size_t bytes = rseq_elf_read_some(e, at, code, sizeof code);
  cs_insn *insn = NULL;
  size_t count = bytes ? cs_disasm(cs, code, bytes, at, 9, &insn) : 0;
  uint64_t exit = 0;
  for (size_t k = 0; k < count; k++) {
    if ((exit = direct_jmp_target(&insn[k]))) {
      *n = k;
      break;
    }
    bool allowed = false;
    for (size_t a = 0; a < sizeof register_only / sizeof *register_only && !allowed; a++)
      allowed = !strcmp(insn[k].mnemonic, register_only[a]);
    if (!allowed || abortscan_writes_memory(&insn[k])) break;
  }
  if (insn) cs_free(insn, count);
  return exit;
}

int abortscan_unlisted_exit(const struct rseq_elf *e, csh cs, bool follow_stubs,
                            const cs_insn *insn, size_t count, uint64_t start, uint64_t end,
                            uint64_t abort_ip, char *why, size_t why_size) {
  why[0] = 0;
  int result = ABORTSCAN_EXIT_LISTED;
  for (size_t k = 0; k < count && insn[k].address < end; k++) {
    if (insn[k].mnemonic[0] != 'j' && strcmp(insn[k].mnemonic, "call")) continue;
    uint64_t target = direct_target(&insn[k]);
    if (!target) continue;  // an indirect branch: not decidable
    if ((target >= start && target < end) || target == abort_ip) continue;
    if (exit_listed(e, start, target)) continue;
    size_t n = 0;
    uint64_t via = follow_stubs && strcmp(insn[k].mnemonic, "call") ? stub_exit(e, cs, target, &n) : 0;
    if (via && exit_listed(e, start, via)) {
      if (result == ABORTSCAN_EXIT_LISTED)
        snprintf(why, why_size,
                 "`%s %s` at +%lu leaves for %#lx, a stub of %zu register-only instruction%s "
                 "that jumps to the listed exit %#lx",
                 insn[k].mnemonic, insn[k].op_str, (unsigned long)(insn[k].address - start),
                 (unsigned long)target, n, n == 1 ? "" : "s", (unsigned long)via);
      result = ABORTSCAN_EXIT_VIA_STUB;
      continue;
    }
    snprintf(why, why_size,
             "`%s %s` at +%lu leaves the section for %#lx, which __rseq_exit_point_array "
             "does not list",
             insn[k].mnemonic, insn[k].op_str, (unsigned long)(insn[k].address - start),
             (unsigned long)target);
    return ABORTSCAN_EXIT_UNLISTED;
  }
  return result;
}

// Whether a section compares a 32-bit field in memory, as every section must compare
// struct rseq's cpu_id or mm_cid: `cmp dword ptr [rdi + 4], ecx` (the kernel
// selftests' way), `cmp dword ptr fs:[r8 + 4], esi` (librseq's), `cmp dword ptr [rdx],
// r8d` (ours: a pointer to the field). A heuristic: the field's address may be
// anything, and a section may compare other 32-bit values.
static bool compares_index_field(const cs_insn *insn, size_t count, uint64_t end) {
  for (size_t k = 0; k < count && insn[k].address < end; k++)
    if (!strcmp(insn[k].mnemonic, "cmp") && strstr(insn[k].op_str, "dword ptr ")) return true;
  return false;
}

static uint64_t (*landing)[2];  // per section: where one step from abort_ip lands

struct forced_result {
  bool reached, did_abort, same;
  const char *verdict;  // a string literal (the caller may point it at its FLAKY text)
  char counted[48];
};

// Prints the first line where got differs from want (the undisturbed run's stdout).
static void show_first_difference(const char *want, const char *got) {
  FILE *x = fopen(want, "r"), *y = fopen(got, "r");
  char a[256], b[256];
  for (int line = 1; x && y; line++) {
    char *p = fgets(a, sizeof a, x), *q = fgets(b, sizeof b, y);
    if (!p && !q) break;
    if (p && q && !strcmp(a, b)) continue;
    printf("    line %d: expected %s%s    got      %s%s", line, p ? a : "(end of output)\n",
           p && !strchr(a, '\n') ? "\n" : "", q ? b : "(end of output)\n",
           q && !strchr(b, '\n') ? "\n" : "");
    break;
  }
  if (x) fclose(x);
  if (y) fclose(y);
}

// One run that forces an abort at tg's instruction, and its verdict against the
// undisturbed run (status want_status, stdout in want_out).
static struct forced_result force_point(const struct target *tg, const struct rseq_elf_section *sec,
                                        bool preload, uint64_t counters, int want_status,
                                        const char *want_out) {
  struct forced_result f = {.verdict = "ok"};
  struct breakpoint bp = {.addr = tg->addr};
  struct run_spec one = {.bps = &bp, .nbps = 1, .measure = true, .preload = preload};
  if (counters && sec->registry_id >= 0)  // rseq/registry.c: 32 bytes per id, aborted at 16
    one.counter = counters + 32 * (uint64_t)sec->registry_id + 16;
  one.landings[0] = landing[tg->section][0];
  one.landings[1] = landing[tg->section][1];
  struct run_result r;
  run_traced(&one, &r);
  f.reached = bp.hit;
  // Where our registry counts aborts, the count must agree with the landing.
  f.did_abort = r.landed == 1 && (!one.counter || (r.aborted_at_stop >= 0 &&
                                                     r.our_aborted > r.aborted_at_stop));
  if (one.counter) snprintf(f.counted, sizeof f.counted, " (counter %ld)", r.our_aborted);
  f.same = !r.hung && r.status == want_status && same_file(r.out, want_out);
  bool checked = f.reached && f.same && user_check(&r);
  if (!f.reached) f.verdict = "not reached";
  else if (r.hung) f.verdict = "FAIL: hung (killed)";
  else if (tg->post_commit ? f.did_abort : !f.did_abort)
    f.verdict = tg->post_commit ? "FAIL: aborted after the commit" : "FAIL: no abort";
  else if (!f.same)
    f.verdict = r.status != want_status ? "FAIL: exit status differs" : "FAIL: stdout differs";
  else if (!checked) f.verdict = "FAIL: --check failed";
  if (!strncmp(f.verdict, "FAIL", 4)) {
    printf("  (%s at %s+%lu: exit status %#x; stderr:)\n", f.verdict, sec->name,
           (unsigned long)(tg->addr - sec->start), r.status);
    show_file(r.err, 5);
    if (!r.hung && r.status == want_status && !f.same) show_first_difference(want_out, r.out);
  }
  unlink(r.out);
  unlink(r.err);
  return f;
}

static void usage(void) {
  fprintf(stderr,
          "usage: abortscan --object PATH [--index cpu|cid] [--json F] [--preload] [--stdin F]\n"
          "                 [--check CMD] [--max-runs N] [--seed S] [--section NAME] -- CMD ARGS...\n");
  exit(2);
}

static uint64_t rng_state;
static uint64_t rng_next(void) {  // splitmix64: the sample is reproducible from --seed
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The scan's arrays: file-scope, so that every way out of scan() frees them.
static struct target *targets;
static struct breakpoint *all;
static bool *entered;
static int *order;
static char *forced;

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    if ((unsigned char)*s >= 0x20) fputc(*s, f);
  }
  fputc('"', f);
}

static int scan(int argc, char **argv) {
  const char *object = NULL, *json_path = NULL, *only = NULL;
  bool preload = false;
  long max_runs = 0;
  unsigned long seed = 1;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--")) {
      i++;
      break;
    }
    if (!strcmp(a, "--object") && v) object = argv[++i];
    else if (!strcmp(a, "--index") && v && (!strcmp(v, "cpu") || !strcmp(v, "cid"))) index_name = argv[++i];
    else if (!strcmp(a, "--json") && v) json_path = argv[++i];
    else if (!strcmp(a, "--stdin") && v) stdin_path = argv[++i];
    else if (!strcmp(a, "--check") && v) check_cmd = argv[++i];
    else if (!strcmp(a, "--section") && v) only = argv[++i];
    else if (!strcmp(a, "--max-runs") && v) max_runs = atol(argv[++i]);
    else if (!strcmp(a, "--seed") && v) seed = strtoul(argv[++i], NULL, 0);
    else if (!strcmp(a, "--preload")) preload = true;
    else usage();
  }
  if (!object || i >= argc || max_runs < 0) usage();
  command = &argv[i];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!realpath(object, object_real)) {
    fprintf(stderr, "abortscan: cannot find %s: %s\n", object, strerror(errno));
    return 2;
  }
  char err[512];
  int rc = rseq_elf_open(object_real, &elf, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "abortscan: %s\n", err);
    return 2;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/abortscan.XXXXXX");
  if (!mkdtemp(tmpdir)) {
    fprintf(stderr, "abortscan: mkdtemp: %s\n", strerror(errno));
    return 2;
  }
  printf("abortscan: %s (%s, %s), %d sections in __rseq_cs_ptr_array, %s; command:",
         object, elf.type == ET_DYN ? "ET_DYN" : "ET_EXEC",
         elf.has_registry ? "with our registry" : "no registry of ours", elf.nsections,
         elf.has_exit_table ? "an exit-point table" : "no exit-point table");
  for (char **c = command; *c; c++) printf(" %s", *c);
  printf("\n");

  csh cs;
  if (cs_open(CS_ARCH_X86, CS_MODE_64, &cs) != CS_ERR_OK) {
    fprintf(stderr, "abortscan: capstone failed to open\n");
    return 2;
  }
  // The targets: every instruction of every scannable section, and its post_commit_ip.
  int bad = 0;
  int ntargets = 0, cap = 0;
  landing = calloc((size_t)elf.nsections, sizeof *landing);
  for (int s = 0; s < elf.nsections; s++) {
    struct rseq_elf_section *sec = &elf.sections[s];
    if (only && !strstr(sec->name, only)) continue;
    if (sec->problem[0]) {
      printf("| %s | - | table entry | - | - | - | FAIL: %s |\n", sec->name, sec->problem);
      bad++;
      continue;
    }
    uint8_t code[4096 + 16], handler[16];
    if (sec->post_commit_offset > 4096) {  // longer than any section we know of
      printf("| %s | - | table entry | - | - | - | FAIL: a section of %lu bytes: longer than the "
             "4096 this scanner reads |\n", sec->name, (unsigned long)sec->post_commit_offset);
      bad++;
      continue;
    }
    // The section and the instruction at post_commit_ip, and the abort handler's first
    // instruction: as many of the bytes asked for as the segment holds (either may be
    // the last instruction of the object's text, as a librseq abort handler was).
    size_t n = rseq_elf_read_some(&elf, sec->start, code, sec->post_commit_offset + 16);
    cs_insn *insn = NULL, *h = NULL;
    size_t count = n > sec->post_commit_offset ? cs_disasm(cs, code, n, sec->start, 0, &insn) : 0;
    size_t hn = rseq_elf_read_some(&elf, sec->abort_ip, handler, sizeof handler);
    // Where one step from abort_ip lands: the instruction's successor, or its target.
    if (hn > 0 && cs_disasm(cs, handler, hn, sec->abort_ip, 1, &h) == 1) {
      landing[s][0] = h->address + h->size;
      landing[s][1] = h->mnemonic[0] == 'j' || !strcmp(h->mnemonic, "call")
                          ? strtoull(h->op_str, NULL, 16)
                          : landing[s][0];
      cs_free(h, 1);
    }
    uint64_t end = sec->start + sec->post_commit_offset;
    const char *shape = count == 0 ? "cannot disassemble the section" : NULL;
    for (size_t k = 0; k < count && insn[k].address < end && !shape; k++) {
      uint64_t next = insn[k].address + insn[k].size;
      if (next > end) shape = "post_commit_ip falls inside an instruction";
      else if (next == end && !abortscan_writes_memory(&insn[k]))
        shape = "the last instruction before post_commit_ip is not a store (the commit is not last)";
    }
    if (!landing[s][0]) shape = "cannot disassemble the abort handler";
    // A section that never compares its CPU (or cid) passes every forced abort: one
    // thread, no migration. Only the forcers' migrations show it, so say so (a note:
    // the compare may be written in a way this test does not recognize).
    if (count && !compares_index_field(insn, count, end))
      printf("| %s | - | CPU compare | - | - | - | note: no compare of a 32-bit field in "
             "memory (cpu_id, mm_cid) in the section; a section that does not check its CPU "
             "passes every forced abort (run it under chaos's migrations) |\n",
             sec->name);
    // Only a failure where the object has the exit table: the kernel does not need one.
    char exit_problem[240];
    int exits = abortscan_unlisted_exit(&elf, cs, true, insn, count, sec->start, end, sec->abort_ip,
                                        exit_problem, sizeof exit_problem);
    if (exits == ABORTSCAN_EXIT_UNLISTED && elf.has_exit_table) {
      printf("| %s | - | exit points | - | - | - | FAIL: %s |\n", sec->name, exit_problem);
      bad++;
    } else if (exits == ABORTSCAN_EXIT_UNLISTED) {
      printf("| %s | - | exit points | - | - | - | note (no exit-point table): %s |\n", sec->name,
             exit_problem);
    } else if (exits == ABORTSCAN_EXIT_VIA_STUB && elf.has_exit_table) {
      printf("| %s | - | exit points | - | - | - | note: %s |\n", sec->name, exit_problem);
    }
    if (shape) {  // reported; its instructions are still forced, to show the effect
      printf("| %s | - | structure | - | - | - | FAIL: %s |\n", sec->name, shape);
      bad++;
    }
    for (size_t k = 0; k < count && insn[k].address <= end; k++) {
      if (ntargets == cap) {
        cap = cap ? 2 * cap : 256;
        targets = realloc(targets, (size_t)cap * sizeof *targets);
        if (!targets) abort();
      }
      struct target *tg = &targets[ntargets++];
      tg->section = s;
      tg->addr = insn[k].address;
      tg->post_commit = insn[k].address == end;
      snprintf(tg->text, sizeof tg->text, "%s %s%s", insn[k].mnemonic, insn[k].op_str,
               tg->post_commit ? " (post-commit)"
               : k + 1 < count && insn[k + 1].address == end
                   ? (abortscan_writes_memory(&insn[k]) ? " (commit)" : " (last, not a store)")
                   : "");
      if (insn[k].address == end) break;
    }
    if (insn) cs_free(insn, count);
  }
  cs_close(&cs);

  // Our registry's abort counters, where the object has them (and a symbol table).
  uint64_t counters = elf.has_registry ? rseq_elf_symbol(&elf, "rseq_section_counter_table") : 0;
  if (elf.has_registry)
    printf("abortscan: %s\n", counters ? "our registry's abort counters are read at exit too"
                                       : "our registry, but no rseq_section_counter_table symbol: "
                                         "aborts are judged by the landing only");

  // 1. Undisturbed runs, until two agree. An undisturbed run is not always undisturbed:
  // the kernel aborts sections on preemption, migration and signals, and a broken
  // section (what abortscan looks for) then prints something else; on a loaded machine
  // that happened to the test suite's broken fixture. So up to UNDISTURBED_RUNS runs are
  // taken, and the first two that agree are the baseline; a command no two of whose
  // runs agree is refused. (A refusal below leaves their files: scan's caller removes
  // the directory's files.)
  enum { UNDISTURBED_RUNS = 5 };
  struct run_spec none = {.preload = preload};
  static struct run_result undisturbed[UNDISTURBED_RUNS];
  struct run_result base1, glibc;
  int nruns = 0, agree1 = -1, agree2 = -1;
  bool status_differs = false;
  while (nruns < UNDISTURBED_RUNS && agree1 < 0) {
    struct run_result *r = &undisturbed[nruns];
    run_traced(&none, r);
    if (r->hung) {
      printf("abortscan: refused: the undisturbed command did not finish in %d s\n", RUN_TIMEOUT_S);
      return 2;
    }
    for (int j = 0; j < nruns && agree1 < 0; j++) {
      if (undisturbed[j].status != r->status) status_differs = true;
      else if (same_file(undisturbed[j].out, r->out)) agree1 = j, agree2 = nruns;
    }
    nruns++;
  }
  if (agree1 < 0) {
    printf("abortscan: refused: the command is not deterministic without perturbation: no two "
           "of %d undisturbed runs agree (%s)\n",
           nruns, status_differs ? "exit status" : "stdout");
    return 2;
  }
  if (nruns > 2)
    printf("abortscan: %d undisturbed runs before two agreed (runs %d and %d): the others were "
           "disturbed, or the command is not quite deterministic\n",
           nruns, agree1 + 1, agree2 + 1);
  base1 = undisturbed[agree1];
  struct stat out_st;
  printf("abortscan: undisturbed, the command %s %d with %lld bytes of stdout\n",
         WIFEXITED(base1.status) ? "exits" : "is killed by signal",
         WIFEXITED(base1.status) ? WEXITSTATUS(base1.status) : WTERMSIG(base1.status),
         stat(base1.out, &out_st) == 0 ? (long long)out_st.st_size : -1LL);
  if (!base1.mapped) {
    printf("abortscan: refused: the command's process never mapped %s%s\n", object_real,
           elf.type == ET_DYN && !preload ? " (give --preload to put it in LD_PRELOAD)" : "");
    return 2;
  }
  if (preload) {
    struct run_spec plain = {.preload = false};
    run_traced(&plain, &glibc);
    if (glibc.status != base1.status || !same_file(glibc.out, base1.out)) {
      printf("abortscan: FAIL: undisturbed, the command's output with the object preloaded "
             "differs from its output without it (%s)\n",
             glibc.status != base1.status ? "exit status" : "stdout");
      bad++;
    } else {
      printf("abortscan: undisturbed, the output is identical with and without the object "
             "preloaded\n");
    }
  }

  // 2. The reach run.
  all = calloc((size_t)ntargets + 1, sizeof *all);
  for (int t = 0; t < ntargets; t++) all[t].addr = targets[t].addr;
  struct run_spec reach = {.bps = all, .nbps = ntargets, .preload = preload};
  struct run_result rr;
  run_traced(&reach, &rr);
  entered = calloc((size_t)elf.nsections + 1, sizeof *entered);
  for (int t = 0; t < ntargets; t++)
    if (all[t].hit && !targets[t].post_commit) entered[targets[t].section] = true;

  // 3. The forced runs: the instructions of entered sections (sampled with --max-runs).
  order = calloc((size_t)ntargets + 1, sizeof *order);
  int ncand = 0;
  for (int t = 0; t < ntargets; t++)
    if (entered[targets[t].section] && !elf.sections[targets[t].section].problem[0]) order[ncand++] = t;
  rng_state = seed;
  int nforce = max_runs && max_runs < ncand ? (int)max_runs : ncand;
  for (int k = 0; k < nforce; k++) {  // a partial Fisher-Yates shuffle picks the sample
    int j = k + (int)(rng_next() % (uint64_t)(ncand - k));
    int x = order[k];
    order[k] = order[j];
    order[j] = x;
  }
  forced = calloc((size_t)ntargets + 1, 1);
  for (int k = 0; k < nforce; k++) forced[order[k]] = 1;

  FILE *js = json_path ? fopen(json_path, "w") : NULL;
  if (js) {
    fprintf(js, "{\"object\": ");
    json_str(js, object_real);
    fprintf(js, ", \"command\": [");
    for (char **c = command; *c; c++) {
      fprintf(js, "%s", c == command ? "" : ", ");
      json_str(js, *c);
    }
    fprintf(js, "], \"index\": \"%s\", \"sections\": [", index_name ? index_name : "");
    for (int s = 0; s < elf.nsections; s++) {
      fprintf(js, "%s\n {\"name\": ", s ? "," : "");
      json_str(js, elf.sections[s].name);
      fprintf(js, ", \"start_ip\": \"%#lx\", \"post_commit_offset\": %lu, \"abort_ip\": \"%#lx\", "
                  "\"entered\": %s, \"problem\": ",
              (unsigned long)elf.sections[s].start, (unsigned long)elf.sections[s].post_commit_offset,
              (unsigned long)elf.sections[s].abort_ip, entered[s] ? "true" : "false");
      json_str(js, elf.sections[s].problem);
      fprintf(js, "}");
    }
    fprintf(js, "\n], \"results\": [");
  }
  printf("| section | offset | instruction | reached? | aborted? | output identical? | verdict |\n");
  printf("|---|---|---|---|---|---|---|\n");
  int passed = 0, failed = 0, flaky = 0, not_reached = 0, not_sampled = 0, first = 1;
  char flaky_verdict[96];
  for (int t = 0; t < ntargets; t++) {
    struct target *tg = &targets[t];
    struct rseq_elf_section *sec = &elf.sections[tg->section];
    const char *verdict;
    bool reached = false, did_abort = false, same = false;
    char counted[48] = "";
    if (!entered[tg->section]) {
      verdict = "not reached (section never entered)";
      not_reached++;
    } else if (sec->problem[0]) {
      verdict = "not forced (the section has a problem above)";
    } else if (!forced[t]) {
      verdict = "not forced (not in the --max-runs sample)";
      not_sampled++;
    } else {
      // A failure is confirmed by rerunning the point: a deterministic command fails the
      // same way each time this abort is forced. One that passes both reruns is FLAKY,
      // not pinned on this point: something else in that run (a natural abort in another,
      // broken, section) changed the output. It still fails the scan (exit 1).
      struct forced_result fr = force_point(tg, sec, preload, counters, base1.status, base1.out);
      if (!strncmp(fr.verdict, "FAIL", 4)) {
        // FLAKY only when both reruns pass ("ok"): one that fails confirms the FAIL, and
        // one that never reached the point confirms nothing, so the FAIL stands.
        int ok_reruns = 0;
        for (int k = 0; k < 2; k++) {
          struct forced_result again =
              force_point(tg, sec, preload, counters, base1.status, base1.out);
          if (strcmp(again.verdict, "ok")) break;
          ok_reruns++;
        }
        if (ok_reruns == 2) {
          snprintf(flaky_verdict, sizeof flaky_verdict,
                   "FLAKY: %s in one run, passed on 2 reruns", fr.verdict + 6);
          fr.verdict = flaky_verdict;
        }
      }
      reached = fr.reached;
      did_abort = fr.did_abort;
      same = fr.same;
      verdict = fr.verdict;
      snprintf(counted, sizeof counted, "%s", fr.counted);
      if (!strcmp(verdict, "ok")) passed++;
      else if (!strncmp(verdict, "FLAKY", 5)) flaky++;
      else if (!strcmp(verdict, "not reached")) not_reached++;
      else failed++;
    }
    printf("| %s | +%lu | `%s` | %s | %s%s | %s | %s |\n", sec->name,
           (unsigned long)(tg->addr - sec->start), tg->text, reached ? "yes" : "no",
           !reached ? "-" : did_abort ? "yes" : "no", counted,
           !reached ? "-" : same ? "yes" : "NO", verdict);
    if (js) {
      fprintf(js, "%s\n {\"section\": ", first ? "" : ",");
      json_str(js, sec->name);
      fprintf(js, ", \"offset\": %lu, \"instruction\": ", (unsigned long)(tg->addr - sec->start));
      json_str(js, tg->text);
      fprintf(js, ", \"reached\": %s, \"aborted\": %s, \"output_identical\": %s, \"verdict\": ",
              reached ? "true" : "false", did_abort ? "true" : "false", same ? "true" : "false");
      json_str(js, verdict);
      fprintf(js, "}");
      first = 0;
    }
  }
  int nentered = 0;
  for (int s = 0; s < elf.nsections; s++) nentered += entered[s];
  char summary[512];
  snprintf(summary, sizeof summary,
           "%d sections (%d entered by the command); %d instruction points: %d forced aborts "
           "passed, %d failed, %d not reached, %d not forced (sample: --max-runs %ld, seed %lu); "
           "%d flaky (failed once, passed on 2 reruns); %d table or structure problems",
           elf.nsections, nentered, ntargets, passed, failed, not_reached, not_sampled, max_runs,
           seed, flaky, bad);
  if (js) {
    fprintf(js, "\n], \"summary\": ");
    json_str(js, summary);
    fprintf(js, ", \"passed\": %d, \"failed\": %d, \"not_reached\": %d, \"not_sampled\": %d, "
                "\"flaky\": %d, \"problems\": %d}\n",
            passed, failed, not_reached, not_sampled, flaky, bad);
    fclose(js);
  }
  printf("\nabortscan: %s\n", summary);
  for (int j = 0; j < nruns; j++) unlink(undisturbed[j].out), unlink(undisturbed[j].err);
  if (preload) unlink(glibc.out), unlink(glibc.err);
  unlink(rr.out), unlink(rr.err);
  rmdir(tmpdir);
  return failed || flaky || bad ? 1 : 0;
}

int abortscan_object_main(int argc, char **argv) {
  int rc = scan(argc, argv);
  if (tmpdir[0]) {  // whatever a refusal left in it
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -f %s/out.* %s/err.*", tmpdir, tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "abortscan: could not clean %s\n", tmpdir);
  }
  free(landing);
  free(targets);
  free(all);
  free(entered);
  free(order);
  free(forced);
  rseq_elf_close(&elf);
  if (tmpdir[0]) rmdir(tmpdir);
  return rc;
}
