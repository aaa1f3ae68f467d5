/* foreign_sections.S: rseq critical sections written the way the kernel selftests and
 * librseq write them, in a standalone assembly file, with nothing of rseq/: the
 * fixture that proves abortscan --object does not depend on how we write sections.
 *
 * The tables are the conventions every rseq tool reads:
 *   __rseq_cs                struct rseq_cs {u32 version, u32 flags, u64 start_ip,
 *                            u64 post_commit_offset, u64 abort_ip}, aligned to 32
 *   __rseq_cs_ptr_array      one pointer per descriptor
 *   __rseq_exit_point_array  {start_ip, exit_ip} per branch that leaves a section
 *   __rseq_failure           the abort handlers, each after the signature 0x53053053
 *                            (in a ud1 instruction, as librseq does on x86)
 *
 * Every function takes the thread's struct rseq (cpu_id at +4, rseq_cs at +8) in
 * %rdi, reads cpu_id before the section, arms rseq_cs, and inside the section
 * compares cpu_id again first. An abort returns -1 (the caller retries).
 *
 * Built with -DFOREIGN_BROKEN, each section is deliberately wrong (the broken twin
 * that abortscan must flag):
 *   foreign_percpu_add  a side effect before the commit: it counts the add in a global
 *                       first, so an abort between counts it twice;
 *   foreign_list_push   the commit is not last: an instruction after it is still inside
 *                       the section, so an abort there pushes the node twice;
 *   foreign_list_pop    its exit to the empty-list path is missing from
 *                       __rseq_exit_point_array (its code is right).
 * Built with -DFOREIGN_NO_CPU_COMPARE, foreign_percpu_add never compares its CPU: right
 * on one thread (every forced abort passes), wrong when a thread migrates between its
 * CPU read and the section; abortscan notes that it finds no compare.
 * Built with -DFOREIGN_EXIT_STUB, the pop section leaves for its empty-list exit
 * through a stub in __rseq_failure (two register moves, then the jump to the exit the
 * table lists), the way librseq's memcpy sections restore their registers; with
 * -DFOREIGN_EXIT_STUB=2 the stub also stores to memory, so it is no teardown stub and
 * the exit is unlisted.
 * Built with -DFOREIGN_END_OF_SEGMENT (and linked with -z separate-code), the last
 * abort handler lies within 16 bytes of the end of the code segment, as librseq's did.
 * Built with -DFOREIGN_BAD_TABLE, two more descriptors are wrong in the table itself:
 * one whose section lies in .data, one whose abort handler lacks the signature.
 */

#define RSEQ_CPU_ID 4
#define RSEQ_CS 8

/* DESCRIPTOR(name, start, post, abort): the descriptor and its pointer. */
#define DESCRIPTOR(cs, start, post, abort_ip) \
  .pushsection __rseq_cs, "aw";                \
  .balign 32;                                  \
  cs:                                          \
  .long 0, 0;                                  \
  .quad start, post - start, abort_ip;         \
  .popsection;                                 \
  .pushsection __rseq_cs_ptr_array, "aw";      \
  .balign 8;                                   \
  .quad cs;                                    \
  .popsection

/* ABORT_HANDLER(label, target): the signature, then abort_ip: a jump back. */
#define ABORT_HANDLER(label, target) \
  .pushsection __rseq_failure, "ax"; \
  .byte 0x0f, 0xb9, 0x3d;            \
  .long 0x53053053;                  \
  label:                             \
  jmp target;                        \
  .popsection

	.text

/* int foreign_percpu_add(struct rseq *rs, long *counters, long inc):
 *   counters[cpu] += inc, committed by the store of the sum. */
	.globl foreign_percpu_add
	.type foreign_percpu_add, @function
foreign_percpu_add:
	movl RSEQ_CPU_ID(%rdi), %ecx
	leaq .Ladd_cs(%rip), %rax
	movq %rax, RSEQ_CS(%rdi)
.Ladd_start:
#ifndef FOREIGN_NO_CPU_COMPARE
	cmpl %ecx, RSEQ_CPU_ID(%rdi)
	jnz .Ladd_abort
#else
	nop                                  /* BROKEN: the CPU is never compared */
#endif
	movslq %ecx, %rax
	movq (%rsi,%rax,8), %r8
	addq %rdx, %r8
#ifdef FOREIGN_BROKEN
	incq foreign_adds_started(%rip)      /* BROKEN: a side effect before the commit */
#endif
	movq %r8, (%rsi,%rax,8)              /* commit */
.Ladd_post:
	xorl %eax, %eax
	ret
.Ladd_aborted:
	movl $-1, %eax
	ret
	.size foreign_percpu_add, . - foreign_percpu_add
	DESCRIPTOR(.Ladd_cs, .Ladd_start, .Ladd_post, .Ladd_abort)
	ABORT_HANDLER(.Ladd_abort, .Ladd_aborted)

/* int foreign_list_push(struct rseq *rs, struct node **heads, struct node *n):
 *   n->next = heads[cpu] (n is still private: harmless to repeat);
 *   heads[cpu] = n, the commit. */
	.globl foreign_list_push
	.type foreign_list_push, @function
