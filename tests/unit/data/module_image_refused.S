/*
 * A livepatch module that hvpatch's module linker must refuse: per-CPU data
 * (needs the guest's per-CPU allocator) and a section nobody knows.
 * Regenerate with tests/unit/data/make-module-image-fixtures.
 */
	.section .modinfo, "a"
	.asciz "livepatch=Y"
	.asciz "name=hvpatch_refused"

	.section .gnu.linkonce.this_module, "aw"
	.globl __this_module
__this_module:
	.zero 0x380

	.text
	.globl f
f:	ret

	.section .data..percpu, "aw"
	.long 0

	.section .hvpatch.mystery, "a"
	.long 0
