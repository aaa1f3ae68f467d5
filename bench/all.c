// all: every benchmark, every allocator, interleaved in one run.
//
//   bazel run -c opt //bench:all -- [--quick] [--out DIR] [--reps N] [--callgrind]
//
// The thread sweep takes its counts from the machine: T = 1, ncpus and 8 x ncpus (the
// CPUs online), for pair (16, 32, 256 B), churn, xfree (at least one producer/consumer
// pair: T = ncpus and 8 x ncpus) and larson, so the same command scales to a larger
// machine. The summary puts ccache-rseq next to the best of the four peers (glibc,
// jemalloc, tcmalloc, mimalloc) and next to ccache-cas, as ratios of the medians of
// this run, with peak RSS.
//
// Allocators: ccache in rseq mode and in CAS mode (libccache_malloc.so), glibc, and
// Debian's jemalloc, gperftools tcmalloc and mimalloc, plus ccache in rseq mode without
// its double-free check (what the check costs), each by LD_PRELOAD into the
// same benchmark binary (bench/alloc_bench.c). For every repetition, every workload
// runs once per allocator, interleaved, so machine noise hits all of them alike.
// Writes DIR/results.md (min, median, max, ratio to glibc, peak RSS), DIR/results.json,
// one DIR/<workload>.png per workload (gnuplot), the ring benchmark's table
// (rseq vs CAS vs mutex), and with --callgrind the instructions per malloc+free pair.
#include <errno.h>
#include <gnu/libc-version.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct allocator {
  const char *name;
  const char *preload;  // NULL: glibc
  const char *mode;     // CCACHE_MODE, for ccache
  int available;
};

static struct allocator allocs[] = {
    {"ccache-rseq", NULL, "rseq", 1},
    {"ccache-cas", NULL, "cas", 1},
    {"glibc", NULL, NULL, 1},
    {"jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", NULL, 1},
    {"tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", NULL, 1},
    {"mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2", NULL, 1},
    // ccache without its double-free check: the check's cost on the fast path.
    {"ccache-rseq-nocheck", NULL, "rseq", 1},
};
#define NALLOC (int)(sizeof allocs / sizeof allocs[0])
#define GLIBC 2

struct config {
  char label[48];
  const char *workload;
  long size;
  int threads;
  int higher_is_better;
  int rss_now;  // report the RSS at the end of the run, not the peak
};

#define MAX_CONFIGS 48
static struct config configs[MAX_CONFIGS];
static int nconfigs;

static void add(const char *label, const char *workload, long size, int threads, int higher) {
  if (nconfigs == MAX_CONFIGS) return;
  struct config *c = &configs[nconfigs++];
  snprintf(c->label, sizeof c->label, "%s", label);
  c->workload = workload;
  c->size = size;
  c->threads = threads;
  c->higher_is_better = higher;
  c->rss_now = 0;
}

// The peers ccache is measured against (allocs[] indexes).
static const int peers[] = {2, 3, 4, 5};
#define NPEERS 4

