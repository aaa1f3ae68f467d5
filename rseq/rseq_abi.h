// rseq_abi.h: the kernel's rseq ABI, written out here so that the package does not
// depend on which uapi headers the build machine happens to have. Checked against
// /usr/include/linux/rseq.h by rseq/abi_test.c.
#ifndef CCACHE_RSEQ_RSEQ_ABI_H_
#define CCACHE_RSEQ_RSEQ_ABI_H_

#include <stdint.h>

// x86-64 syscall number.
#define RSEQ_SYSCALL_NR 334

// The signature the kernel checks in the 4 bytes before every abort_ip. On x86 the
// word is emitted as the operand of `ud1 0x53053053(%rip), %edi` (bytes 0f b9 3d +
// signature) so that straying into it traps. glibc registers with the same value.
#define RSEQ_SIG 0x53053053u

#define RSEQ_FLAG_UNREGISTER 1

// cpu_id values of an area that is not registered.
#define RSEQ_CPU_ID_UNINITIALIZED (-1)
#define RSEQ_CPU_ID_REGISTRATION_FAILED (-2)

// getauxval() keys (Linux 6.3+).
#define RSEQ_AT_FEATURE_SIZE 27
#define RSEQ_AT_ALIGN 28

// The critical-section descriptor (struct rseq_cs): 32 bytes, 32-byte aligned.
struct rseq_cs_desc {
  uint32_t version;  // 0
  uint32_t flags;    // 0
  uint64_t start_ip;
  uint64_t post_commit_offset;  // length of [start_ip, post_commit_ip)
  uint64_t abort_ip;
} __attribute__((aligned(32)));

// The per-thread area (struct rseq). The kernel owns cpu_id_start, cpu_id, node_id
// and mm_cid while the area is registered: we never write them then.
struct rseq_abi {
  uint32_t cpu_id_start;
  uint32_t cpu_id;
  uint64_t rseq_cs;  // pointer to the active rseq_cs_desc, or 0
  uint32_t flags;
  uint32_t node_id;
  uint32_t mm_cid;
  uint32_t padding;
} __attribute__((aligned(32)));

#define RSEQ_ABI_OFFSET_CPU_ID_START 0
#define RSEQ_ABI_OFFSET_CPU_ID 4
#define RSEQ_ABI_OFFSET_RSEQ_CS 8
#define RSEQ_ABI_OFFSET_NODE_ID 20
#define RSEQ_ABI_OFFSET_MM_CID 24

_Static_assert(sizeof(struct rseq_cs_desc) == 32, "rseq_cs is 32 bytes");
_Static_assert(sizeof(struct rseq_abi) == 32, "the original rseq area is 32 bytes");
_Static_assert(__builtin_offsetof(struct rseq_abi, cpu_id) == RSEQ_ABI_OFFSET_CPU_ID, "abi");
_Static_assert(__builtin_offsetof(struct rseq_abi, rseq_cs) == RSEQ_ABI_OFFSET_RSEQ_CS, "abi");
_Static_assert(__builtin_offsetof(struct rseq_abi, mm_cid) == RSEQ_ABI_OFFSET_MM_CID, "abi");

#endif  // CCACHE_RSEQ_RSEQ_ABI_H_
