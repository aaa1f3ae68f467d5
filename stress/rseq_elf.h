// rseq_elf.h: the rseq critical sections of any x86-64 ELF object, read from the
// file alone: its __rseq_cs_ptr_array (a pointer per section, to a 32-byte struct
// rseq_cs {u32 version, u32 flags, u64 start_ip, u64 post_commit_offset, u64
// abort_ip}) and, where present, __rseq_exit_point_array (pairs {start_ip, exit_ip}),
// the conventions of the kernel selftests and librseq. Nothing of rseq/ is needed:
// this is how abortscan reads code that we did not write.
//
// The object may be an executable or a shared object, PIE or not. In a PIE or .so the
// table words are 0 in the file and filled in at load time by R_X86_64_RELATIVE (or
// R_X86_64_64 against a defined symbol) relocations; those are applied here. Every
// address below is a link-time virtual address: add the load base for a process.
#ifndef CCACHE_STRESS_RSEQ_ELF_H_
#define CCACHE_STRESS_RSEQ_ELF_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// The signature word every abort handler must have right before abort_ip: the one
// glibc, librseq and the selftests register on x86.
#define RSEQ_ELF_SIG 0x53053053u

struct rseq_elf_section {
  uint64_t desc;          // the descriptor's address
  uint64_t table_entry;   // the __rseq_cs_ptr_array word that points at it
  uint64_t start, post_commit_offset, abort_ip;
  uint32_t version, flags;
  int registry_id;        // our registry's section id, -1 where the object has none
  char name[160];         // "function+0xoff", or "registry-name@function+0xoff"
  char problem[200];      // empty, or why this entry cannot be scanned
};

struct rseq_elf_exit {
  uint64_t start, exit;
};

struct rseq_elf {
  int type;  // ET_EXEC or ET_DYN
  const uint8_t *map;
  size_t size;
  struct rseq_elf_section *sections;
  int nsections;
  struct rseq_elf_exit *exits;
  int nexits;
  bool has_exit_table;
  bool has_registry;
  // Private: relocations (sorted by address) and function symbols.
  struct rseq_elf_reloc *relocs;
  size_t nrelocs;
  struct rseq_elf_symbol *symbols;
  size_t nsymbols;
};

// Reads the object's tables. 0 on success; -1 when the file is not a readable
// x86-64 ELF object, -2 when it has no __rseq_cs_ptr_array (or an empty one); err
// then says why. Entries with a problem (outside any executable segment, abort
// handler without the signature) are kept, with the problem named by address.
int rseq_elf_open(const char *path, struct rseq_elf *e, char *err, size_t err_size);
void rseq_elf_close(struct rseq_elf *e);

// The file bytes of [vaddr, vaddr + n), which must lie in one PT_LOAD segment's file
// image. 0 on success, -1 otherwise.
int rseq_elf_read(const struct rseq_elf *e, uint64_t vaddr, void *buf, size_t n);
// Up to `max` file bytes from vaddr on, stopping at the end of the PT_LOAD segment's
// file image that holds vaddr: how many were copied (0: vaddr is in no segment). For
// reading code to disassemble, which may end less than `max` bytes before the
// segment does (an abort handler that is the last instruction of an object's text).
size_t rseq_elf_read_some(const struct rseq_elf *e, uint64_t vaddr, void *buf, size_t max);
// Whether [vaddr, vaddr + n) lies in an executable PT_LOAD segment.
bool rseq_elf_executable(const struct rseq_elf *e, uint64_t vaddr, size_t n);
// "function+0xoff" for the function symbol that holds vaddr, else "0x<vaddr>".
void rseq_elf_describe(const struct rseq_elf *e, uint64_t vaddr, char *out, size_t size);
// The entry of the function symbol that holds vaddr; 0 if none does.
uint64_t rseq_elf_function_start(const struct rseq_elf *e, uint64_t vaddr);
// The value of the defined symbol `name` (any type; .symtab, then .dynsym); 0 if none.
uint64_t rseq_elf_symbol(const struct rseq_elf *e, const char *name);
// The link-time address that the mapping at file offset 0 corresponds to (the first
// PT_LOAD's page): load base = that mapping's start - this.
uint64_t rseq_elf_first_page(const struct rseq_elf *e);

#endif  // CCACHE_STRESS_RSEQ_ELF_H_
