// cgroup.c: a fresh cpuset cgroup (v2 or v1) around a child process; see cgroup.h.
#include "stress/cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rseq/testing.h"
#include "stress/forcers.h"

#define PREFIX "ccache-stress-"

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  int saved = errno;
  close(fd);
  errno = saved;
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int read_file(const char *path, char *buf, size_t size) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  size_t n = fread(buf, 1, size - 1, f);
  fclose(f);
  buf[n] = 0;
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = 0;
  return 0;
}

// The mount point of the cgroup2 hierarchy, or of the v1 hierarchy with cpuset.
static int find_mount(int version, char *out, size_t size) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return -1;
  char line[1024];
  int found = -1;
  while (found < 0 && fgets(line, sizeof line, f)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source super
    char mnt[512], fstype[64], super[512];
    const char *dash = strstr(line, " - ");
    if (!dash || sscanf(line, "%*s %*s %*s %*s %511s", mnt) != 1) continue;
    if (sscanf(dash + 3, "%63s %*s %511s", fstype, super) != 2) continue;
    if (version == 2 && !strcmp(fstype, "cgroup2")) {
      char path[600], ctl[256];
      snprintf(path, sizeof path, "%s/cgroup.controllers", mnt);
      if (read_file(path, ctl, sizeof ctl) == 0 && strstr(ctl, "cpuset")) found = 0;
    } else if (version == 1 && !strcmp(fstype, "cgroup")) {
      for (char *tok = strtok(super, ","); tok; tok = strtok(NULL, ","))
        if (!strcmp(tok, "cpuset")) found = 0;
    }
    if (found == 0) snprintf(out, size, "%s", mnt);
  }
  fclose(f);
  return found;
}

// The calling thread's allowed CPUs as a cpuset list ("0,1,5").
static void allowed_cpus(char *out, size_t size) {
  static int cpus[CPU_SETSIZE];
  int n = test_allowed_cpus(cpus, CPU_SETSIZE);
  cpu_list_format(out, size, cpus, NULL, n);
}

// Directories left by supervisors that died (SIGKILL) before removing them.
static void remove_stale(const char *root) {
  DIR *d = opendir(root);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, PREFIX, strlen(PREFIX))) continue;
    long pid = atol(e->d_name + strlen(PREFIX));
    if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
      char path[600];
      snprintf(path, sizeof path, "%s/%s", root, e->d_name);
      if (rmdir(path) == 0) fprintf(stderr, "cgroup: removed stale %s\n", path);
    }
  }
  closedir(d);
}

int cgroup_create(struct cgroup *cg, char *why, size_t why_size) {
  char root[512], path[600], cpus[512];
  memset(cg, 0, sizeof *cg);
  if (find_mount(2, root, sizeof root) == 0) {
    cg->version = 2;
  } else if (find_mount(1, root, sizeof root) == 0) {
    cg->version = 1;
  } else {
    snprintf(why, why_size, "no cgroup v2 hierarchy with the cpuset controller and no v1 cpuset "
                            "hierarchy is mounted");
    return -1;
  }
  remove_stale(root);
  if (cg->version == 2) {  // the controller must be enabled for the root's children
    snprintf(path, sizeof path, "%s/cgroup.subtree_control", root);
    if (write_file(path, "+cpuset") != 0) {
      snprintf(why, why_size, "cgroup v2: cannot enable cpuset in %s: %s", path, strerror(errno));
      return -1;
    }
  }
  snprintf(cg->dir, sizeof cg->dir, "%s/" PREFIX "%ld", root, (long)getpid());
  if (mkdir(cg->dir, 0755) != 0 && errno != EEXIST) {
    snprintf(why, why_size, "cgroup v%d: mkdir %s: %s%s", cg->version, cg->dir, strerror(errno),
             geteuid() ? " (not root)" : "");
    return -1;
  }
  snprintf(cg->cpus_file, sizeof cg->cpus_file, "%s/cpuset.cpus", cg->dir);
  allowed_cpus(cpus, sizeof cpus);
  if (write_file(cg->cpus_file, cpus) != 0) {
    snprintf(why, why_size, "cgroup v%d: write %s to %s: %s", cg->version, cpus, cg->cpus_file,
             strerror(errno));
    cgroup_remove(cg);
    return -1;
  }
  if (cg->version == 1) {  // v1 takes no task until mems is set: copy the root's
    char mems[256];
    snprintf(path, sizeof path, "%s/cpuset.mems", root);
    if (read_file(path, mems, sizeof mems) != 0) snprintf(mems, sizeof mems, "0");
    snprintf(path, sizeof path, "%s/cpuset.mems", cg->dir);
    if (write_file(path, mems) != 0) {
      snprintf(why, why_size, "cgroup v1: write %s to %s: %s", mems, path, strerror(errno));
      cgroup_remove(cg);
      return -1;
    }
  }
  return 0;
}

int cgroup_add_process(const struct cgroup *cg, pid_t pid) {
  char path[300], text[32];
  snprintf(path, sizeof path, "%s/cgroup.procs", cg->dir);
  snprintf(text, sizeof text, "%ld", (long)pid);
  return write_file(path, text);
}

int cgroup_remove(const struct cgroup *cg) {
  // The kernel may still count a task that has exited but not yet been released.
  for (int i = 0; i < 500; i++) {
    if (rmdir(cg->dir) == 0 || errno == ENOENT) return 0;
    if (errno != EBUSY) break;
    nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
  }
  fprintf(stderr, "cgroup: could not remove %s: %s\n", cg->dir, strerror(errno));
  return -1;
}

static volatile sig_atomic_t supervised_child;

static void forward_signal(int sig) {
  if (supervised_child > 0) kill((pid_t)supervised_child, sig);
}

int cgroup_supervise(int (*child)(const char *cpus_file, void *arg), void *arg, char *why,
                     size_t why_size) {
  struct cgroup cg;
  if (cgroup_create(&cg, why, why_size) != 0) return -2;
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) {
    snprintf(why, why_size, "pipe: %s", strerror(errno));
    cgroup_remove(&cg);
    return -2;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, why_size, "fork: %s", strerror(errno));
    close(go[0]);
    close(go[1]);
    cgroup_remove(&cg);
    return -2;
  }
  if (pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(125);  // the supervisor gave up
    close(go[0]);
    int rc = child(cg.cpus_file, arg);
    fflush(NULL);
    _exit(rc);
  }
  close(go[0]);
  supervised_child = pid;
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward_signal;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  int status = -1;
  if (cgroup_add_process(&cg, pid) != 0) {
    snprintf(why, why_size, "cgroup v%d: move pid %ld into %s: %s", cg.version, (long)pid, cg.dir,
             strerror(errno));
    close(go[1]);  // the child exits 125 without running
    waitpid(pid, &status, 0);
    status = -2;
  } else {
    if (write(go[1], "g", 1) != 1) kill(pid, SIGKILL);
    close(go[1]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  supervised_child = 0;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  if (cgroup_remove(&cg) != 0 && status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
    status = 1 << 8;  // a cgroup left behind is a failure of the job
  return status;
}