// Run the benchmark binary once under allocator a; returns 0 and the value and RSS.
static int run_one(const char *bench, const struct allocator *a, const struct config *c,
                   double millis, double *value, long *rss, long *rss_now, char *unit) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    if (a->preload) setenv("LD_PRELOAD", a->preload, 1);
    if (a->mode) setenv("CCACHE_MODE", a->mode, 1);
    char size[32], threads[32], ms[32];
    snprintf(size, sizeof size, "%ld", c->size);
    snprintf(threads, sizeof threads, "%d", c->threads);
    snprintf(ms, sizeof ms, "%.0f", millis);
    execl(bench, bench, "--workload", c->workload, "--size", size, "--threads", threads,
          "--millis", ms, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[512] = {0};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  int status;
  waitpid(pid, &status, 0);
  if (n <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  char *v = strstr(buf, "value="), *r = strstr(buf, "rss_kb="), *u = strstr(buf, "unit=");
  char *rn = strstr(buf, "rss_now_kb=");
  if (!v || !r || !u || !rn) return -1;
  *value = atof(v + 6);
  *rss = atol(r + 7);
  *rss_now = atol(rn + 11);
  sscanf(u + 5, "%15s", unit);
  return 0;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

// Instructions per malloc+free pair of 32 B, from two callgrind runs (the difference
// cancels start-up). valgrind has no rseq: ccache runs in CAS mode there (say so), and
// a smaller reservation (valgrind's address space manager refuses 64 GiB).
static double callgrind_ir(const char *bench, const struct allocator *a, const char *out) {
  long counts[2] = {100000, 300000};
  double ir[2];
  for (int k = 0; k < 2; k++) {
    char file[512], cmd[2048];
    snprintf(file, sizeof file, "%s/callgrind.%s.%d", out, a->name, k);
    snprintf(cmd, sizeof cmd,
             "%s%s%s %s%s CCACHE_RESERVE_GB=4 valgrind --tool=callgrind --callgrind-out-file=%s %s --workload pair "
             "--size 32 --iterations %ld >/dev/null 2>&1",
             a->preload ? "LD_PRELOAD=" : "", a->preload ? a->preload : "", "",
             a->mode ? "CCACHE_MODE=" : "", a->mode ? a->mode : "", file, bench, counts[k]);
    if (system(cmd) != 0) return -1;
    FILE *f = fopen(file, "r");
    if (!f) return -1;
    char line[512];
    ir[k] = -1;
    while (fgets(line, sizeof line, f))
      if (!strncmp(line, "totals:", 7) || !strncmp(line, "summary:", 8)) ir[k] = atof(strchr(line, ':') + 1);
    fclose(f);
    if (ir[k] < 0) return -1;
  }
  return (ir[1] - ir[0]) / (double)(counts[1] - counts[0]);
}

int main(int argc, char **argv) {
  const char *bench = NULL, *lib = NULL, *ring_bench = NULL, *nocheck_lib = NULL, *out = "bench-results";
  int quick = 0, reps = 0, callgrind = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--bench") && i + 1 < argc) bench = argv[++i];
    else if (!strcmp(argv[i], "--ccache-lib") && i + 1 < argc) lib = argv[++i];
    else if (!strcmp(argv[i], "--ring-bench") && i + 1 < argc) ring_bench = argv[++i];
    else if (!strcmp(argv[i], "--ccache-nocheck-lib") && i + 1 < argc) nocheck_lib = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--callgrind")) callgrind = 1;
    else {
      fprintf(stderr, "usage: all [--quick] [--out DIR] [--reps N] [--callgrind]\n");
      return 2;
    }
  }
  if (!bench || !lib || !ring_bench) {
    fprintf(stderr, "all: run it with bazel run //bench:all (it passes the binaries)\n");
    return 2;
  }
  // Paths relative to the runfiles directory: make them absolute before chdir-free use.
  char bench_abs[4096], lib_abs[4096], ring_abs[4096];
  if (!realpath(bench, bench_abs) || !realpath(lib, lib_abs) || !realpath(ring_bench, ring_abs)) {
    perror("realpath");
    return 1;
  }
  // bazel run: write the output next to where the user ran it.
  const char *wd = getenv("BUILD_WORKING_DIRECTORY");
  char outdir[4096];
  snprintf(outdir, sizeof outdir, "%s%s%s", out[0] != '/' && wd ? wd : "", out[0] != '/' && wd ? "/" : "", out);
  mkdir(outdir, 0755);
  allocs[0].preload = allocs[1].preload = lib_abs;
  static char nocheck_abs[4096];
  if (nocheck_lib && realpath(nocheck_lib, nocheck_abs))
    allocs[6].preload = nocheck_abs;
  else
    allocs[6].available = 0;
  for (int a = 0; a < NALLOC; a++)
    if (allocs[a].preload && access(allocs[a].preload, R_OK) != 0) {
      allocs[a].available = 0;
      fprintf(stderr, "note: %s not installed (%s): skipped\n", allocs[a].name, allocs[a].preload);
    }
  int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
  double millis = quick ? 150 : 400;
  if (!reps) reps = quick ? 3 : 7;
  if (reps > 64) reps = 64;  // the results table holds 64 repetitions
  int sweep[3] = {1, ncpu, 8 * ncpu};
  long pair_sizes[] = {16, 32, 256};
  for (int i = 0; i < 3; i++)
    for (int t = 0; t < 3; t++) {
      char label[48];
      snprintf(label, sizeof label, "pair-%ldB T=%d", pair_sizes[i], sweep[t]);
      add(label, "pair", pair_sizes[i], sweep[t], sweep[t] > 1);
    }
  if (!quick) {
    long more[] = {64, 1024, 4096, 32768};
    for (int i = 0; i < 4; i++) {
      char label[48];
      snprintf(label, sizeof label, "pair-%ldB T=1", more[i]);
      add(label, "pair", more[i], 1, 0);
    }
  }
  for (int t = 0; t < 3; t++) {
    char label[48];
    snprintf(label, sizeof label, "churn T=%d", sweep[t]);
    add(label, "churn", 0, sweep[t], 1);
  }
  for (int t = 1; t < 3; t++) {  // a producer and a consumer at least
    char label[48];
    int n = sweep[t] < 2 ? 2 : sweep[t];
    snprintf(label, sizeof label, "xfree T=%d", n);
    add(label, "xfree", 0, n, 1);
  }
  for (int t = 0; t < 3; t++) {
    char label[48];
    snprintf(label, sizeof label, "larson T=%d", sweep[t]);
    add(label, "larson", 0, sweep[t], 1);
  }
  add("xmalloc", "xmalloc", 0, 2 * ncpu, 1);
  add("cache-scratch", "scratch", 0, ncpu, 0);
  add("1000 threads come and go", "threads", 0, 2 * ncpu, 1);
  configs[nconfigs - 1].rss_now = 1;

  static double values[MAX_CONFIGS][NALLOC][64];
  static long rss[MAX_CONFIGS][NALLOC], rss_now[MAX_CONFIGS][NALLOC];
  static char units[MAX_CONFIGS][16];
  int failures = 0;
  for (int rep = 0; rep < reps; rep++) {
    fprintf(stderr, "rep %d/%d\n", rep + 1, reps);
    for (int c = 0; c < nconfigs; c++)
      for (int a = 0; a < NALLOC; a++) {
        if (!allocs[a].available) continue;
        long r = 0, rn = 0;
        if (run_one(bench_abs, &allocs[a], &configs[c], millis, &values[c][a][rep], &r, &rn, units[c]) != 0) {
          fprintf(stderr, "FAILED: %s under %s\n", configs[c].label, allocs[a].name);
          values[c][a][rep] = 0;
          failures++;
        }
        if (r > rss[c][a]) rss[c][a] = r;
        if (rn > rss_now[c][a]) rss_now[c][a] = rn;
      }
  }

  char path[4200];
  snprintf(path, sizeof path, "%s/results.md", outdir);
  FILE *md = fopen(path, "w");
  snprintf(path, sizeof path, "%s/results.json", outdir);
  FILE *js = fopen(path, "w");
  if (!md || !js) {
    perror("output");
    return 1;
  }
  char host[256] = "?";
  gethostname(host, sizeof host);
  char date[64] = "?", cpu_model[128] = "?", kernel[128] = "?";
  time_t tnow = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&tnow));
  FILE *ci = fopen("/proc/cpuinfo", "r");
  char line[1024];
  while (ci && fgets(line, sizeof line, ci))
    if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
      snprintf(cpu_model, sizeof cpu_model, "%s", strchr(line, ':') + 2);
      cpu_model[strcspn(cpu_model, "\n")] = 0;
      break;
    }
  if (ci) fclose(ci);
  struct utsname un;
  if (uname(&un) == 0) snprintf(kernel, sizeof kernel, "%s %s", un.sysname, un.release);
  fprintf(md, "Run: %s. Machine: %s, %d CPUs online, %s, glibc %s. %d repetitions of %.0f ms "
              "per workload and allocator, interleaved; medians.\n\n",
          date, cpu_model, ncpu, kernel, gnu_get_libc_version(), reps, millis);
  fprintf(js, "{\"date\": \"%s\", \"cpu\": \"%s\", \"cpus\": %d, \"reps\": %d, \"millis\": %.0f, \"results\": [",
          date, cpu_model, ncpu, reps, millis);
  static double med[MAX_CONFIGS][NALLOC];
  for (int c = 0; c < nconfigs; c++)
    for (int a = 0; a < NALLOC; a++) {
      if (!allocs[a].available) continue;
      qsort(values[c][a], (size_t)reps, sizeof(double), cmp_double);
      med[c][a] = values[c][a][reps / 2];
    }
  // The summary: ccache-rseq against the best peer and against its own CAS mode.
  // Speed ratios are > 1 when ccache-rseq is faster (time: peer / ccache; rate: ccache /
  // peer); RSS ratios are ccache-rseq's over the lowest peer's.
  fprintf(md, "#### ccache-rseq against the best peer and against ccache-cas\n\n"
              "| workload | unit | ccache-rseq | best peer | its median | speed vs best peer | "
              "speed vs ccache-cas | RSS (MiB) | lowest peer RSS (MiB) | RSS vs lowest |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  for (int c = 0; c < nconfigs; c++) {
    const struct config *cf = &configs[c];
    int best = -1, lean = -1;
    for (int k = 0; k < NPEERS; k++) {
      int a = peers[k];
      if (!allocs[a].available || med[c][a] <= 0) continue;
      if (best < 0 || (cf->higher_is_better ? med[c][a] > med[c][best] : med[c][a] < med[c][best])) best = a;
      long ra = cf->rss_now ? rss_now[c][a] : rss[c][a];
      long rl = lean < 0 ? 0 : (cf->rss_now ? rss_now[c][lean] : rss[c][lean]);
      if (lean < 0 || ra < rl) lean = a;
    }
    double m = med[c][0], cas = med[c][1];
    if (best < 0 || m <= 0) continue;
    double vs_best = cf->higher_is_better ? m / med[c][best] : med[c][best] / m;
    double vs_cas = cas > 0 ? (cf->higher_is_better ? m / cas : cas / m) : 0;
    long r = cf->rss_now ? rss_now[c][0] : rss[c][0];
    long rl = cf->rss_now ? rss_now[c][lean] : rss[c][lean];
    fprintf(md, "| %s | %s | %.3f | %s | %.3f | %.2fx | %.2fx | %.1f%s | %.1f (%s) | %.2fx |\n", cf->label,
            units[c], m, allocs[best].name, med[c][best], vs_best, vs_cas, (double)r / 1024,
            cf->rss_now ? " now" : "", (double)rl / 1024, allocs[lean].name, rl > 0 ? (double)r / (double)rl : 0);
  }
  fprintf(md, "\n#### Every allocator\n\n"
              "| workload | allocator | min | median | max | unit | vs glibc | peak RSS (MiB) | RSS at the end (MiB) |\n"
              "|---|---|---|---|---|---|---|---|---|\n");
  int first = 1;
  for (int c = 0; c < nconfigs; c++) {
    for (int a = 0; a < NALLOC; a++) {
      if (!allocs[a].available) continue;
      double g = med[c][GLIBC], m = med[c][a];
      double ratio = configs[c].higher_is_better ? (g > 0 ? m / g : 0) : (m > 0 ? g / m : 0);
      fprintf(md, "| %s | %s | %.3f | %.3f | %.3f | %s | %.2fx | %.1f | %.1f |\n", configs[c].label,
              allocs[a].name, values[c][a][0], m, values[c][a][reps - 1], units[c], ratio,
              (double)rss[c][a] / 1024, (double)rss_now[c][a] / 1024);
      fprintf(js,
              "%s\n {\"workload\": \"%s\", \"allocator\": \"%s\", \"threads\": %d, \"unit\": \"%s\", \"min\": %.4f, "
              "\"median\": %.4f, \"max\": %.4f, \"speed_vs_glibc\": %.3f, \"peak_rss_kb\": %ld, \"rss_at_end_kb\": %ld}",
              first ? "" : ",", configs[c].label, allocs[a].name, configs[c].threads, units[c], values[c][a][0], m,
              values[c][a][reps - 1], ratio, rss[c][a], rss_now[c][a]);
      first = 0;
    }
    char slug[64];
    snprintf(slug, sizeof slug, "%s", configs[c].label);
    for (char *q = slug; *q; q++)
      if (*q == ' ' || *q == '=') *q = '_';
    // One plot per workload: medians with min..max bars.
    char dat[4300], png[4300], gp[4300];
    snprintf(dat, sizeof dat, "%s/%s.dat", outdir, slug);
    snprintf(png, sizeof png, "%s/%s.png", outdir, slug);
    snprintf(gp, sizeof gp, "%s/%s.gp", outdir, slug);
    FILE *d = fopen(dat, "w"), *g = fopen(gp, "w");
    if (d && g) {
      int x = 0;
      for (int a = 0; a < NALLOC; a++)
        if (allocs[a].available)
          fprintf(d, "%d %s %f %f %f\n", x++, allocs[a].name, med[c][a], values[c][a][0], values[c][a][reps - 1]);
      fprintf(g,
              "set terminal png size 800,480\nset output '%s'\nset title '%s (%s, %s is better)'\n"
              "set style fill solid 0.6\nset boxwidth 0.6\nset yrange [0:*]\nset ylabel '%s'\n"
              "set xtics rotate by -30\nplot '%s' using 1:3:xtic(2) with boxes notitle, '' using "
              "1:3:4:5 with yerrorbars notitle lc rgb 'black'\n",
              png, configs[c].label, units[c], configs[c].higher_is_better ? "higher" : "lower",
              units[c], dat);
    }
    if (d) fclose(d);
    if (g) fclose(g);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>/dev/null", gp);
    if (system(cmd) != 0) fprintf(stderr, "note: gnuplot failed for %s\n", configs[c].label);
  }
  fprintf(js, "\n]");

  if (callgrind) {
    fprintf(md, "\n### Instructions per malloc+free pair of 32 B (valgrind callgrind)\n\n"
                "valgrind does not implement rseq: ccache-rseq falls back to CAS mode there.\n\n"
                "| allocator | instructions per pair |\n|---|---|\n");
    fprintf(js, ", \"callgrind_ir_per_pair_32B\": {");
    int f = 1;
    for (int a = 0; a < NALLOC; a++) {
      if (!allocs[a].available) continue;
      double ir = callgrind_ir(bench_abs, &allocs[a], outdir);
      fprintf(md, "| %s | %.1f |\n", allocs[a].name, ir);
      fprintf(js, "%s\"%s\": %.1f", f ? "" : ", ", allocs[a].name, ir);
      f = 0;
    }
    fprintf(js, "}");
  }
  fprintf(js, "}\n");
  fclose(js);

  // The ring: rseq vs CAS vs mutex, its own interleaved run.
  char cmd[9000], ring_json[4300];
  snprintf(ring_json, sizeof ring_json, "%s/ring.json", outdir);
  snprintf(cmd, sizeof cmd, "%s --reps %d --millis %.0f --json '%s'", ring_abs, reps, millis, ring_json);
  fprintf(md, "\n### Ring: offer+poll, rseq vs CAS vs a mutex ring\n\n");
  fflush(md);
  FILE *rp = popen(cmd, "r");
  if (rp) {
    while (fgets(line, sizeof line, rp)) fputs(line, md);
    if (pclose(rp) != 0) failures++;
  }
  fclose(md);
  snprintf(path, sizeof path, "%s/results.md", outdir);
  FILE *in = fopen(path, "r");
  while (in && fgets(line, sizeof line, in)) fputs(line, stdout);
  if (in) fclose(in);
  printf("\nwritten: %s/results.md, results.json, ring.json and one PNG per workload\n", outdir);
  return failures ? 1 : 0;
}
