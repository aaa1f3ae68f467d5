// rseq_asm.h: the x86-64 asm building blocks of every critical section, and the C that
// runs right before and after each one (counters, hooks, TSan edges). Used by
// primitives.c, the inlined slab sections of rseq/slab.h and the deliberately broken
// sections of the abortscan self-test. See primitives.c for the discipline.
#ifndef CCACHE_RSEQ_RSEQ_ASM_H_
#define CCACHE_RSEQ_RSEQ_ASM_H_

#include <stdint.h>

#include "rseq/rseq.h"
#include "rseq/rseq_internal.h"
#include "sanitizers/sanitizers.h"

#define RSEQ_STR_(x) #x
#define RSEQ_STR(x) RSEQ_STR_(x)

// Labels inside each asm statement: 1 start_ip, 2 post_commit_ip, 3 descriptor,
// 4 abort_ip, 5 name string; 6n/7n injection point n; 8x memcpy loops; 9 the table
// entry that the code keeps alive (below).

// Keeps the table entry just defined (label 9) for as long as the code that holds the
// asm statement is linked: an R_X86_64_NONE relocation from the code to it, which
// changes no byte. Nothing else refers to __rseq_cs_ptr_array, rseq_registry or
// __rseq_exit_point_array, so a link with --gc-sections (Bazel's -c opt does) dropped
// them: until 2026-12-04 the -c opt libccache_malloc.so had no __rseq_cs_ptr_array,
// no registry and no exit points, and abortscan --object refused it.
#define RSEQ_ASM_KEEP_ENTRY_ ".reloc ., R_X86_64_NONE, 9b\n\t"

// The descriptor, its pointer, the registry entry and the section's name.
#define RSEQ_ASM_DEFINE_TABLE(name)                                   \
  ".pushsection __rseq_cs, \"aw\"\n\t"                                \
  ".balign 32\n\t"                                                    \
  "3:\n\t"                                                            \
  ".long 0, 0\n\t"                                                    \
  ".quad 1f, (2f - 1f), 4f\n\t"                                       \
  ".popsection\n\t"                                                   \
  ".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"                      \
  ".balign 8\n\t"                                                     \
  "9: .quad 3b\n\t"                                                   \
  ".popsection\n\t"                                                   \
  RSEQ_ASM_KEEP_ENTRY_                                                \
  ".pushsection rseq_registry, \"aw\"\n\t"                            \
  ".balign 8\n\t"                                                     \
  "9: .quad 3b, 5f, %c[id]\n\t"                                       \
  ".popsection\n\t"                                                   \
  RSEQ_ASM_KEEP_ENTRY_                                                \
  ".pushsection .rodata.rseq_names, \"a\"\n\t"                        \
  "5: .asciz \"" name "\"\n\t"                                        \
  ".popsection\n\t"

// A jump out of the section other than the abort (debuggers and abortscan read these).
// `start` is "1f" before the start label and "1b" after it.
#define RSEQ_ASM_DEFINE_EXIT_POINT(start, exit_label)  \
  ".pushsection __rseq_exit_point_array, \"aw\"\n\t"   \
  ".balign 8\n\t"                                      \
  "9: .quad " start ", %l[" #exit_label "]\n\t"        \
  ".popsection\n\t"                                    \
  RSEQ_ASM_KEEP_ENTRY_

// Arm the section (rseq_cs = &descriptor; before start_ip, so not part of it), then
// start it with the CPU comparison.
#define RSEQ_ASM_START                        \
  "leaq 3b(%%rip), %%rax\n\t"                 \
  "movq %%rax, 8(%[area])\n\t"                \
  "1:\n\t"                                    \
  "cmpl %[cpu], (%[idx])\n\t"                 \
  "jnz 4f\n\t"

// The abort handler: the signature word right before abort_ip, then a jump to C.
#define RSEQ_ASM_DEFINE_ABORT                 \
  ".pushsection __rseq_failure, \"ax\"\n\t"   \
  ".byte 0x0f, 0xb9, 0x3d\n\t"                \
  ".long 0x53053053\n\t"                      \
  "4:\n\t"                                    \
  "jmp %l[abort]\n\t"                         \
  ".popsection\n\t"

