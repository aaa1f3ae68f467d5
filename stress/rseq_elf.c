// rseq_elf.c: see rseq_elf.h.
#include "stress/rseq_elf.h"

#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct rseq_elf_reloc {
  uint64_t where, value;
};

struct rseq_elf_symbol {
  uint64_t value, size;
  const char *name;
};

static const Elf64_Ehdr *ehdr(const struct rseq_elf *e) { return (const Elf64_Ehdr *)e->map; }

static const Elf64_Phdr *phdr(const struct rseq_elf *e, int i) {
  return (const Elf64_Phdr *)(e->map + ehdr(e)->e_phoff) + i;
}

static const Elf64_Shdr *shdr(const struct rseq_elf *e, int i) {
  return (const Elf64_Shdr *)(e->map + ehdr(e)->e_shoff) + i;
}

// Bounds-checked pointer into the file: NULL when [off, off + n) is outside it.
static const void *at(const struct rseq_elf *e, uint64_t off, uint64_t n) {
  if (off > e->size || n > e->size - off) return NULL;
  return e->map + off;
}

static const Elf64_Shdr *section_named(const struct rseq_elf *e, const char *name) {
  const Elf64_Ehdr *h = ehdr(e);
  if (h->e_shstrndx == SHN_UNDEF || h->e_shstrndx >= h->e_shnum) return NULL;
  const Elf64_Shdr *strs = shdr(e, h->e_shstrndx);
  for (int i = 0; i < h->e_shnum; i++) {
    const char *n = at(e, strs->sh_offset + shdr(e, i)->sh_name, 1);
    size_t room = n ? e->size - (size_t)(n - (const char *)e->map) : 0;
    if (n && strnlen(n, room) == strlen(name) && !memcmp(n, name, strlen(name)))
      return shdr(e, i);
  }
  return NULL;
}

int rseq_elf_read(const struct rseq_elf *e, uint64_t vaddr, void *buf, size_t n) {
  for (int i = 0; i < ehdr(e)->e_phnum; i++) {
    const Elf64_Phdr *p = phdr(e, i);
    // Without overflow: n fits in the segment, and so does the offset.
    if (p->p_type != PT_LOAD || vaddr < p->p_vaddr || n > p->p_filesz ||
        vaddr - p->p_vaddr > p->p_filesz - n)
      continue;
    const void *src = at(e, p->p_offset + (vaddr - p->p_vaddr), n);
    if (!src) return -1;
    memcpy(buf, src, n);
    return 0;
  }
  return -1;
}

size_t rseq_elf_read_some(const struct rseq_elf *e, uint64_t vaddr, void *buf, size_t max) {
  for (int i = 0; i < ehdr(e)->e_phnum; i++) {
    const Elf64_Phdr *p = phdr(e, i);
    if (p->p_type != PT_LOAD || vaddr < p->p_vaddr || vaddr - p->p_vaddr >= p->p_filesz) continue;
    uint64_t left = p->p_filesz - (vaddr - p->p_vaddr);
    size_t n = left < max ? (size_t)left : max;
    return rseq_elf_read(e, vaddr, buf, n) == 0 ? n : 0;
  }
  return 0;
}

bool rseq_elf_executable(const struct rseq_elf *e, uint64_t vaddr, size_t n) {
  for (int i = 0; i < ehdr(e)->e_phnum; i++) {
    const Elf64_Phdr *p = phdr(e, i);
    if (p->p_type == PT_LOAD && (p->p_flags & PF_X) && vaddr >= p->p_vaddr && n <= p->p_filesz &&
        vaddr - p->p_vaddr <= p->p_filesz - n)
      return true;
  }
  return false;
}

uint64_t rseq_elf_first_page(const struct rseq_elf *e) {
  for (int i = 0; i < ehdr(e)->e_phnum; i++) {
    const Elf64_Phdr *p = phdr(e, i);
    if (p->p_type == PT_LOAD) return (p->p_vaddr - p->p_offset) & ~(uint64_t)0xfff;
  }
  return 0;
}

static int reloc_cmp(const void *a, const void *b) {
  uint64_t x = ((const struct rseq_elf_reloc *)a)->where, y = ((const struct rseq_elf_reloc *)b)->where;
  return x < y ? -1 : x > y;
}

