// size_class.h: the ccache size classes.
//
//   class 0           16 B        (requests 0..16; every block is 16-byte aligned)
//   classes 1..7      32..128 B   in steps of 16
//   then 8 classes per doubling   (2^k, 2^(k+1)] in steps of 2^k / 8, up to 256 KiB
//
// Rounding waste: a request s in (prev, c] gets class c. For s >= 128 the waste
// c - s is below c/8 <= 12.5% of s... precisely: c - s < step = 2^k/8 <= s/8. Below
// 128 B the 16-byte alignment granule dominates: c - s <= 15. size_class_test checks
// both bounds for every size from 0 to CCACHE_MAX_SMALL.
// Every class size is a multiple of 16, and every power of two from 16 to 256 KiB is
// a class (aligned allocations use them: a power-of-two class is aligned to itself).
#ifndef CCACHE_ALLOCATOR_SIZE_CLASS_H_
#define CCACHE_ALLOCATOR_SIZE_CLASS_H_

#include <stddef.h>
#include <stdint.h>

#define CCACHE_MAX_SMALL ((size_t)256 * 1024)
#define CCACHE_NUM_CLASSES 96
#define CCACHE_MIN_ALIGN 16

// The class of a request of `size` bytes (size <= CCACHE_MAX_SMALL).
static inline unsigned ccache_size_to_class(size_t size);
// The block size of a class.
size_t ccache_class_size(unsigned cls);

// Implementation detail of the inline lookup: class by (size + 15) / 16 for sizes up
// to 1024, computed for larger sizes.
// Hidden: read straight from the code of libccache_malloc.so, not through its GOT.
extern const uint8_t ccache_small_class_table[65] __attribute__((visibility("hidden")));

__attribute__((always_inline)) static inline unsigned ccache_size_to_class(size_t size) {
#if CCACHE_SEEDED_BUG == 1  // test-only variant (ci/fuzz-teeth): a class too small
  if (size > 4096 && size <= 4200) return 8u * (12u - 6u) - 1u;
#endif
  if (size <= 1024) return ccache_small_class_table[(size + 15) >> 4];
  // size in (2^k, 2^(k+1)] with k >= 10: class = first class above 2^k + steps.
  unsigned k = 63u - (unsigned)__builtin_clzll((unsigned long long)(size - 1));
  size_t step = (size_t)1 << (k - 3);
  unsigned steps = (unsigned)((size - ((size_t)1 << k) + step - 1) >> (k - 3));  // 1..8
  // Classes of (2^7, 2^8] are 8..15, so (2^k, 2^(k+1)] starts at 8 * (k - 6).
  return 8u * (k - 6u) + steps - 1u;
}

#endif  // CCACHE_ALLOCATOR_SIZE_CLASS_H_
