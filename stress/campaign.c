// campaign: the main stress job. Runs the matrix of stress jobs (workload x mode x
// index x forcers x injection point) and abortscan, within a time budget, and writes
// a report: report.md, report.json and heatmap.png (gnuplot) under --out.
//
//   bazel run //stress:campaign -- [--minutes N] [--out DIR] [--seed S]
//
// Exit 0 only when every run passed (a run that skips, e.g. the cgroup forcer without
// root, is reported with its reason and its forcer marked not exercised), abortscan
// passed, and every critical section in the binary aborted under every cause
// (migration, signal, fence, preemption) with each index (cpu_id, mm_cid).
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rseq/rseq.h"
#include "rseq/rseq_internal.h"
#include "stress/causes.h"
#include "stress/forcers.h"

#define MAX_RUNS 128
#define MAX_SECTIONS 32
#define ALL_BUT_CGROUP "migrate,signal,storm,fence,antagonist"

struct run {
  char name[96];
  const char *workload, *mode, *index, *force;
  int inject_point;
  unsigned inject_loops;
  bool covered;  // --require all --until-covered (seconds is then the cap)
  double seconds;
  // results
  int status;  // 0 pass, 1 fail, 2 skipped, 3 timed out
  double wall;
  char why[200];
  unsigned long aborts;
};

static const char *job, *abortscan, *abortscan_workload;
static char out_dir[512];
static double minutes = 3;
static unsigned long seed = 1;
static struct run runs[MAX_RUNS];
static int nruns;

// Aggregates: [index][section][cause], over the RSEQ runs.
static char section_names[MAX_SECTIONS][64];
static int nsections;
static unsigned long coverage[2][MAX_SECTIONS][CAUSE_COUNT];
static unsigned long forcer_done[FORCE_COUNT];
static char forcer_why[FORCE_COUNT][200];
static bool forcer_ran[FORCE_COUNT];

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void add_run(const char *workload, const char *mode, const char *index, const char *force,
                    int point, unsigned loops, bool covered) {
  if (nruns >= MAX_RUNS) return;
  struct run *r = &runs[nruns++];
  r->workload = workload;
  r->mode = mode;
  r->index = index;
  r->force = force;
  r->inject_point = point;
  r->inject_loops = loops;
  r->covered = covered;
  snprintf(r->name, sizeof r->name, "%02d-%s-%s-%s-%s-inject%d", nruns, workload, mode, index,
           strchr(force, ',') ? (strcmp(force, ALL_BUT_CGROUP) ? "mixed" : "all") : force, point);
}

static void plan(void) {
  const char *indexes[] = {"cpu", "cid"};
  const char *singles[] = {"migrate", "signal", "storm", "fence", "antagonist", "cgroup"};
  for (int i = 0; i < 2; i++) {
    const char *x = indexes[i];
    // Coverage first: every section, every cause, all forcers at once.
    add_run("prim", "rseq", x, ALL_BUT_CGROUP, 0, 100, true);
    add_run("alloc", "rseq", x, ALL_BUT_CGROUP, 0, 1000, true);
    // The ring's offer sections are a few instructions each: with delay loops of 1000
    // a migration landed inside one about once per run (2026-11-29: 0 to 2 per section
    // and index); loops of 10000 give 10 to 20.
    add_run("ring", "rseq", x, ALL_BUT_CGROUP, 0, 10000, true);
    // Each forcer alone, so its own effect shows.
    for (int f = 0; f < 6; f++) add_run("prim", "rseq", x, singles[f], 0, 100, false);
    add_run("alloc", "rseq", x, "cgroup,signal", 0, 100, false);
    // Each injection point alone (the points the sections have).
    // The primitives' points run with the prim workload; a point only the allocator's
    // slab sections have (3) runs with the alloc workload.
    for (int p = 1; p <= RSEQ_INJECT_POINTS; p++) {
      bool prim = false, any = false;
      for (int id = 0; id < RSEQ_SECTION_MAX_IDS; id++) {
        bool has = (rseq_inject_points_of(id) >> p) & 1;
        any |= has;
        prim |= has && id < RSEQ_SECTION_ID_ccache_malloc_pop;
      }
      if (any) add_run(prim ? "prim" : "alloc", "rseq", x, "migrate,signal,fence", p, 2000, false);
    }
    // The reference mode, same workloads and forcers: the invariants must hold too.
    add_run("prim", "cas", x, ALL_BUT_CGROUP, 0, 0, false);
    add_run("alloc", "cas", x, ALL_BUT_CGROUP, 0, 0, false);
    add_run("ring", "cas", x, ALL_BUT_CGROUP, 0, 0, false);
  }
}

