# klp_get_prev_state() for hvpatch patches, as a template (GNU as, AT&T).
#
# The guest's own klp_get_prev_state(id) (kernel/livepatch/state.c) walks its
# klp_patches list up to the patch in transition and returns the last
# struct klp_state with that id. hvpatch patches are not on that list and
# the guest sees no transition (it would WARN and return NULL), so a patch
# module's calls of klp_get_prev_state are linked to a copy of this code
# in the patch's own memory instead. It answers from a table that hvpatch
# writes before each callback runs: the states of the hvpatch patches
# applied before this one, in the order they were applied (the walk's
# order; the last match wins, as in the kernel).
#
#     struct klp_state *hvpatch_prev_state(unsigned long id /* rdi */)
#
# An ordinary C function: clobbers only rax, rcx, rsi and flags (all
# caller-saved). It leaves through one `jmp rel32` (the field below): to
# the guest's __x86_return_thunk when the guest uses return thunks, else to
# the `ret` right after it. The table is part of the template (zeros):
# hvpatch_prev_state_table_field is its offset, hvpatch_prev_state_capacity
# its number of (id, address) pairs after the count.
#
# No relocations: the lea reaches the table inside the blob.

	.set CAPACITY, 32

	.section .rodata.hvpatch_prev_state, "a", @progbits
	.balign 16
	.globl hvpatch_prev_state_template
	.type hvpatch_prev_state_template, @object
hvpatch_prev_state_template:
	lea	.Ltable(%rip), %rsi
	mov	(%rsi), %rcx			# the number of entries
	add	$8, %rsi
	xor	%eax, %eax			# NULL if no entry has the id
.Lloop:
	test	%rcx, %rcx
	jz	.Ldone
	cmp	(%rsi), %rdi
	jne	.Lnext
	mov	8(%rsi), %rax
.Lnext:
	add	$16, %rsi
	dec	%rcx
	jmp	.Lloop
.Ldone:
	{disp32} jmp .Lafter_return_jmp		# field: rel32 to the return thunk or the ret below
.Lafter_return_jmp:
	ret
	int3
	.balign 16, 0xcc
.Ltable:
	.quad	0
	.fill	CAPACITY * 2, 8, 0
	.balign 16, 0
.Lend:
	.size hvpatch_prev_state_template, .Lend - hvpatch_prev_state_template

	.section .rodata
	.balign 4
	.macro layout name, value:vararg
	.globl \name
	.type \name, @object
	.size \name, 4
\name:
	.long \value
	.endm
	layout hvpatch_prev_state_size, .Lend - hvpatch_prev_state_template
	layout hvpatch_prev_state_return_field, .Lafter_return_jmp - 4 - hvpatch_prev_state_template
	layout hvpatch_prev_state_ret_offset, .Lafter_return_jmp - hvpatch_prev_state_template
	layout hvpatch_prev_state_table_field, .Ltable - hvpatch_prev_state_template
	layout hvpatch_prev_state_capacity, CAPACITY

	.section .note.GNU-stack, "", @progbits
