// ring.h: a per-CPU multi-producer, single-consumer ring.
//
// Producers offer into the shard of the CPU (or mm_cid) they run on; one consumer
// polls every shard, round-robin, so no shard starves. Positions (head, tail) are
// free-running uintptr_t counters; a shard holds the items of positions [tail, head),
// at most `capacity` of them. The modes differ in how a producer takes a position:
//
//   RSEQ  a per-CPU buffer: one rseq critical section, inlined at its call site
//         (ring.c), checks the position against the shard's cached limit, writes the
//         item into its slot and commits by storing head + 1: no locked instruction,
//         and a producer preempted mid-offer is aborted, never holding a slot the
//         consumer waits for. A batch offer writes up to 64 slots and commits them
//         with the same one store. The consumer reads head (acquire) only when its
//         own copy of it runs out, and frees slots by publishing tail; producers
//         reread tail only when their cached limit (tail + capacity) runs out.
//   CAS   the reference: a bounded MPSC queue per shard (Vyukov's): each slot holds
//         a sequence number and the payload; producers claim positions with a CAS on
//         the head and publish each slot's seq, the consumer takes slots in order
//         while their seq says committed and gives each back for the next lap. Correct
//         for any number of producers on any shard.
//
// Memory layout (one shard per possible CPU, each part 128 bytes apart: x86 cores
// prefetch lines in pairs), then its slots:
//
//   shard[c]:  | producers: head, slots, mask, stride, record_size, limit |
//              | consumer: its tail, slots, its copy of head | published tail | counters |
//   slot:      RSEQ: | payload |  (2 x capacity slots: a producer filling the shard
//                                  writes half a ring away from the consumer's lines)
//              CAS:  | seq | payload |  (capacity slots)
//   payload:   a pointer, or a record of record_size bytes; slots are 8 to 128 bytes,
//              a power of two: no slot straddles two lines.
//
// Positions wrap around at 2^64 (tests start them just below the wrap point).
//
// Guarantees (tested in ring_test.c): every offered item is polled exactly once;
// FIFO per producer while it stays on one CPU; an offer never overwrites an unread
// item and never blocks; FULL and EMPTY are exact at the capacity boundaries.
#ifndef CCACHE_RING_RING_H_
#define CCACHE_RING_RING_H_

#include <stddef.h>
#include <stdint.h>

#include "rseq/rseq.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  RING_OK = 0,
  RING_FULL = 1,   // ring_offer: the shard of this CPU holds capacity unread items
  RING_EMPTY = 2,  // ring_poll: no shard holds a committed item
};

#define RING_RECORD_MAX 64

struct ring_options {
  enum rseq_mode mode;    // RSEQ, CAS or AUTO
  enum rseq_index index;  // cpu_id or mm_cid
  // 0: items are pointers (ring_offer/ring_poll). 1..64: fixed-size records
  // (ring_offer_record/ring_poll_record).
  size_t record_size;
  // Tests: the starting value of every head and tail (to start just below the wrap).
  uintptr_t initial_position;
};

struct ring;

// capacity_per_cpu must be a power of two >= 2; else NULL with errno EINVAL. Also
// EINVAL for a record_size over 64 or an invalid mode/index; ENOSYS/EOPNOTSUPP when
// RSEQ mode was requested but cannot be had; ENOMEM.
struct ring *ring_create(size_t capacity_per_cpu, const struct ring_options *options);
void ring_destroy(struct ring *r);

// The mode the ring runs in, and why it is CAS when it is ("" for RSEQ).
enum rseq_mode ring_mode(const struct ring *r);
enum rseq_index ring_index(const struct ring *r);
const char *ring_mode_reason(const struct ring *r);
int ring_shards(const struct ring *r);
size_t ring_capacity(const struct ring *r);
// Bytes one item takes in a shard's slots (a power of two, 8 to 128): RSEQ mode the
// payload, CAS mode its sequence number and the payload. Items cross from a producer's
// core to the consumer's in lines of 64 bytes, 64 / ring_slot_bytes at a time.
size_t ring_slot_bytes(const struct ring *r);

