// size_class_fuzzer: size -> class -> size round trips and bounds, for sizes the fuzzer
// picks (8 bytes of input each), including the aligned-allocation rounding.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocator/size_class.h"

static void fail(size_t size, const char *what) {
  fprintf(stderr, "size_class_fuzzer: size %zu: %s\n", size, what);
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
  for (size_t i = 0; i + 8 <= len; i += 8) {
    uint64_t raw;
    memcpy(&raw, data + i, 8);
    size_t size = (size_t)(raw % (CCACHE_MAX_SMALL + 1));
    unsigned c = ccache_size_to_class(size);
    if (c >= CCACHE_NUM_CLASSES) fail(size, "class out of range");
    size_t cs = ccache_class_size(c);
    if (cs < size) fail(size, "class smaller than the request");
    if (c > 0 && ccache_class_size(c - 1) >= size && size > 0) fail(size, "not the smallest class that fits");
    if (cs % 16) fail(size, "class size not a multiple of 16");
    if (ccache_size_to_class(cs) != c) fail(size, "class size does not map back to its class");
    if (size >= 128 && (cs - size) * 8 > size) fail(size, "waste over 12.5%");
    if (size < 128 && cs - size > 15 && size > 0) fail(size, "waste over one granule");
    // Aligned allocations round up to a power of two: that must be a class too.
    size_t p2 = 16;
    while (p2 < size) p2 <<= 1;
    if (p2 <= CCACHE_MAX_SMALL && ccache_class_size(ccache_size_to_class(p2)) != p2)
      fail(size, "a power of two is not a class");
  }
  return 0;
}