// The load-time relocations that fill in data words: RELATIVE (base + addend; the
// base is added by the caller, so the link-time value is the addend) and 64 against
// a symbol this object defines.
static void load_relocs(struct rseq_elf *e) {
  const Elf64_Ehdr *h = ehdr(e);
  size_t cap = 0;
  for (int i = 0; i < h->e_shnum; i++) {
    const Elf64_Shdr *s = shdr(e, i);
    if (s->sh_type != SHT_RELA || s->sh_entsize != sizeof(Elf64_Rela)) continue;
    const Elf64_Rela *r = at(e, s->sh_offset, s->sh_size);
    const Elf64_Shdr *symtab = s->sh_link < h->e_shnum ? shdr(e, (int)s->sh_link) : NULL;
    const Elf64_Sym *syms = symtab ? at(e, symtab->sh_offset, symtab->sh_size) : NULL;
    size_t nsyms = syms ? symtab->sh_size / sizeof(Elf64_Sym) : 0;
    if (!r) continue;
    for (size_t k = 0; k < s->sh_size / sizeof(Elf64_Rela); k++) {
      uint64_t type = ELF64_R_TYPE(r[k].r_info), sym = ELF64_R_SYM(r[k].r_info);
      uint64_t value;
      if (type == R_X86_64_RELATIVE) {
        value = (uint64_t)r[k].r_addend;
      } else if (type == R_X86_64_64 && sym < nsyms && syms[sym].st_shndx != SHN_UNDEF) {
        value = syms[sym].st_value + (uint64_t)r[k].r_addend;
      } else {
        continue;
      }
      if (e->nrelocs == cap) {
        cap = cap ? 2 * cap : 1024;
        e->relocs = realloc(e->relocs, cap * sizeof *e->relocs);
        if (!e->relocs) abort();
      }
      e->relocs[e->nrelocs++] = (struct rseq_elf_reloc){r[k].r_offset, value};
    }
  }
  if (e->nrelocs) qsort(e->relocs, e->nrelocs, sizeof *e->relocs, reloc_cmp);
}

// A data word as the loader leaves it (minus the load base): the relocation's value
// where one targets it, else the file's bytes (0 in .bss).
static uint64_t word_at(const struct rseq_elf *e, uint64_t vaddr) {
  struct rseq_elf_reloc key = {vaddr, 0};
  const struct rseq_elf_reloc *r =
      e->nrelocs ? bsearch(&key, e->relocs, e->nrelocs, sizeof key, reloc_cmp) : NULL;
  if (r) return r->value;
  uint64_t w = 0;
  if (rseq_elf_read(e, vaddr, &w, sizeof w) != 0) return 0;
  return w;
}

static int symbol_cmp(const void *a, const void *b) {
  uint64_t x = ((const struct rseq_elf_symbol *)a)->value, y = ((const struct rseq_elf_symbol *)b)->value;
  return x < y ? -1 : x > y;
}

// Function symbols, from .symtab where the object still has one, else .dynsym.
static void load_symbols(struct rseq_elf *e) {
  const Elf64_Shdr *tab = section_named(e, ".symtab");
  if (!tab) tab = section_named(e, ".dynsym");
  if (!tab || tab->sh_link >= ehdr(e)->e_shnum) return;
  const Elf64_Shdr *strs = shdr(e, (int)tab->sh_link);
  const Elf64_Sym *syms = at(e, tab->sh_offset, tab->sh_size);
  if (!syms) return;
  size_t n = tab->sh_size / sizeof(Elf64_Sym);
  e->symbols = calloc(n ? n : 1, sizeof *e->symbols);
  if (!e->symbols) abort();
  for (size_t i = 0; i < n; i++) {
    if (ELF64_ST_TYPE(syms[i].st_info) != STT_FUNC || syms[i].st_shndx == SHN_UNDEF) continue;
    const char *name = at(e, strs->sh_offset + syms[i].st_name, 1);
    // Only names whose NUL lies inside the file: they are printed with %s.
    if (!name || strnlen(name, e->size - (size_t)(name - (const char *)e->map)) ==
                     e->size - (size_t)(name - (const char *)e->map))
      continue;
    e->symbols[e->nsymbols++] = (struct rseq_elf_symbol){syms[i].st_value, syms[i].st_size, name};
  }
  qsort(e->symbols, e->nsymbols, sizeof *e->symbols, symbol_cmp);
}

