/*
 * A synthetic livepatch module for tests/unit/test_module_image.cpp: one of
 * each special section the module linker handles, in the 6.1 x86-64 formats,
 * with hand-placed sites so the tests can check each byte. Regenerate the .ko
 * with tests/unit/data/make-module-image-fixtures (gcc/as + klp-convert.py).
 *
 * Never meant to run: the "code" is a sequence of sites, not a function.
 * Feature numbers used by .altinstructions: 9*32+20 (SMAP), 3*32+18
 * (inverted, LFENCE_RDTSC), 9*32+9 (ERMS).
 */

	.section .modinfo, "a"
	.asciz "license=GPL"
	.asciz "livepatch=Y"
	.asciz "name=hvpatch_fixture"
	.asciz "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions "

/* struct module: only the init (0x138) and exit (0x350) pointers matter. */
	.section .gnu.linkonce.this_module, "aw"
	.balign 64
	.globl __this_module
	.type __this_module, @object
__this_module:
	.zero 0x138
	.quad init_module
	.zero 0x350 - 0x140
	.quad cleanup_module
	.zero 0x380 - 0x358
	.size __this_module, 0x380

	.text
	.balign 16
	.globl patched_func
	.type patched_func, @function
patched_func:
.Lmcount:
	call __fentry__
.Lpv:	call *pv_ops+8(%rip)				/* ff 15: 6 bytes */
.Lalt1:	call slow_path					/* -> call fast_path */
.Lalt1_end:
.Lalt2:	lfence						/* -> NOPs when !feature */
.Lalt2_end:
.Lalt3:	.byte 0x90, 0x90, 0x90, 0x90, 0x90		/* -> jmp .Ltarget */
.Lalt3_end:
.Lrp_call:
	call __x86_indirect_thunk_rax
.Ljl1:	.byte 0x0f, 0x1f, 0x44, 0x00, 0x00		/* static_branch: NOP */
.Ljl2:	.byte 0xeb, .Ljl2_target - .Ljl2_next		/* static_branch: jmp.d8 */
.Ljl2_next:
.Llock:	lock incl counter(%rip)
.Lsc:	call __SCT__foo
.Lwarn:	ud2
.Lbug:	ud2
	movq ".klp.sym.vmlinux.secret_var,0"(%rip), %rax
	call ".klp.sym.othermod.other_func,1"
	movl $abs32, %eax				/* R_X86_64_32 */
	movq $abs32s, %rax				/* R_X86_64_32S */
	movq $fixture_string, %rdi			/* R_X86_64_32S, module .rodata */
	.reloc ., R_X86_64_NONE, ext_none
	nop
.Ljl2_target:
.Ltarget:
.Ljl1_target:
.Lret:	jmp __x86_return_thunk
	int3
.Lrp_jmp:
	jmp __x86_indirect_thunk_r11
	int3
.Lfunc_end:
	.size patched_func, .Lfunc_end - patched_func

	.globl helper
	.type helper, @function
helper:
	call __fentry__
.Lhelper_ret:
	jmp __x86_return_thunk
	int3
.Lhelper_end:
	.size helper, .Lhelper_end - helper

	.globl jcc_user
	.type jcc_user, @function
jcc_user:
.Lrp_jcc:
	jne __x86_indirect_thunk_rcx			/* 0f 85 rel32 */
	int3
.Ljcc_user_end:
	.size jcc_user, .Ljcc_user_end - jcc_user

	.section .altinstr_replacement, "ax"
.Lrepl1:
	call fast_path
.Lrepl1_end:
.Lrepl2:
.Lrepl2_end:
.Lrepl3:
	.byte 0xe9
	.long .Ltarget - . - 4