foreign_list_push:
	movl RSEQ_CPU_ID(%rdi), %ecx
	leaq .Lpush_cs(%rip), %rax
	movq %rax, RSEQ_CS(%rdi)
.Lpush_start:
	cmpl %ecx, RSEQ_CPU_ID(%rdi)
	jnz .Lpush_abort
	movslq %ecx, %rax
	movq (%rsi,%rax,8), %r8
	movq %r8, (%rdx)
	movq %rdx, (%rsi,%rax,8)             /* commit */
#ifdef FOREIGN_BROKEN
	xorl %r8d, %r8d                      /* BROKEN: still inside, after the commit */
#endif
.Lpush_post:
	xorl %eax, %eax
	ret
.Lpush_aborted:
	movl $-1, %eax
	ret
	.size foreign_list_push, . - foreign_list_push
	DESCRIPTOR(.Lpush_cs, .Lpush_start, .Lpush_post, .Lpush_abort)
	ABORT_HANDLER(.Lpush_abort, .Lpush_aborted)

/* struct node *foreign_list_pop(struct rseq *rs, struct node **heads):
 *   head = heads[cpu]; if (!head) leave (an exit point: the list is empty);
 *   heads[cpu] = head->next, the commit. Returns head, NULL when empty, -1 on abort. */
	.globl foreign_list_pop
	.type foreign_list_pop, @function
foreign_list_pop:
	movl RSEQ_CPU_ID(%rdi), %ecx
	leaq .Lpop_cs(%rip), %rax
	movq %rax, RSEQ_CS(%rdi)
.Lpop_start:
	cmpl %ecx, RSEQ_CPU_ID(%rdi)
	jnz .Lpop_abort
	movslq %ecx, %rax
	movq (%rsi,%rax,8), %r8
	testq %r8, %r8
#ifdef FOREIGN_EXIT_STUB
	jz .Lpop_empty_stub                  /* through a teardown stub, as librseq's memcpy */
#else
	jz .Lpop_empty
#endif
	movq (%r8), %r9
	movq %r9, (%rsi,%rax,8)              /* commit */
.Lpop_post:
	movq %r8, %rax
	ret
.Lpop_empty:
	xorl %eax, %eax
	ret
.Lpop_aborted:
	movq $-1, %rax
	ret
	.size foreign_list_pop, . - foreign_list_pop
	DESCRIPTOR(.Lpop_cs, .Lpop_start, .Lpop_post, .Lpop_abort)
#ifdef FOREIGN_EXIT_STUB
	/* The stub: register moves only, then the jump to the exit the table lists. With
	 * FOREIGN_EXIT_STUB=2 it also stores to memory, and is no teardown stub. */
	.pushsection __rseq_failure, "ax"
.Lpop_empty_stub:
	movq %rsi, %r10
	leaq 8(%r10), %r10
#if FOREIGN_EXIT_STUB == 2
	movq %r10, foreign_stub_scratch(%rip)
#endif
	jmp .Lpop_empty
	.popsection
#endif
#ifdef FOREIGN_END_OF_SEGMENT
	/* The last handler ends on a 4-byte boundary, so that ld puts .fini (4-aligned, 9
	 * bytes, the last of the code segment with -z separate-code) right after it: the
	 * handler's jump then starts 14 bytes before the segment ends. */
	.pushsection __rseq_failure, "ax"
	.balign 4, 0x90
	.popsection
#endif
	ABORT_HANDLER(.Lpop_abort, .Lpop_aborted)
#ifndef FOREIGN_BROKEN
	.pushsection __rseq_exit_point_array, "aw"
	.balign 8
	.quad .Lpop_start, .Lpop_empty
	.popsection
#else
	/* BROKEN: the exit to .Lpop_empty is not listed. The table still exists (with an
	 * entry that names no real exit), so the object claims the convention. */
	.pushsection __rseq_exit_point_array, "aw"
	.balign 8
	.quad .Lpop_start, .Lpop_post
	.popsection
#endif

#ifdef FOREIGN_BAD_TABLE
/* A descriptor whose "section" lies in .data, and one whose abort handler has no
 * signature before it. Never executed: abortscan must reject them from the table. */
	.data
.Lbad_data_start:
	.quad 0, 0
.Lbad_data_post:
	.text
	.type foreign_unsigned, @function
foreign_unsigned:
.Lunsigned_start:
	nop
	movq %rax, (%rdi)
.Lunsigned_post:
	ret
.Lunsigned_abort:
	ret
	.size foreign_unsigned, . - foreign_unsigned
	DESCRIPTOR(.Lbad_cs1, .Lbad_data_start, .Lbad_data_post, .Ladd_abort)
	DESCRIPTOR(.Lbad_cs2, .Lunsigned_start, .Lunsigned_post, .Lunsigned_abort)
#endif

#if defined(FOREIGN_EXIT_STUB) && FOREIGN_EXIT_STUB == 2
	.bss
	.balign 8
foreign_stub_scratch:
	.quad 0
#endif

	.section .note.GNU-stack, "", @progbits
