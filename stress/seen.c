// seen.c: see seen.h.
#include "stress/seen.h"

#include <stdlib.h>
#include <string.h>

#include "rseq/testing.h"

void seen_init(struct seen *s, int producers) {
  s->producers = producers;
  s->bits = calloc((size_t)producers, sizeof *s->bits);
  s->bytes = calloc((size_t)producers, sizeof *s->bytes);
  CHECK(s->bits && s->bytes, "seen_init(%d)", producers);
}

bool seen_mark(struct seen *s, int producer, uint64_t seq) {
  size_t byte = seq / 8;
  if (byte >= s->bytes[producer]) {  // grow to twice what is needed now
    size_t n = (byte + 1) * 2;
    s->bits[producer] = realloc(s->bits[producer], n);
    CHECK(s->bits[producer] != NULL, "seen_mark: %zu bytes", n);
    memset(s->bits[producer] + s->bytes[producer], 0, n - s->bytes[producer]);
    s->bytes[producer] = n;
  }
  unsigned char *b = &s->bits[producer][byte], bit = (unsigned char)(1u << (seq % 8));
  if (*b & bit) return false;
  *b |= bit;
  return true;
}

void seen_free(struct seen *s) {
  for (int p = 0; p < s->producers; p++) free(s->bits[p]);
  free(s->bits);
  free(s->bytes);
}