// Runs argv with stdout and stderr into log; kills it after timeout_s. Returns the
// wait status, or -1 on timeout.
static int run_logged(char *const argv[], const char *log, double timeout_s) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  if (pid < 0) return -1;
  double end = now_s() + timeout_s;
  int status;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (now_s() > end) {
      kill(-pid, SIGTERM);
      nanosleep(&(struct timespec){2, 0}, NULL);
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
  }
}

static int section_slot(const char *name) {
  for (int i = 0; i < nsections; i++)
    if (!strcmp(section_names[i], name)) return i;
  if (nsections >= MAX_SECTIONS) return -1;
  snprintf(section_names[nsections], sizeof section_names[0], "%s", name);
  return nsections++;
}

static int cause_of(const char *name) {
  for (int k = 0; k < CAUSE_COUNT; k++)
    if (!strcmp(cause_name(k), name)) return k;
  return -1;
}

// Folds a run's TSV into the aggregates.
static void absorb(struct run *r, const char *tsv) {
  FILE *f = fopen(tsv, "r");
  if (!f) return;
  char line[512];
  int x = !strcmp(r->index, "cid");
  bool rseq = !strcmp(r->mode, "rseq");
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    char *fields[6] = {0};
    int n = 0;
    for (char *save = NULL, *t = strtok_r(line, "\t", &save); t && n < 6; t = strtok_r(NULL, "\t", &save))
      fields[n++] = t;
    if (n >= 4 && !strcmp(fields[0], "section")) {
      int s = section_slot(fields[1]), k = cause_of(fields[2]);
      unsigned long c = strtoul(fields[3], NULL, 10);
      if (s >= 0 && k >= 0 && rseq) coverage[x][s][k] += c;
      r->aborts += c;
    } else if (n >= 4 && !strcmp(fields[0], "forcer")) {
      for (int k = 0; k < FORCE_COUNT; k++) {
        if (strcmp(fields[1], forcer_name(k))) continue;
        if (n >= 5 && fields[4][0]) {
          if (strcmp(fields[4], "not requested") && !forcer_ran[k])
            snprintf(forcer_why[k], sizeof forcer_why[k], "%s", fields[4]);
        } else {
          forcer_ran[k] = true;
          forcer_done[k] += strtoul(fields[2], NULL, 10);
        }
      }
    }
  }
  fclose(f);
}

// One pass over a run's log: whether it skipped, and the last line that says why it
// failed or skipped.
static bool scan_log(const char *log, char *why, size_t size) {
  bool skipped = false;
  FILE *f = fopen(log, "r");
  if (!f) return false;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    skipped |= !strncmp(line, "SKIPPED", 7);
    if (!strncmp(line, "SKIPPED", 7) || !strncmp(line, "FAIL", 4) || strstr(line, "no abort"))
      snprintf(why, size, "%s", line);
  }
  fclose(f);
  return skipped;
}

