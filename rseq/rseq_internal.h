// rseq_internal.h: the section table and the counting hooks, shared by the files of
// rseq/, by the inlined sections of rseq/slab.h (which expand in allocator/) and by the
// ring's inlined sections (ring/ring.c). Not an interface for anything else.
#ifndef CCACHE_RSEQ_RSEQ_INTERNAL_H_
#define CCACHE_RSEQ_RSEQ_INTERNAL_H_

#include <stdint.h>

#include "rseq/rseq.h"

// Every critical section linked into a product binary: X(id, name, injection points
// bitmask). The id indexes the counters; the name is the stable name in the registry.
// The primitives (0..7) are out-of-line functions of primitives.c, one section each.
// The slab sections (8..11) are inlined at their call site in allocator/, one section
// per call site (rseq/slab.h), and the ring's offer sections (12..14) at theirs in
// ring/ring.c: each has its own descriptor, pointer-array entry, id and name here, so
// abortscan, the stress jobs and the campaign list them like the primitives.
#define RSEQ_SECTIONS(X)                                      \
  X(0, rseq_addv, 0x2)                                        \
  X(1, rseq_cmpeqv_storev, 0x6)                               \
  X(2, rseq_cmpnev_storeoffp_load, 0x6)                       \
  X(3, rseq_cmpeqv_trystorev_storev, 0x6)                     \
  X(4, rseq_cmpeqv_trymemcpy_storev, 0x6)                     \
  X(5, rseq_offset_deref_addv, 0x2)                           \
  X(6, rseq_percpu_stack_pop, 0x6)                            \
  X(7, rseq_percpu_stack_push, 0x6)                           \
  X(8, ccache_malloc_pop, 0xe)                                \
  X(9, ccache_free_push, 0xe)                                 \
  X(10, ccache_refill_push, 0xe)                              \
  X(11, ccache_overflow_pop, 0xe)                             \
  X(12, ring_offer, 0x6)                                      \
  X(13, ring_offer_record, 0x6)                               \
  X(14, ring_offer_batch, 0x6)                                \
  X(15, ring_offer_record_batch, 0x6)

enum rseq_section_id {
#define RSEQ_SECTION_ENUM_(id, name, points) RSEQ_SECTION_ID_##name = id,
  RSEQ_SECTIONS(RSEQ_SECTION_ENUM_)
#undef RSEQ_SECTION_ENUM_
};

#define RSEQ_SECTION_MAX RSEQ_SECTION_MAX_IDS

// The ELF tables that RSEQ_ASM_DEFINE_TABLE and RSEQ_ASM_DEFINE_EXIT_POINT fill
// (rseq_asm.h), through the linker's __start_/__stop_ symbols. Weak and hidden: each
// binary and each shared object sees its own, and one without sections has none.
#define RSEQ_LINKER_SYMBOL __attribute__((weak, visibility("hidden")))
struct rseq_exit_point {
  uint64_t start_ip, exit_ip;
};
extern const struct rseq_cs_desc *const __start___rseq_cs_ptr_array[] RSEQ_LINKER_SYMBOL;
extern const struct rseq_cs_desc *const __stop___rseq_cs_ptr_array[] RSEQ_LINKER_SYMBOL;
extern const struct rseq_exit_point __start___rseq_exit_point_array[] RSEQ_LINKER_SYMBOL;
extern const struct rseq_exit_point __stop___rseq_exit_point_array[] RSEQ_LINKER_SYMBOL;

// Set by rseq_inject_set_loops(); read by the delay loops inside sections (inject
// variant). Hidden so the asm can address it %rip-relative from any object.
extern volatile uint32_t rseq_inject_loops[RSEQ_INJECT_POINTS + 1]
    __attribute__((visibility("hidden")));

// Counters, called in C before and after the asm of each section.
void rseq_count_entered(int id, enum rseq_index index, int cpu) __attribute__((visibility("hidden")));
void rseq_count_committed(int id) __attribute__((visibility("hidden")));
void rseq_count_aborted(int id) __attribute__((visibility("hidden")));
void rseq_count_cmpfail(int id) __attribute__((visibility("hidden")));
// Blocking injection (inject variant): called before every section.
void rseq_inject_block_maybe(void) __attribute__((visibility("hidden")));

#endif  // CCACHE_RSEQ_RSEQ_INTERNAL_H_
