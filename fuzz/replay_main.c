// replay_main.c: the plain-C driver for fuzz targets built without libFuzzer. It runs
// LLVMFuzzerTestOneInput on every file named on the command line, or in the
// directories named there, like a libFuzzer binary given files instead of a corpus to
// grow. Exits non-zero (or crashes, as the target does) on the first failing input.
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return 1;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
  size_t got = fread(buf, 1, (size_t)n, f);
  fclose(f);
  fprintf(stderr, "replay: %s (%zu bytes)\n", path, got);
  LLVMFuzzerTestOneInput(buf, got);
  free(buf);
  return 0;
}

static int run_path(const char *path, int *count) {
  struct stat st;
  if (stat(path, &st) != 0) {
    perror(path);
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    (*count)++;
    return run_file(path);
  }
  struct dirent **names;
  int n = scandir(path, &names, NULL, alphasort);  // sorted: the same order every run
  int rc = 0;
  for (int i = 0; i < n; i++) {
    if (names[i]->d_name[0] != '.') {
      char sub[4096];
      snprintf(sub, sizeof sub, "%s/%s", path, names[i]->d_name);
      rc |= run_path(sub, count);
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  int count = 0, rc = 0;
  for (int i = 1; i < argc; i++)
    if (argv[i][0] != '-') rc |= run_path(argv[i], &count);
  printf("replayed %d inputs without a failure\n", count);
  return rc;
}
