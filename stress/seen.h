// seen.h: exactly-once bookkeeping for the stress consumers: a growing bitmap of
// sequence numbers per producer.
#ifndef CCACHE_STRESS_SEEN_H_
#define CCACHE_STRESS_SEEN_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct seen {
  int producers;
  unsigned char **bits;  // [producers][bytes[p]]
  size_t *bytes;
};

void seen_init(struct seen *s, int producers);
// Marks (producer, seq) as seen; false when it already was. producer must be in
// [0, producers).
bool seen_mark(struct seen *s, int producer, uint64_t seq);
void seen_free(struct seen *s);

#endif  // CCACHE_STRESS_SEEN_H_