static void do_run(struct run *r, double seconds) {
  char log[700], tsv[700], json[700], secs[32], mins[32], inject[32], seed_s[32];
  snprintf(log, sizeof log, "%s/runs/%s.log", out_dir, r->name);
  snprintf(tsv, sizeof tsv, "%s/runs/%s.tsv", out_dir, r->name);
  snprintf(json, sizeof json, "%s/runs/%s.json", out_dir, r->name);
  // Coverage runs stop as soon as every section has every cause; the cap is for the
  // rare one whose migrations are slow to land inside sections (mm_cid, short sections).
  r->seconds = r->covered ? seconds * 6 : seconds;
  snprintf(secs, sizeof secs, "%.1f", r->seconds);
  snprintf(mins, sizeof mins, "%.1f", r->covered ? 1.0 : seconds);
  snprintf(inject, sizeof inject, "%d:%u", r->inject_point, r->inject_loops);
  snprintf(seed_s, sizeof seed_s, "%lu", seed + (unsigned long)(r - runs));
  char *argv[40];
  int n = 0;
  char *fixed[] = {(char *)job, "--workload", (char *)r->workload, "--mode", (char *)r->mode,
                   "--index", (char *)r->index, "--force", (char *)r->force, "--seconds", secs,
                   "--min-seconds", mins, "--inject", inject, "--seed", seed_s, "--tsv", tsv,
                   "--json", json, NULL};
  for (int i = 0; fixed[i]; i++) argv[n++] = fixed[i];
  if (r->covered) {
    argv[n++] = "--until-covered";
    argv[n++] = "--require";
    argv[n++] = "all";
  }
  argv[n] = NULL;
  double t0 = now_s();
  int status = run_logged(argv, log, r->seconds + 60);
  r->wall = now_s() - t0;
  char why[sizeof r->why] = "";
  bool skipped = scan_log(log, why, sizeof why);
  if (status == -1) {
    r->status = 3;
    snprintf(r->why, sizeof r->why, "timed out after %.0f s", r->seconds + 60);
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    r->status = skipped ? 2 : 0;
  } else {
    r->status = 1;
    snprintf(r->why, sizeof r->why, "exit status %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  if (r->status && why[0]) snprintf(r->why, sizeof r->why, "%s", why);
  if (r->status == 2 && !strcmp(r->force, "cgroup"))
    snprintf(forcer_why[5], sizeof forcer_why[5], "%s", r->why);
  absorb(r, tsv);
}

static const char *status_name(int s) {
  static const char *const n[] = {"PASS", "FAIL", "SKIPPED", "TIMEOUT"};
  return n[s];
}

static int abortscan_status[2];  // 0 pass, else fail
static char abortscan_line[2][200];

static void run_abortscan(void) {
  const char *indexes[] = {"cpu", "cid"};
  for (int i = 0; i < 2; i++) {
    char log[700], json[700];
    snprintf(log, sizeof log, "%s/runs/abortscan-%s.log", out_dir, indexes[i]);
    snprintf(json, sizeof json, "%s/abortscan-%s.json", out_dir, indexes[i]);
    char *argv[] = {(char *)abortscan, "--workload", (char *)abortscan_workload, "--index",
                    (char *)indexes[i], "--json", json, NULL};
    int status = run_logged(argv, log, 300);
    abortscan_status[i] = !(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    FILE *f = fopen(log, "r");
    if (f) {  // its last non-empty line is its verdict
      char line[512];
      while (fgets(line, sizeof line, f))
        if (line[0] != '\n') {
          line[strcspn(line, "\n")] = 0;
          snprintf(abortscan_line[i], sizeof abortscan_line[i], "%s", line);
        }
      fclose(f);
    }
    fprintf(stderr, "[abortscan %s] %s: %s\n", indexes[i], abortscan_status[i] ? "FAIL" : "PASS",
            abortscan_line[i]);
  }
}

static void heatmap(void) {
  char dat[700], labels[700], gp[700], png[700], cmd[1600];
  snprintf(dat, sizeof dat, "%s/heatmap.dat", out_dir);
  snprintf(labels, sizeof labels, "%s/heatmap-counts.dat", out_dir);
  snprintf(gp, sizeof gp, "%s/heatmap.gp", out_dir);
  snprintf(png, sizeof png, "%s/heatmap.png", out_dir);
  FILE *f = fopen(dat, "w");
  if (!f) return;
  // Rows: sections; columns: cause x index. log10(1 + count), so 0 stays 0 (white).
  for (int s = 0; s < nsections; s++) {
    for (int x = 0; x < 2; x++)
      for (int k = 0; k < CAUSE_COUNT; k++) {
        unsigned long c = coverage[x][s][k];
        double v = 0;
        for (unsigned long t = c + 1; t >= 10; t /= 10) v += 1;
        fprintf(f, "%s%.0f", x || k ? " " : "", c ? v + 1 : 0);
      }
    fprintf(f, "\n");
  }
  fclose(f);
  f = fopen(gp, "w");
  if (!f) return;
  fprintf(f, "set terminal pngcairo size 1100,%d noenhanced\nset output '%s'\n", 200 + 40 * nsections,
          png);
  fprintf(f, "set title 'rseq aborts per critical section and cause (colour: digits of the count; white: none)'\n");
  fprintf(f, "set palette defined (0 'white', 1 '#fde0c5', 4 '#f59e4c', 8 '#b3200e')\n");
  fprintf(f, "set cbrange [0:8]\nset cblabel 'digits in the abort count'\nunset key\n");
  fprintf(f, "set xtics rotate by 30 right (");
  for (int x = 0; x < 2; x++)
    for (int k = 0; k < CAUSE_COUNT; k++)
      fprintf(f, "%s'%s %s' %d", x || k ? ", " : "", cause_name(k), x ? "mm_cid" : "cpu_id",
              x * CAUSE_COUNT + k);
  fprintf(f, ")\nset ytics (");
  for (int s = 0; s < nsections; s++) fprintf(f, "%s'%s' %d", s ? ", " : "", section_names[s], s);
  fprintf(f, ")\nset yrange [-0.5:%d.5] reverse\nset xrange [-0.5:%d.5]\n", nsections - 1,
          2 * CAUSE_COUNT - 1);
  fprintf(f, "plot '%s' matrix with image, '%s' using 1:2:3 with labels\n", dat, labels);
  fclose(f);
  f = fopen(labels, "w");  // the counts themselves, one label per cell
  if (!f) return;
  for (int s = 0; s < nsections; s++)
    for (int x = 0; x < 2; x++)
      for (int k = 0; k < CAUSE_COUNT; k++)
        fprintf(f, "%d %d %lu\n", x * CAUSE_COUNT + k, s, coverage[x][s][k]);
  fclose(f);
  snprintf(cmd, sizeof cmd, "gnuplot '%s' > '%s/runs/gnuplot.log' 2>&1", gp, out_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "note: gnuplot failed (see %s/runs/gnuplot.log); no heat map\n", out_dir);
}

static bool all_covered(void) {
  for (int x = 0; x < 2; x++)
    for (int s = 0; s < nsections; s++)
      for (int k = 0; k < CAUSE_COUNT; k++)
        if (!coverage[x][s][k]) return false;
  return nsections > 0;
}

static void write_reports(double total, bool ok) {
  char path[700];
  struct utsname u;
  uname(&u);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  time_t t = time(NULL);
  char date[64];
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&t));

  snprintf(path, sizeof path, "%s/report.md", out_dir);
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "campaign: cannot write %s: %s\n", path, strerror(errno));
    return;
  }
  fprintf(f, "# Stress campaign: %s\n\n", ok ? "PASS" : "FAIL");
  fprintf(f, "%s, kernel %s, %ld CPUs, budget %.1f min, took %.0f s, seed %lu.\n\n", date,
          u.release, ncpu, minutes, total, seed);
  fprintf(f, "## Aborts per critical section and cause (RSEQ runs)\n\n| section |");
  for (int x = 0; x < 2; x++)
    for (int k = 0; k < CAUSE_COUNT; k++) fprintf(f, " %s %s |", cause_name(k), x ? "cid" : "cpu");
  fprintf(f, "\n|---|");
  for (int i = 0; i < 2 * CAUSE_COUNT; i++) fprintf(f, "---:|");
  fprintf(f, "\n");
  for (int s = 0; s < nsections; s++) {
    fprintf(f, "| %s |", section_names[s]);
    for (int x = 0; x < 2; x++)
      for (int k = 0; k < CAUSE_COUNT; k++)
        fprintf(f, coverage[x][s][k] ? " %lu |" : " **0** |", coverage[x][s][k]);
    fprintf(f, "\n");
  }
  fprintf(f, "\nHeat map: heatmap.png. Every cell must be non-zero.\n\n## Forcers\n\n");
  fprintf(f, "| forcer | exercised | actions |\n|---|---|---:|\n");
  for (int k = 0; k < FORCE_COUNT; k++)
    fprintf(f, "| %s | %s | %lu |\n", forcer_name(k),
            forcer_ran[k] ? "yes" : forcer_why[k][0] ? forcer_why[k] : "no", forcer_done[k]);
  fprintf(f, "\n## Runs\n\n| run | workload | mode | index | forcers | inject | s | result | "
             "aborts | note |\n|---|---|---|---|---|---|---:|---|---:|---|\n");
  for (int i = 0; i < nruns; i++) {
    struct run *r = &runs[i];
    fprintf(f, "| %s | %s | %s | %s | %s | %d:%u | %.1f | %s | %lu | %s |\n", r->name, r->workload,
            r->mode, r->index, r->force, r->inject_point, r->inject_loops, r->wall,
            status_name(r->status), r->aborts, r->why);
  }
  fprintf(f, "\n## abortscan\n\n");
  for (int i = 0; i < 2; i++)
    fprintf(f, "- %s: %s (%s)\n", i ? "mm_cid" : "cpu_id", abortscan_status[i] ? "FAIL" : "PASS",
            abortscan_line[i]);
  fprintf(f, "\nLogs, per-run JSON and TSV: runs/.\n");
  fclose(f);

  snprintf(path, sizeof path, "%s/report.json", out_dir);
  f = fopen(path, "w");
  if (!f) return;
  fprintf(f, "{\n  \"ok\": %s, \"date\": \"%s\", \"kernel\": \"%s\", \"cpus\": %ld, "
             "\"budget_minutes\": %.2f, \"seconds\": %.1f, \"seed\": %lu,\n",
          ok ? "true" : "false", date, u.release, ncpu, minutes, total, seed);
  fprintf(f, "  \"coverage\": {");
  for (int x = 0; x < 2; x++) {
    fprintf(f, "%s\n    \"%s\": {", x ? "," : "", x ? "mm_cid" : "cpu_id");
    for (int s = 0; s < nsections; s++) {
      fprintf(f, "%s\n      \"%s\": {", s ? "," : "", section_names[s]);
      for (int k = 0; k < CAUSE_COUNT; k++)
        fprintf(f, "%s\"%s\": %lu", k ? ", " : "", cause_name(k), coverage[x][s][k]);
      fprintf(f, "}");
    }
    fprintf(f, "\n    }");
  }
  fprintf(f, "\n  },\n  \"forcers\": {");
  for (int k = 0; k < FORCE_COUNT; k++)
    fprintf(f, "%s\n    \"%s\": {\"exercised\": %s, \"actions\": %lu, \"why_not\": \"%s\"}",
            k ? "," : "", forcer_name(k), forcer_ran[k] ? "true" : "false", forcer_done[k],
            forcer_ran[k] ? "" : forcer_why[k]);
  fprintf(f, "\n  },\n  \"abortscan\": {\"cpu_id\": %s, \"mm_cid\": %s},\n  \"runs\": [",
          abortscan_status[0] ? "false" : "true", abortscan_status[1] ? "false" : "true");
  for (int i = 0; i < nruns; i++) {
    struct run *r = &runs[i];
    fprintf(f, "%s\n    {\"name\": \"%s\", \"workload\": \"%s\", \"mode\": \"%s\", \"index\": "
               "\"%s\", \"forcers\": \"%s\", \"inject_point\": %d, \"inject_loops\": %u, "
               "\"seconds\": %.1f, \"result\": \"%s\", \"aborts\": %lu, \"note\": \"%s\"}",
            i ? "," : "", r->name, r->workload, r->mode, r->index, r->force, r->inject_point,
            r->inject_loops, r->wall, status_name(r->status), r->aborts, r->why);
  }
  fprintf(f, "\n  ]\n}\n");
  fclose(f);
}

