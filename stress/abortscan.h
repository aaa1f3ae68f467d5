// abortscan.h: what abortscan's two modes share (stress/abortscan.c: our workload and
// its registry; stress/abortscan_object.c: any ELF object and any command).
#ifndef CCACHE_STRESS_ABORTSCAN_H_
#define CCACHE_STRESS_ABORTSCAN_H_

#include <capstone/capstone.h>
#include <stdbool.h>

// Whether the instruction stores to memory (Intel syntax, capstone's default: the
// first operand is the destination).
bool abortscan_writes_memory(const cs_insn *insn);

// abortscan --object PATH ... -- CMD ARGS...: argv as main's.
int abortscan_object_main(int argc, char **argv);

#endif  // CCACHE_STRESS_ABORTSCAN_H_
