// elf_test: the ELF-level discipline of every critical section linked into this binary.
//   - the sections __rseq_cs (aligned to 32, writable), __rseq_cs_ptr_array,
//     __rseq_exit_point_array and __rseq_failure (executable) exist in the file;
//   - every descriptor in __rseq_cs is 32-byte aligned, version 0, flags 0, and has
//     exactly one pointer in __rseq_cs_ptr_array and one registry entry;
//   - abort_ip lies outside [start_ip, start_ip + post_commit_offset), and the 7 bytes
//     before it are the signature instruction 0f b9 3d + RSEQ_SIG;
//   - every exit point starts at a descriptor's start_ip and leaves its range;
//   - registry names are unique, and each names the section it points to.
// Built once per library variant (release, stats, inject, debug).
#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rseq/rseq.h"
#include "rseq/rseq_internal.h"
#include "rseq/testing.h"

// The pointer and exit-point tables are declared in rseq_internal.h; the descriptors
// themselves only here.
extern const struct rseq_cs_desc __start___rseq_cs[] RSEQ_LINKER_SYMBOL;
extern const struct rseq_cs_desc __stop___rseq_cs[] RSEQ_LINKER_SYMBOL;

static void check_file_sections(void) {
  int fd = open("/proc/self/exe", O_RDONLY);
  CHECK(fd >= 0);
  struct stat st;
  CHECK(fstat(fd, &st) == 0);
  const unsigned char *f = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  CHECK(f != MAP_FAILED);
  const Elf64_Ehdr *eh = (const Elf64_Ehdr *)f;
  CHECK(memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64);
  const Elf64_Shdr *sh = (const Elf64_Shdr *)(f + eh->e_shoff);
  const char *names = (const char *)f + sh[eh->e_shstrndx].sh_offset;
  struct {
    const char *name;
    uint64_t need_flags, min_align;
    int found;
  } want[] = {
      {"__rseq_cs", SHF_ALLOC | SHF_WRITE, 32, 0},
      {"__rseq_cs_ptr_array", SHF_ALLOC | SHF_WRITE, 8, 0},
      {"__rseq_exit_point_array", SHF_ALLOC | SHF_WRITE, 8, 0},
      {"__rseq_failure", SHF_ALLOC | SHF_EXECINSTR, 1, 0},
  };
  for (int i = 0; i < eh->e_shnum; i++) {
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
      if (strcmp(names + sh[i].sh_name, want[w].name) != 0) continue;
      want[w].found++;
      CHECK((sh[i].sh_flags & want[w].need_flags) == want[w].need_flags, "%s flags 0x%lx",
            want[w].name, (unsigned long)sh[i].sh_flags);
      CHECK(sh[i].sh_addralign >= want[w].min_align, "%s aligned to %lu", want[w].name,
            (unsigned long)sh[i].sh_addralign);
    }
  }
  // Injection leaves a trace (the loop-count array the delay loops read) only in the
  // variants built for it: release targets carry none of it.
  int inject_symbol = 0;
  for (int i = 0; i < eh->e_shnum; i++) {
    if (sh[i].sh_type != SHT_SYMTAB) continue;
    const Elf64_Sym *sym = (const Elf64_Sym *)(f + sh[i].sh_offset);
    const char *str = (const char *)f + sh[sh[i].sh_link].sh_offset;
    for (size_t k = 0; k < sh[i].sh_size / sizeof *sym; k++)
      inject_symbol |= strcmp(str + sym[k].st_name, "rseq_inject_loops") == 0;
  }
#ifdef EXPECT_INJECT
  CHECK(inject_symbol, "the inject variant lacks rseq_inject_loops");
#else
  CHECK(!inject_symbol, "a non-inject variant carries rseq_inject_loops");
#endif
  CHECK_EQ(rseq_inject_enabled(), inject_symbol);
  for (size_t w = 0; w < sizeof want / sizeof want[0]; w++)
    CHECK(want[w].found == 1, "section %s found %d times in the ELF file", want[w].name,
          want[w].found);
  munmap((void *)f, (size_t)st.st_size);
  close(fd);
}

// Sections exist only in objects the binary links; referencing every primitive links
// them all (a binary that uses none has no sections, correctly).
static void *volatile keep[] = {
    (void *)rseq_addv,         (void *)rseq_cmpeqv_storev,
    (void *)rseq_cmpnev_storeoffp_load, (void *)rseq_cmpeqv_trystorev_storev,
    (void *)rseq_cmpeqv_trymemcpy_storev, (void *)rseq_offset_deref_addv,
};

