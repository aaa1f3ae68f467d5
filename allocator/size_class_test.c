// size_class_test: for every size from 0 to 256 KiB, the class fits the request, the
// rounding waste is bounded (12.5% of the request from 128 B on; one 16-byte granule
// below), classes are multiples of 16 and ascending, every power of two is a class.
#include <stdio.h>

#include "allocator/size_class.h"
#include "rseq/testing.h"

int main(int argc, char **argv) {
  test_init(argc, argv);
  double worst = 0;
  size_t worst_size = 0;
  for (unsigned c = 0; c < CCACHE_NUM_CLASSES; c++) {
    size_t cs = ccache_class_size(c);
    CHECK(cs % 16 == 0, "class %u size %zu", c, cs);
    if (c) CHECK(cs > ccache_class_size(c - 1), "class %u not ascending", c);
    CHECK_EQ(ccache_size_to_class(cs), c);
  }
  CHECK_EQ(ccache_class_size(CCACHE_NUM_CLASSES - 1), CCACHE_MAX_SMALL);
  CHECK_EQ(ccache_class_size(CCACHE_NUM_CLASSES), 0);
  for (size_t s = 0; s <= CCACHE_MAX_SMALL; s++) {
    unsigned c = ccache_size_to_class(s);
    CHECK(c < CCACHE_NUM_CLASSES, "size %zu -> class %u", s, c);
    size_t cs = ccache_class_size(c);
    CHECK(cs >= s, "size %zu -> class %u of %zu bytes: too small", s, c, cs);
    if (c) CHECK(ccache_class_size(c - 1) < s, "size %zu: class %u is not the smallest fit", s, c);
    size_t waste = cs - s;
    if (s >= 128) {
      CHECK(waste * 8 <= s, "size %zu -> %zu: waste %zu over 12.5%%", s, cs, waste);
      double w = (double)waste / (double)s;
      if (w > worst) {
        worst = w;
        worst_size = s;
      }
    } else {
      CHECK(waste <= 15 || s == 0, "size %zu -> %zu: waste %zu over one granule", s, cs, waste);
    }
  }
  for (size_t p = 16; p <= CCACHE_MAX_SMALL; p *= 2)
    CHECK_EQ(ccache_class_size(ccache_size_to_class(p)), p);
  printf("ok: %d classes; worst waste from 128 B on: %.2f%% (size %zu); below 128 B at most 15 B\n",
         CCACHE_NUM_CLASSES, worst * 100, worst_size);
  printf("PASS\n");
  return 0;
}
