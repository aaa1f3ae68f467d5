// abortscan.h: what abortscan's two modes share (stress/abortscan.c: our workload and
// its registry; stress/abortscan_object.c: any ELF object and any command).
#ifndef CCACHE_STRESS_ABORTSCAN_H_
#define CCACHE_STRESS_ABORTSCAN_H_

#include <capstone/capstone.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Whether the instruction stores to memory (Intel syntax, capstone's default: the
// first operand is the destination).
bool abortscan_writes_memory(const cs_insn *insn);

struct rseq_elf;
// Every branch in [start, end) that leaves the section for anywhere but abort_ip must
// be listed in the object's __rseq_exit_point_array (debuggers and tools step over
// sections with it). Returns ABORTSCAN_EXIT_UNLISTED, with why filled in, for the first
// one that is not. With follow_stubs (foreign objects), a branch to a teardown stub
// that then jumps to a listed exit counts as listed, and ABORTSCAN_EXIT_VIA_STUB says
// so in why: librseq's memcpy sections leave through such stubs (in __rseq_failure:
// restore the registers the section borrowed, then jmp to the C label the table
// lists). A stub is at most 8 instructions of mov, movzx, movsx, movsxd, lea, xor, and,
// or, add, sub, nop and endbr64, none with a memory destination, then a direct jmp.
enum { ABORTSCAN_EXIT_LISTED, ABORTSCAN_EXIT_UNLISTED, ABORTSCAN_EXIT_VIA_STUB };
int abortscan_unlisted_exit(const struct rseq_elf *e, csh cs, bool follow_stubs,
                            const cs_insn *insn, size_t count, uint64_t start, uint64_t end,
                            uint64_t abort_ip, char *why, size_t why_size);

// abortscan --object PATH ... -- CMD ARGS...: argv as main's.
int abortscan_object_main(int argc, char **argv);

#endif  // CCACHE_STRESS_ABORTSCAN_H_