int main(int argc, char **argv) {
  test_init(argc, argv);
  CHECK(keep[0] != NULL);
  check_file_sections();

  size_t ndesc = (size_t)(__stop___rseq_cs - __start___rseq_cs);
  size_t nptr = (size_t)(__stop___rseq_cs_ptr_array - __start___rseq_cs_ptr_array);
  size_t nexit = (size_t)(__stop___rseq_exit_point_array - __start___rseq_exit_point_array);
  int nreg = rseq_registry_count();
  printf("%zu descriptors, %zu pointers, %zu exit points, %d registry entries\n", ndesc, nptr,
         nexit, nreg);
  CHECK(ndesc >= 6, "expected every primitive's descriptor");
  CHECK_EQ(nptr, ndesc);
  CHECK_EQ((size_t)nreg, ndesc);

  for (size_t i = 0; i < ndesc; i++) {
    const struct rseq_cs_desc *d = &__start___rseq_cs[i];
    test_context("descriptor %zu at %p", i, (const void *)d);
    CHECK(((uintptr_t)d & 31) == 0, "descriptor not 32-byte aligned");
    CHECK_EQ(d->version, 0);
    CHECK_EQ(d->flags, 0);
    CHECK(d->post_commit_offset > 0 && d->start_ip + d->post_commit_offset > d->start_ip);
    CHECK(d->abort_ip < d->start_ip || d->abort_ip >= d->start_ip + d->post_commit_offset,
          "abort_ip inside the section");
    const unsigned char *sig = (const unsigned char *)(uintptr_t)(d->abort_ip - 7);
    CHECK(sig[0] == 0x0f && sig[1] == 0xb9 && sig[2] == 0x3d, "no ud1 before abort_ip");
    uint32_t word;
    memcpy(&word, sig + 3, 4);
    CHECK(word == RSEQ_SIG, "signature 0x%x before abort_ip", word);
    int ptrs = 0;
    for (size_t p = 0; p < nptr; p++) ptrs += __start___rseq_cs_ptr_array[p] == d;
    CHECK_EQ(ptrs, 1);
    int regs = 0;
    for (int r = 0; r < nreg; r++) {
      struct rseq_section s;
      rseq_registry_get(r, &s);
      if (s.desc != d) continue;
      regs++;
      CHECK(s.start_ip == d->start_ip && s.abort_ip == d->abort_ip);
      // The ip lookup maps every address of the section back to it.
      struct rseq_section found;
      CHECK(rseq_registry_find_ip(d->start_ip, &found) >= 0 && found.desc == d);
      CHECK(rseq_registry_find_ip(d->start_ip + d->post_commit_offset - 1, &found) >= 0 &&
            found.desc == d);
    }
    CHECK_EQ(regs, 1);
  }
  for (size_t p = 0; p < nptr; p++) {
    const struct rseq_cs_desc *d = __start___rseq_cs_ptr_array[p];
    CHECK(d >= __start___rseq_cs && d < __stop___rseq_cs, "pointer %zu outside __rseq_cs", p);
  }
  for (size_t e = 0; e < nexit; e++) {
    const struct rseq_exit_point *x = &__start___rseq_exit_point_array[e];
    test_context("exit point %zu", e);
    const struct rseq_cs_desc *owner = NULL;
    for (size_t i = 0; i < ndesc; i++)
      if (__start___rseq_cs[i].start_ip == x->start_ip) owner = &__start___rseq_cs[i];
    CHECK(owner != NULL, "exit point's start_ip 0x%lx is no descriptor's", (unsigned long)x->start_ip);
    CHECK(x->exit_ip < owner->start_ip || x->exit_ip >= owner->start_ip + owner->post_commit_offset,
          "exit point inside its section");
  }
  for (int a = 0; a < nreg; a++) {
    struct rseq_section sa, sb;
    rseq_registry_get(a, &sa);
    CHECK(strncmp(sa.name, "rseq_", 5) == 0 || strncmp(sa.name, "ccache_", 7) == 0 ||
              strncmp(sa.name, "ring_", 5) == 0,
          "name '%s' lacks a package prefix", sa.name);
    for (int b = 0; b < a; b++) {
      rseq_registry_get(b, &sb);
      CHECK(strcmp(sa.name, sb.name) != 0, "duplicate name %s", sa.name);
    }
  }
  rseq_registry_dump_json(stdout);
  printf("PASS\n");
  return 0;
}