uint64_t rseq_elf_symbol(const struct rseq_elf *e, const char *name) {
  const char *tables[] = {".symtab", ".dynsym"};
  for (int t = 0; t < 2; t++) {
    const Elf64_Shdr *tab = section_named(e, tables[t]);
    if (!tab || tab->sh_link >= ehdr(e)->e_shnum) continue;
    const Elf64_Shdr *strs = shdr(e, (int)tab->sh_link);
    const Elf64_Sym *syms = at(e, tab->sh_offset, tab->sh_size);
    for (size_t i = 0; syms && i < tab->sh_size / sizeof(Elf64_Sym); i++) {
      const char *n = at(e, strs->sh_offset + syms[i].st_name, strlen(name) + 1);  // bounded
      if (n && syms[i].st_shndx != SHN_UNDEF && !strncmp(n, name, strlen(name) + 1))
        return syms[i].st_value;
    }
  }
  return 0;
}

static const struct rseq_elf_symbol *function_of(const struct rseq_elf *e, uint64_t vaddr) {
  const struct rseq_elf_symbol *best = NULL;
  for (size_t i = 0; i < e->nsymbols && e->symbols[i].value <= vaddr; i++)
    if (vaddr < e->symbols[i].value + (e->symbols[i].size ? e->symbols[i].size : 1)) best = &e->symbols[i];
  return best;
}

uint64_t rseq_elf_function_start(const struct rseq_elf *e, uint64_t vaddr) {
  const struct rseq_elf_symbol *f = function_of(e, vaddr);
  return f ? f->value : 0;
}

void rseq_elf_describe(const struct rseq_elf *e, uint64_t vaddr, char *out, size_t size) {
  const struct rseq_elf_symbol *best = function_of(e, vaddr);
  if (best)
    snprintf(out, size, "%s+%#lx", best->name, (unsigned long)(vaddr - best->value));
  else
    snprintf(out, size, "%#lx", (unsigned long)vaddr);
}

// Our own registry (rseq/rseq_asm.h): entries {descriptor, name, id}. Where the
// object has one, it names the descriptor.
static bool registry_name(const struct rseq_elf *e, uint64_t desc, char *out, size_t size, int *id) {
  const Elf64_Shdr *reg = section_named(e, "rseq_registry");
  if (!reg) return false;
  for (uint64_t a = reg->sh_addr; a + 24 <= reg->sh_addr + reg->sh_size; a += 24) {
    if (word_at(e, a) != desc) continue;
    uint64_t name = word_at(e, a + 8);
    size_t k = 0;
    for (; k + 1 < size; k++) {
      char c;
      if (rseq_elf_read(e, name + k, &c, 1) != 0 || !c) break;
      out[k] = c;
    }
    out[k] = 0;
    *id = (int)word_at(e, a + 16);
    return k > 0;
  }
  return false;
}

static void check_entry(const struct rseq_elf *e, struct rseq_elf_section *s) {
  uint32_t sig = 0;
  uint8_t desc[32];
  if (rseq_elf_read(e, s->desc, desc, sizeof desc) != 0)
    snprintf(s->problem, sizeof s->problem,
             "table entry at %#lx points at %#lx, outside the object's loaded data",
             (unsigned long)s->table_entry, (unsigned long)s->desc);
  else if (!s->post_commit_offset || s->start + s->post_commit_offset < s->start ||
           !rseq_elf_executable(e, s->start, s->post_commit_offset))
    snprintf(s->problem, sizeof s->problem,
             "descriptor at %#lx: [start_ip %#lx, +%lu) is outside any executable segment",
             (unsigned long)s->desc, (unsigned long)s->start, (unsigned long)s->post_commit_offset);
  else if (!rseq_elf_executable(e, s->abort_ip, 1))
    snprintf(s->problem, sizeof s->problem,
             "descriptor at %#lx: abort_ip %#lx is outside any executable segment",
             (unsigned long)s->desc, (unsigned long)s->abort_ip);
  else if (s->abort_ip >= s->start && s->abort_ip < s->start + s->post_commit_offset)
    snprintf(s->problem, sizeof s->problem, "descriptor at %#lx: abort_ip %#lx is inside the section",
             (unsigned long)s->desc, (unsigned long)s->abort_ip);
  else if (rseq_elf_read(e, s->abort_ip - 4, &sig, 4) != 0 || sig != RSEQ_ELF_SIG)
    snprintf(s->problem, sizeof s->problem,
             "abort handler at %#lx lacks the signature %#x before abort_ip (found %#x)",
             (unsigned long)s->abort_ip, RSEQ_ELF_SIG, sig);
}