#ifdef RSEQ_INJECT
// A register-only busy loop whose count is read from rseq_inject_loops[n] (a load,
// which is harmless to repeat). r10 is clobbered only in this variant.
#define RSEQ_INJECT_ASM(n)                                  \
  "movl rseq_inject_loops+4*" #n "(%%rip), %%r10d\n\t"      \
  "testl %%r10d, %%r10d\n\t"                                \
  "jz 7" #n "f\n\t"                                         \
  "6" #n ":\n\t"                                            \
  "decl %%r10d\n\t"                                         \
  "jnz 6" #n "b\n\t"                                        \
  "7" #n ":\n\t"
#define RSEQ_INJECT_CLOBBER , "r10"
#else
#define RSEQ_INJECT_ASM(n) ""
#define RSEQ_INJECT_CLOBBER
#endif

#ifdef RSEQ_COMPARE_TWICE
// Right before the commit: if the CPU or the compared value changed, the kernel failed
// to abort the section. Jump out (an exit point) to C, which reports and aborts.
#define RSEQ_ASM_CMP_CPU_TWICE            \
  RSEQ_ASM_DEFINE_EXIT_POINT("1b", error_cpu)   \
  "cmpl %[cpu], (%[idx])\n\t"             \
  "jnz %l[error_cpu]\n\t"
#define RSEQ_ASM_CMP_VALUE_TWICE                \
  RSEQ_ASM_DEFINE_EXIT_POINT("1b", error_value)       \
  "cmpq (%[v]), %[expect]\n\t"                  \
  "jnz %l[error_value]\n\t"
#else
#define RSEQ_ASM_CMP_CPU_TWICE ""
#define RSEQ_ASM_CMP_VALUE_TWICE ""
#endif

// Inlined sections (rseq/slab.h, ring/ring.c) in the compare-twice variants: the goto
// label of RSEQ_ASM_CMP_CPU_TWICE, and the C block it jumps to. Elsewhere no
// instruction jumps there, and the fast path must not carry a call to the report.
#ifdef RSEQ_COMPARE_TWICE
#define RSEQ_ASM_GOTO_ERROR_CPU , error_cpu
#define RSEQ_ASM_ERROR_CPU_BLOCK(name, cpu) \
  error_cpu:                                \
  rseq_compare_twice_failed_(#name, "the cpu", cpu);
#else
#define RSEQ_ASM_GOTO_ERROR_CPU
#define RSEQ_ASM_ERROR_CPU_BLOCK(name, cpu)
#endif

#define RSEQ_NOINLINE __attribute__((noinline))

// Before and after every section, in C.
#if defined(RSEQ_STATS) || defined(RSEQ_INJECT) || defined(RSEQ_COMPARE_TWICE)
#define RSEQ_COUNTING 1
#else
#define RSEQ_COUNTING 0
#endif

// Before and after every section, in C (never inside the asm). `tsan_slot` is the
// per-CPU word the section commits to: TSan is told that whatever this thread wrote
// before the section is released through it, and acquired after it, so a thread whose
// section ran after ours on this CPU (the kernel serializes them) sees our writes.
static inline __attribute__((always_inline)) void rseq_section_enter_(int id, enum rseq_index index,
                                                                    int cpu, void *tsan_slot) {
#ifdef RSEQ_INJECT
  rseq_inject_block_maybe();
#endif
  if (RSEQ_COUNTING) rseq_count_entered(id, index, cpu);
  CCACHE_TSAN_RELEASE(tsan_slot);
  (void)id;
  (void)index;
  (void)cpu;
}

static inline __attribute__((always_inline)) int rseq_section_committed_(int id, void *tsan_slot) {
  CCACHE_TSAN_ACQUIRE(tsan_slot);
  if (RSEQ_COUNTING) rseq_count_committed(id);
  (void)id;
  return RSEQ_COMMIT;
}

static inline __attribute__((always_inline)) int rseq_section_cmpfailed_(int id, void *tsan_slot) {
  CCACHE_TSAN_ACQUIRE(tsan_slot);
  if (RSEQ_COUNTING) rseq_count_cmpfail(id);
  (void)id;
  return RSEQ_CMPFAIL;
}

// Every variant counts aborts (the release build too: the abort path is cold).
static inline int rseq_section_aborted_(int id) {
  rseq_count_aborted(id);
  return RSEQ_ABORT;
}

// Compare-twice variants: the CPU or a compared value changed inside a section before
// its commit, so the kernel failed to abort it. Reports and aborts the process.
__attribute__((noreturn, cold)) void rseq_compare_twice_failed_(const char *section,
                                                               const char *what, int cpu)
    __attribute__((visibility("hidden")));

#endif  // CCACHE_RSEQ_RSEQ_ASM_H_
