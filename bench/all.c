// all: every benchmark, every allocator, interleaved in one run.
//
//   bazel run -c opt //bench:all -- [--quick] [--out DIR] [--reps N] [--callgrind]
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
};

static struct config configs[32];
static int nconfigs;

static void add(const char *label, const char *workload, long size, int threads, int higher) {
  struct config *c = &configs[nconfigs++];
  snprintf(c->label, sizeof c->label, "%s", label);
  c->workload = workload;
  c->size = size;
  c->threads = threads;
  c->higher_is_better = higher;
}

// Run the benchmark binary once under allocator a; returns 0 and the value and RSS.
static int run_one(const char *bench, const struct allocator *a, const struct config *c,
                   double millis, double *value, long *rss, char *unit) {
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
  if (!v || !r || !u) return -1;
  *value = atof(v + 6);
  *rss = atol(r + 7);
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
  long sizes_full[] = {16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
  long sizes_quick[] = {16, 32, 256, 4096, 32768};
  long *sizes = quick ? sizes_quick : sizes_full;
  int nsizes = quick ? 5 : 12;
  for (int i = 0; i < nsizes; i++) {
    char label[48];
    snprintf(label, sizeof label, "pair-%ldB", sizes[i]);
    add(label, "pair", sizes[i], 1, 0);
  }
  add("larson", "larson", 0, ncpu, 1);
  add("xmalloc", "xmalloc", 0, 2 * ncpu, 1);
  add("cache-scratch", "scratch", 0, ncpu, 0);
  add("thread-churn", "churn", 0, 8, 1);
  char l4[48], l8[48];
  snprintf(l4, sizeof l4, "oversub-4x");
  snprintf(l8, sizeof l8, "oversub-8x");
  add(l4, "larson", 0, 4 * ncpu, 1);
  add(l8, "larson", 0, 8 * ncpu, 1);

  static double values[32][NALLOC][64];
  static long rss[32][NALLOC];
  static char units[32][16];
  int failures = 0;
  for (int rep = 0; rep < reps; rep++) {
    fprintf(stderr, "rep %d/%d\n", rep + 1, reps);
    for (int c = 0; c < nconfigs; c++)
      for (int a = 0; a < NALLOC; a++) {
        if (!allocs[a].available) continue;
        long r = 0;
        if (run_one(bench_abs, &allocs[a], &configs[c], millis, &values[c][a][rep], &r, units[c]) != 0) {
          fprintf(stderr, "FAILED: %s under %s\n", configs[c].label, allocs[a].name);
          values[c][a][rep] = 0;
          failures++;
        }
        if (r > rss[c][a]) rss[c][a] = r;
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
  fprintf(md, "Machine: %d CPUs online; %d repetitions of %.0f ms per workload and allocator, interleaved.\n\n", ncpu, reps, millis);
  fprintf(md, "| workload | allocator | min | median | max | unit | vs glibc | peak RSS (MiB) |\n|---|---|---|---|---|---|---|---|\n");
  fprintf(js, "{\"cpus\": %d, \"reps\": %d, \"millis\": %.0f, \"results\": [", ncpu, reps, millis);
  static double med[32][NALLOC];
  int first = 1;
  for (int c = 0; c < nconfigs; c++) {
    for (int a = 0; a < NALLOC; a++) {
      if (!allocs[a].available) continue;
      qsort(values[c][a], (size_t)reps, sizeof(double), cmp_double);
      med[c][a] = values[c][a][reps / 2];
    }
    for (int a = 0; a < NALLOC; a++) {
      if (!allocs[a].available) continue;
      double g = med[c][GLIBC], m = med[c][a];
      double ratio = configs[c].higher_is_better ? (g > 0 ? m / g : 0) : (m > 0 ? g / m : 0);
      fprintf(md, "| %s | %s | %.3f | %.3f | %.3f | %s | %.2fx | %.1f |\n", configs[c].label,
              allocs[a].name, values[c][a][0], m, values[c][a][reps - 1], units[c], ratio,
              (double)rss[c][a] / 1024);
      fprintf(js,
              "%s\n {\"workload\": \"%s\", \"allocator\": \"%s\", \"unit\": \"%s\", \"min\": %.4f, "
              "\"median\": %.4f, \"max\": %.4f, \"speed_vs_glibc\": %.3f, \"peak_rss_kb\": %ld}",
              first ? "" : ",", configs[c].label, allocs[a].name, units[c], values[c][a][0], m,
              values[c][a][reps - 1], ratio, rss[c][a]);
      first = 0;
    }
    // One plot per workload: medians with min..max bars.
    char dat[4300], png[4300], gp[4300];
    snprintf(dat, sizeof dat, "%s/%s.dat", outdir, configs[c].label);
    snprintf(png, sizeof png, "%s/%s.png", outdir, configs[c].label);
    snprintf(gp, sizeof gp, "%s/%s.gp", outdir, configs[c].label);
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
    char line[512];
    while (fgets(line, sizeof line, rp)) fputs(line, md);
    if (pclose(rp) != 0) failures++;
  }
  fclose(md);
  snprintf(path, sizeof path, "%s/results.md", outdir);
  FILE *in = fopen(path, "r");
  char line[1024];
  while (in && fgets(line, sizeof line, in)) fputs(line, stdout);
  if (in) fclose(in);
  printf("\nwritten: %s/results.md, results.json, ring.json and one PNG per workload\n", outdir);
  return failures ? 1 : 0;
}
