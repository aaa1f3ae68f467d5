#include "allocator/size_class.h"

// Class sizes: 16, 32 .. 128 in steps of 16 (classes 0..7), then 8 per doubling.
static size_t class_size_of(unsigned cls) {
  if (cls < 8) return 16 * (size_t)(cls + 1);
  unsigned k = 7 + (cls - 8) / 8;  // (2^k, 2^(k+1)]
  unsigned step_index = (cls - 8) % 8 + 1;
  return ((size_t)1 << k) + step_index * ((size_t)1 << (k - 3));
}

size_t ccache_class_size(unsigned cls) {
  return cls < CCACHE_NUM_CLASSES ? class_size_of(cls) : 0;
}

// (size + 15) / 16 -> class, for sizes 0..1024 (classes up to 1024 B are all
// multiples of 16, so a 16-byte granule decides the class exactly).
const uint8_t ccache_small_class_table[65] = {
    0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23,
    23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 27, 27, 27,
    27, 28, 28, 28, 28, 29, 29, 29, 29, 30, 30, 30, 30, 31, 31, 31,
    31,
};

_Static_assert(CCACHE_NUM_CLASSES == 8 + 8 * 11, "classes up to 2^18");
