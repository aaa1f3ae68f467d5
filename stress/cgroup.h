// cgroup.h: a fresh cpuset cgroup for a stress job, cgroup v2 or v1.
//
// The supervisor (the job's parent process) creates
//   <cpuset root>/ccache-stress-<pid>
// with every CPU the job may use, moves the job's child process into it, waits for
// the child and removes the cgroup, whatever the child's fate (crash, signal, exit).
// Stale directories of earlier supervisors that died are removed first.
#ifndef CCACHE_STRESS_CGROUP_H_
#define CCACHE_STRESS_CGROUP_H_

#include <stddef.h>
#include <sys/types.h>

struct cgroup {
  int version;        // 1 or 2
  char dir[256];      // the cgroup's directory
  char cpus_file[300];  // its cpuset.cpus
};

// 0, or -1 with a reason in why (no cgroup fs, no cpuset controller, not root, ...).
int cgroup_create(struct cgroup *cg, char *why, size_t why_size);
int cgroup_add_process(const struct cgroup *cg, pid_t pid);
// Removes the directory (retrying while the kernel still counts exiting tasks).
int cgroup_remove(const struct cgroup *cg);

// Runs `child` in a fresh process inside a fresh cgroup and returns its wait status,
// the cgroup removed. The child gets the cgroup's cpuset.cpus path. When the cgroup
// cannot be made: returns -2 with the reason in why (nothing was forked).
int cgroup_supervise(int (*child)(const char *cpus_file, void *arg), void *arg, char *why,
                     size_t why_size);

#endif  // CCACHE_STRESS_CGROUP_H_