.Lrepl3_end:

	.section .altinstructions, "a"
	.long .Lalt1 - .
	.long .Lrepl1 - .
	.word 9 * 32 + 20
	.byte .Lalt1_end - .Lalt1
	.byte .Lrepl1_end - .Lrepl1
	.long .Lalt2 - .
	.long .Lrepl2 - .
	.word (3 * 32 + 18) | 0x8000
	.byte .Lalt2_end - .Lalt2
	.byte .Lrepl2_end - .Lrepl2
	.long .Lalt3 - .
	.long .Lrepl3 - .
	.word 9 * 32 + 9
	.byte .Lalt3_end - .Lalt3
	.byte .Lrepl3_end - .Lrepl3

	.section .parainstructions, "a"
	.balign 8
	.quad .Lpv
	.byte 1
	.byte 6
	.balign 8

	.section .retpoline_sites, "a"
	.long .Lrp_call - .
	.long .Lrp_jmp - .
	.long .Lrp_jcc - .

	.section .return_sites, "a"
	.long .Lret - .
	.long .Linit_ret - .				/* in .init.text: dropped */
	.long .Lhelper_ret - .

	.section __mcount_loc, "a"
	.quad .Lmcount
	.quad .Linit_mcount				/* in .init.text: dropped */
	.quad helper

	.section __jump_table, "aw"
	.balign 8
	.long .Ljl1 - .
	.long .Ljl1_target - .
	.quad external_key - .
	.long .Ljl2 - .
	.long .Ljl2_target - .
	.quad module_key + 1 - .

	.section .static_call_sites, "a"
	.long .Lsc - .
	.long __SCK__foo - .

	.section .smp_locks, "a"
	.long .Llock - .

	.section __bug_table, "aw"
.Lbug1:	.long .Lwarn - .
	.long .Lfile - .
	.word 42
	.word 1						/* BUGFLAG_WARNING */
	.org .Lbug1 + 12
.Lbug2:	.long .Lbug - .
	.long .Lfile - .
	.word 43
	.word 0
	.org .Lbug2 + 12

/* Deliberately unsorted; the init entry is dropped; two entries at .Lret,
 * the weak terminator (sp_reg 0, end 0) listed second. */
	.section .orc_unwind_ip, "a"
	.long .Lret - .
	.long patched_func - .
	.long .Linit_mcount - .
	.long .Lret - .
	.section .orc_unwind, "a"
	.short 8, 0
	.short 0x0005					/* sp_reg 5 (SP), CALL */
	.short 8, 0
	.short 0x0005
	.short 8, 0
	.short 0x0005
	.short 0, 0
	.short 0x0000					/* terminator */

	.section .rodata.str1.1, "aMS", @progbits, 1
.Lfile:	.asciz "fixture.c"
fixture_string:
	.asciz "fixture"

	.section .data..ro_after_init, "aw"
	.balign 8
	.globl ro_after_init_value
ro_after_init_value:
	.quad patched_func

	.data
	.balign 8
	.globl module_key
	.type module_key, @object
module_key:						/* struct static_key, enabled = 1 */
	.long 1
	.long 0
	.quad 1
	.size module_key, 16
	.globl func_pointer
func_pointer:
	.quad helper + 2				/* R_X86_64_64 */
	.globl pc64_value
pc64_value:
	.quad ext_pc64 - .				/* R_X86_64_PC64 */

	.bss
	.balign 4
counter:
	.zero 4

	.section .init.text, "ax"
	.globl init_module
	.type init_module, @function
init_module:
.Linit_mcount:
	call __fentry__
	xorl %eax, %eax
.Linit_ret:
	jmp __x86_return_thunk
	int3
	.size init_module, . - init_module

	.section .exit.text, "ax"
	.globl cleanup_module
	.type cleanup_module, @function
cleanup_module:
	jmp __x86_return_thunk
	int3
	.size cleanup_module, . - cleanup_module

/* Tables the guest would register; inert for hvpatch. struct kernel_symbol
 * (PREL32): value, name, namespace. */
	.section __ksymtab_strings, "aMS", @progbits, 1
.Lhelper_name:
	.asciz "helper"
	.section __ksymtab, "a"
	.balign 4
	.long helper - .
	.long .Lhelper_name - .
	.long 0
	.section .BTF, "a"
	.byte 0x9f, 0xeb, 0x01, 0x00
