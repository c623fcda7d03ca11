# The per-function universe trampoline, as a template (GNU as, AT&T syntax).
#
# Runs inside the guest kernel. During a transition the patched function's
# ftrace NOP (0f 1f 44 00 00) is replaced by `jmp rel32` to a copy of this
# code, which hvpatch has relocated (guest-shim/trampoline.cpp fills the four
# fields below). It chooses as the guest's own klp_ftrace_handler does
# (kernel/livepatch/patch.c, Linux 6.1); see trampoline.h for that rule:
#
#     current->patch_state == KLP_UNPATCHED (0)  -> old function, past the NOP
#     anything else (KLP_PATCHED 1, KLP_UNDEFINED -1)  -> new function
#
# Constraints, each one why an instruction below is what it is:
# * Every register the function may receive is preserved: all GPRs
#   (arguments, rax for varargs/static calls, callee-saved ones), RSP (the
#   return address must stay where the function expects it) and RFLAGS
#   entirely. rcx is the only register used, saved by a transient push
#   (the kernel is built with -mno-red-zone: nothing lives below RSP).
# * No instruction writes RFLAGS: push, pop and mov do not; `jrcxz` tests
#   rcx without a flag (a `test`/`cmp` + `jz` would clobber ZF, SF, ...).
# * `current` on 6.1 x86-64 is the per-CPU variable current_task, read
#   with one gs-relative load (so preemption cannot split the read from the
#   per-CPU base; after it, rcx holds this task whichever CPU runs it).
#   patch_state is an int: read with a sign-extending 32-bit load, so
#   whatever follows it in task_struct does not matter.
# * Only direct `jmp rel32` leaves the trampoline: no indirect branch (IBT,
#   retpolines), no `ret` (return thunks, and nothing to return to).
#
# The template has no relocations (the build checks this): every field is a
# zero placeholder with a forced 32-bit encoding, and its position is
# published as a data symbol so that nobody copies offsets by hand.

	.section .rodata.hvpatch_trampoline, "a", @progbits
	.balign 16
	.globl hvpatch_trampoline_template
	.type hvpatch_trampoline_template, @object
hvpatch_trampoline_template:
	push	%rcx
	mov	%gs:0, %rcx			# field: per-CPU offset of current_task
.Lafter_current_task:
	{disp32} movslq 0(%rcx), %rcx		# field: offsetof(task_struct, patch_state)
.Lafter_patch_state:
	jrcxz	.Lold
	pop	%rcx
	{disp32} jmp .Lafter_new_jmp		# field: rel32 to the new function
.Lafter_new_jmp:
.Lold:
	pop	%rcx
	{disp32} jmp .Lafter_old_jmp		# field: rel32 to old entry NOP + 5
.Lafter_old_jmp:
	.balign 16, 0xcc			# int3 padding to a multiple of 16
.Lend:
	.size hvpatch_trampoline_template, .Lend - hvpatch_trampoline_template

# The layout, one 32-bit value per symbol. Each field is the last 4 bytes of
# its instruction, so a rel32 counts from the field's end.
	.section .rodata
	.balign 4
	.macro layout name, value:vararg
	.globl \name
	.type \name, @object
	.size \name, 4
\name:
	.long \value
	.endm
	layout hvpatch_trampoline_size, .Lend - hvpatch_trampoline_template
	layout hvpatch_trampoline_current_task_field, .Lafter_current_task - 4 - hvpatch_trampoline_template
	layout hvpatch_trampoline_patch_state_field, .Lafter_patch_state - 4 - hvpatch_trampoline_template
	layout hvpatch_trampoline_new_jmp_field, .Lafter_new_jmp - 4 - hvpatch_trampoline_template
	layout hvpatch_trampoline_old_jmp_field, .Lafter_old_jmp - 4 - hvpatch_trampoline_template

	.section .note.GNU-stack, "", @progbits