int rseq_elf_open(const char *path, struct rseq_elf *e, char *err, size_t err_size) {
  memset(e, 0, sizeof *e);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    snprintf(err, err_size, "cannot open %s: %m", path);
    if (fd >= 0) close(fd);
    return -1;
  }
  e->size = (size_t)st.st_size;
  e->map = e->size >= sizeof(Elf64_Ehdr) ? mmap(NULL, e->size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  if (e->map == MAP_FAILED) {
    e->map = NULL;
    snprintf(err, err_size, "%s is not an ELF object (too small or unreadable)", path);
    return -1;
  }
  const Elf64_Ehdr *h = ehdr(e);
  if (memcmp(h->e_ident, ELFMAG, SELFMAG) || h->e_ident[EI_CLASS] != ELFCLASS64 ||
      h->e_machine != EM_X86_64 || (h->e_type != ET_EXEC && h->e_type != ET_DYN) ||
      !at(e, h->e_phoff, (uint64_t)h->e_phnum * sizeof(Elf64_Phdr)) ||
      !at(e, h->e_shoff, (uint64_t)h->e_shnum * sizeof(Elf64_Shdr))) {
    snprintf(err, err_size, "%s is not an x86-64 ELF executable or shared object", path);
    rseq_elf_close(e);
    return -1;
  }
  e->type = h->e_type;
  const Elf64_Shdr *ptrs = section_named(e, "__rseq_cs_ptr_array");
  if (ptrs && (ptrs->sh_type == SHT_NOBITS || !at(e, ptrs->sh_offset, ptrs->sh_size) ||
               ptrs->sh_size > ((uint64_t)1 << 24))) {
    snprintf(err, err_size, "%s: __rseq_cs_ptr_array's size (%lu) does not fit the file", path,
             (unsigned long)ptrs->sh_size);
    rseq_elf_close(e);
    return -1;
  }
  if (!ptrs || ptrs->sh_size < 8) {
    snprintf(err, err_size,
             "%s has no rseq critical sections: no __rseq_cs_ptr_array section (or an empty one)",
             path);
    rseq_elf_close(e);
    return -2;
  }
  load_relocs(e);
  load_symbols(e);
  e->has_registry = section_named(e, "rseq_registry") != NULL;
  int n = (int)(ptrs->sh_size / 8);
  e->sections = calloc((size_t)n, sizeof *e->sections);
  if (!e->sections) abort();
  for (int i = 0; i < n; i++) {
    struct rseq_elf_section *s = &e->sections[e->nsections++];
    s->table_entry = ptrs->sh_addr + 8 * (uint64_t)i;
    s->desc = word_at(e, s->table_entry);
    uint64_t vf = word_at(e, s->desc);
    s->version = (uint32_t)vf;
    s->flags = (uint32_t)(vf >> 32);
    s->start = word_at(e, s->desc + 8);
    s->post_commit_offset = word_at(e, s->desc + 16);
    s->abort_ip = word_at(e, s->desc + 24);
    s->registry_id = -1;
    char where[128], reg[64];
    rseq_elf_describe(e, s->start, where, sizeof where);
    if (registry_name(e, s->desc, reg, sizeof reg, &s->registry_id))
      snprintf(s->name, sizeof s->name, "%s@%s", reg, where);
    else
      snprintf(s->name, sizeof s->name, "%s", where);
    check_entry(e, s);
  }
  const Elf64_Shdr *exits = section_named(e, "__rseq_exit_point_array");
  if (exits && (exits->sh_type == SHT_NOBITS || !at(e, exits->sh_offset, exits->sh_size) ||
                exits->sh_size > ((uint64_t)1 << 24)))
    exits = NULL;  // unreadable: as if absent (its branches are then only a note)
  if (exits) {
    e->has_exit_table = true;
    e->nexits = (int)(exits->sh_size / 16);
    e->exits = calloc((size_t)e->nexits + 1, sizeof *e->exits);
    if (!e->exits) abort();
    for (int i = 0; i < e->nexits; i++)
      e->exits[i] = (struct rseq_elf_exit){word_at(e, exits->sh_addr + 16 * (uint64_t)i),
                                           word_at(e, exits->sh_addr + 16 * (uint64_t)i + 8)};
  }
  return 0;
}

void rseq_elf_close(struct rseq_elf *e) {
  if (e->map) munmap((void *)e->map, e->size);
  free(e->sections);
  free(e->exits);
  free(e->relocs);
  free(e->symbols);
  memset(e, 0, sizeof *e);
}
