/*
 * A synthetic livepatch module with the sections 6.2+ kernels add to every
 * module (tests/unit/test_module_image.cpp, NewerKernelSections): the ORC
 * format hash (.orc_header, 6.4+), the call-depth-tracking call sites
 * (.call_sites) and the -fpatchable-function-entry table
 * (__patchable_function_entries), one entry of each pointing into init code
 * that hvpatch skips. Regenerate with make-module-image-fixtures.
 */

	.section .modinfo, "a"
	.asciz "license=GPL"
	.asciz "livepatch=Y"
	.asciz "name=hvpatch_newer"
	.asciz "vermagic=6.12.95+deb12-amd64 SMP preempt mod_unload modversions "

	.section .gnu.linkonce.this_module, "aw"
	.balign 64
	.globl __this_module
	.type __this_module, @object
__this_module:
	.zero 0x500
	.size __this_module, 0x500

	.text
	.balign 16
.Lpadding:
	.fill 16, 1, 0x90
	.globl patched_func
	.type patched_func, @function
patched_func:
.Lcall:	call helper
	ret
	.size patched_func, . - patched_func
	.type helper, @function
helper:
	ret
	.size helper, . - helper

	.section .init.text, "ax"
init_module:
.Linit_call:
	call helper
	ret

/* The hash of Debian 6.12.95's ORC format (= 6.4+ upstream). */
	.section .orc_header, "a"
	.byte 0xfe, 0x5d, 0x32, 0xbf, 0x58, 0x1b, 0xd6, 0x3b, 0x2c, 0xa9
	.byte 0xa5, 0xc6, 0x5b, 0xa5, 0xa6, 0x25, 0xea, 0xb3, 0xfe, 0x24

	.section .call_sites, "a"
	.long .Lcall - .
	.long .Linit_call - .

	.section __patchable_function_entries, "awo", @progbits, .text
	.quad .Lpadding
	.quad init_module