static void usage(void) {
  fprintf(stderr, "usage: campaign [--minutes N] [--out DIR] [--seed S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *out = "stress-report";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--minutes") && v) {
      minutes = atof(argv[++i]);
    } else if (!strcmp(a, "--out") && v) {
      out = argv[++i];
    } else if (!strcmp(a, "--seed") && v) {
      seed = strtoul(argv[++i], NULL, 0);
    } else if (!strcmp(a, "--job") && v) {
      job = argv[++i];
    } else if (!strcmp(a, "--abortscan") && v) {
      abortscan = argv[++i];
    } else if (!strcmp(a, "--abortscan-workload") && v) {
      abortscan_workload = argv[++i];
    } else {
      usage();
    }
  }
  if (!job || !abortscan || !abortscan_workload || minutes <= 0) usage();
  // Binaries: absolute, since the runs chdir nowhere but the out dir may be relative.
  static char job_abs[4096], scan_abs[4096], work_abs[4096];
  if (!realpath(job, job_abs) || !realpath(abortscan, scan_abs) ||
      !realpath(abortscan_workload, work_abs)) {
    fprintf(stderr, "campaign: cannot find the job binaries: %s\n", strerror(errno));
    return 2;
  }
  job = job_abs, abortscan = scan_abs, abortscan_workload = work_abs;
  const char *wd = getenv("BUILD_WORKING_DIRECTORY");  // bazel run: the user's directory
  if (out[0] != '/' && wd)
    snprintf(out_dir, sizeof out_dir, "%s/%s", wd, out);
  else
    snprintf(out_dir, sizeof out_dir, "%s", out);
  char runs_dir[600];
  snprintf(runs_dir, sizeof runs_dir, "%s/runs", out_dir);
  mkdir(out_dir, 0755);
  if (mkdir(runs_dir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "campaign: cannot create %s: %s\n", runs_dir, strerror(errno));
    return 2;
  }
  plan();
  // The budget: abortscan takes a few seconds; the rest is shared by the runs, the
  // coverage runs counting 2 (they stop early once covered, capped at 6 shares).
  int shares = 0;
  for (int i = 0; i < nruns; i++) shares += runs[i].covered ? 2 : 1;
  double per = (minutes * 60 - 10) / shares;
  if (per < 1) per = 1;
  printf("campaign: %d runs + abortscan, ~%.1f s each, budget %.1f min, report in %s\n", nruns,
         per, minutes, out_dir);
  double t0 = now_s();
  bool ok = true;
  for (int i = 0; i < nruns; i++) {
    struct run *r = &runs[i];
    do_run(r, per);
    ok &= r->status == 0 || r->status == 2;
    double el = now_s() - t0;
    printf("[%2d/%d %4.0fs] %-5s %-4s %-3s %-38s inject %d:%-4u %5.1fs %-7s aborts %-9lu %s\n",
           i + 1, nruns, el, r->workload, r->mode, r->index, r->force, r->inject_point,
           r->inject_loops, r->wall, status_name(r->status), r->aborts, r->why);
  }
  run_abortscan();
  ok &= !abortscan_status[0] && !abortscan_status[1];
  bool covered = all_covered();
  ok &= covered;
  heatmap();
  double total = now_s() - t0;
  write_reports(total, ok);
  printf("\n%-30s", "aborts (cpu_id | mm_cid)");
  for (int x = 0; x < 2; x++)
    for (int k = 0; k < CAUSE_COUNT; k++) printf(" %10.10s", cause_name(k));
  printf("\n");
  for (int s = 0; s < nsections; s++) {
    printf("%-30s", section_names[s]);
    for (int x = 0; x < 2; x++)
      for (int k = 0; k < CAUSE_COUNT; k++) printf(" %10lu", coverage[x][s][k]);
    printf("\n");
  }
  for (int k = 0; k < FORCE_COUNT; k++)
    if (!forcer_ran[k]) printf("forcer %s not exercised: %s\n", forcer_name(k), forcer_why[k]);
  if (!covered) printf("FAIL: some section x cause x index has no abort (see the table)\n");
  printf("campaign: %s in %.0f s; report: %s/report.md, report.json, heatmap.png\n",
         ok ? "PASS" : "FAIL", total, out_dir);
  return ok ? 0 : 1;
}