// Producers (any thread, and async-signal-safe: no locks, no allocation).
// RING_OK or RING_FULL; -1 with errno EINVAL on a ring of the other payload kind.
int ring_offer(struct ring *r, void *item);
// Offers items in order until one is refused; returns how many were offered (0 with
// errno EINVAL on a record ring). RSEQ mode commits each run of up to 64 that fits in
// the shard with one section.
size_t ring_offer_batch(struct ring *r, void *const *items, size_t n);
int ring_offer_record(struct ring *r, const void *record);
// ring_offer_batch for records: offers records [0, n) (record_size bytes each, back to
// back) in order until one is refused; returns how many were offered (0 with errno
// EINVAL on a pointer ring). RSEQ mode commits each run of up to 64 that fits in the
// shard with one section (ring_offer_record_batch).
size_t ring_offer_record_batch(struct ring *r, const void *records, size_t n);

// The consumer (one thread at a time). RING_OK or RING_EMPTY; -1 with errno EINVAL on
// a ring of the other payload kind, or (builds without NDEBUG) -1 with errno EPERM and
// a message on stderr when a second thread polls while another is the consumer.
int ring_poll(struct ring *r, void **item);
// Like ring_poll, and tells which shard the item came from (for FIFO checks).
int ring_poll_shard(struct ring *r, void **item, int *shard);
// Polls up to max items, round-robin over the shards: from each shard a run of up to
// max(max / shards + 1, RING_POLL_RUN_MIN) items, with one tail publication; returns
// how many (or -1 as above). The next call starts at the shard after the last one
// visited, so no shard starves across calls.
#define RING_POLL_RUN_MIN 8
long ring_poll_batch(struct ring *r, void **items, size_t max);
int ring_poll_record(struct ring *r, void *record);
// ring_poll_batch for records: up to max records, back to back, into `records`.
long ring_poll_record_batch(struct ring *r, void *records, size_t max);
// Hands the consumer role on: the next thread that polls becomes the consumer.
void ring_consumer_release(struct ring *r);

struct ring_cpu_stats {
  uint64_t offered;  // items committed into this shard
  uint64_t polled;   // items the consumer took from it
  uint64_t full;     // offers refused because it was full
};

struct ring_stats {
  const char *offer_section;  // the critical section that commits offers (RSEQ mode)
  uint64_t offer_commits;     // offers committed, all shards
  uint64_t offer_aborts;      // offer sections the kernel aborted (RSEQ mode)
  uint64_t offer_retries;     // offers retried: CAS mode, the head moved under the CAS;
                              // RSEQ mode, the cached limit ran out but the consumer had
                              // freed slots (the limit was refreshed)
};

// TESTS ONLY (abortscan's workload, ring_test): writes the item `value` into the `n`
// slots from the head of `shard` on, without moving the head: what an aborted section
// leaves behind (its try-stores, and no commit). On a record ring each planted record
// is the 8 bytes of `value` (little-endian) repeated over its record_size bytes. The
// sections that commit next write over them; no planted item may ever be polled. Call
// it only while no producer offers into that shard. 0, or -1 with errno EINVAL: not an
// RSEQ ring, shard out of range, or n + the items the shard holds + 1 over its
// capacity.
int ring_debug_plant_leftovers(struct ring *r, int shard, size_t n, uintptr_t value);

// TESTS ONLY (ring/stale_limit_test): stores the limit that offer_refresh_limit stores
// when it read the shard's tail at the moment its `polled` count (ring_cpu_stats) was
// `polled_before`, and was delayed until now before its store: what any thread that
// refreshes a limit may do, on any CPU, at any time. Producers must then never commit
// past the capacity. 0, or -1 with errno EINVAL: not an RSEQ ring, shard out of range,
// or polled_before ahead of the shard's polled count.
int ring_debug_store_stale_limit(struct ring *r, int shard, uint64_t polled_before);

// Per-shard counters (shard in [0, ring_shards)); -1 with errno EINVAL when out of range.
int ring_cpu_stats(const struct ring *r, int shard, struct ring_cpu_stats *out);
void ring_stats(const struct ring *r, struct ring_stats *out);

#ifdef __cplusplus
}
#endif

#endif  // CCACHE_RING_RING_H_
