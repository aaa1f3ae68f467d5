#include "sanitizers/sanitizers.h"

const char *ccache_sanitizer_names(void) {
  static const char *const names[16] = {
      "none", "asan", "tsan", "asan+tsan", "msan", "asan+msan", "tsan+msan", "asan+tsan+msan",
      "ubsan", "asan+ubsan", "tsan+ubsan", "asan+tsan+ubsan", "msan+ubsan", "asan+msan+ubsan",
      "tsan+msan+ubsan", "asan+tsan+msan+ubsan"};
  return names[CCACHE_HAVE_ASAN | CCACHE_HAVE_TSAN << 1 | CCACHE_HAVE_MSAN << 2 |
               CCACHE_HAVE_UBSAN << 3];
}
