// interpose_probe: a program that defines, and exports (-rdynamic), functions named as
// libccache_malloc.so's internals are. Under LD_PRELOAD the library must keep calling
// its own: were they exported from it, its calls through the PLT would bind to these
// (the executable comes first in the lookup order), and each of these aborts.
// preload_smoke_test runs it; it exits 0 after small, large and realloc'd blocks.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROBE(name)                                                                      \
  void name(void) {                                                                      \
    static const char msg[] = "interpose_probe: the allocator called the program's " #name \
                              "(): its internal symbols are interposable\n";            \
    if (write(2, msg, sizeof msg - 1) < 0) {                                             \
    }                                                                                    \
    abort();                                                                             \
  }

PROBE(large_alloc)
PROBE(large_free)
PROBE(large_resize)
PROBE(large_usable_size)
PROBE(os_map)
PROBE(os_unmap)
PROBE(os_commit)
PROBE(os_release)
PROBE(central_take)
PROBE(central_give)
PROBE(cpu_cache_refill)
PROBE(cpu_cache_overflow)
PROBE(page_heap_alloc_small)
PROBE(page_heap_free_small)
PROBE(meta_span_alloc)

int main(void) {
  void *p[64];
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < 64; i++) {
      size_t size = i % 8 == 7 ? (size_t)(i + 1) << 16 : (size_t)(i + 1) * 24;  // some large
      if (!(p[i] = malloc(size))) return 1;
      memset(p[i], i, size < 4096 ? size : 4096);
    }
    for (int i = 0; i < 64; i += 2)
      if (!(p[i] = realloc(p[i], (size_t)(i + 1) << 15))) return 1;
    for (int i = 0; i < 64; i++) free(p[i]);
  }
  puts("interpose_probe: ok");
  return 0;
}
