/*
 * A synthetic livepatch module with the 6.3+ `struct alt_instr` (14 bytes:
 * s32 instr, s32 repl, u32 ft_flags = cpuid | flags << 16, u8 instrlen,
 * u8 replacementlen) and the 7.x `struct bug_entry` (16 bytes: s32
 * bug_addr, s32 format, s32 file, u16 line, u16 flags), for
 * tests/unit/test_module_image.cpp (AltInstrFtFlags). Regenerate with
 * make-module-image-fixtures. Features: 9*32+20 (SMAP), 3*32+18
 * (LFENCE_RDTSC), 9*32+9 (ERMS).
 */
#define SMAP (9*32+20)
#define LFENCE_RDTSC (3*32+18)
#define ERMS (9*32+9)
#define ALT_NOT(f) ((1 << 16) | (f))
#define ALT_DIRECT_CALL(f) ((2 << 16) | (f))

	.section .modinfo, "a"
	.asciz "license=GPL"
	.asciz "livepatch=Y"
	.asciz "name=hvpatch_ft_flags"
	.asciz "vermagic=7.2.12+deb14-amd64 SMP preempt mod_unload modversions "

	.section .gnu.linkonce.this_module, "aw"
	.balign 64
	.globl __this_module
__this_module:
	.zero 0x500

	.text
	.balign 16
	.globl patched_func
	.type patched_func, @function
patched_func:
.Lsite_call:	call slow_path				/* 0x00 -> call fast_path (SMAP) */
.Lsite_call_end:
.Lsite_pad:	.fill 6, 1, 0x90			/* 0x05 kept (ERMS absent): one NOP */
.Lsite_pad_end:
.Lsite_jmp:	.fill 5, 1, 0x90			/* 0x0b -> jmp .Ltarget (!ERMS) */
.Lsite_jmp_end:
.Lsite_nested:	.fill 3, 1, 0x90			/* 0x10 -> lfence (SMAP), then mfence (LFENCE_RDTSC) */
.Lsite_nested_end:
.Lsite_direct:	call *pv_slot(%rip)			/* 0x13 -> call pv_target (ALT_DIRECT_CALL) */
.Lsite_direct_end:
.Lsite_rip:	.fill 7, 1, 0x90			/* 0x19 -> mov some_var(%rip), %rax (SMAP) */
.Lsite_rip_end:
.Lwarn:		ud2					/* 0x20 WARN: becomes a NOP */
.Lbug:		ud2					/* 0x22 BUG: kept */
.Lwarn_args:	lea .Lentry_args(%rip), %rdi		/* 0x24 WARN() with arguments */
.Lwarn_args_after:
		call __SCT__WARN_trap
.Ltarget:	ret
	.size patched_func, . - patched_func

	.section .altinstr_replacement, "ax"
.Lrepl_call:	call fast_path
.Lrepl_call_end:
.Lrepl_pad:	rep movsb
.Lrepl_pad_end:
.Lrepl_jmp:	jmp .Ltarget
.Lrepl_jmp_end:
.Lrepl_lfence:	lfence
.Lrepl_lfence_end:
.Lrepl_mfence:	mfence
.Lrepl_mfence_end:
.Lrepl_direct:	call BUG_func
.Lrepl_direct_end:
.Lrepl_rip:	mov some_var(%rip), %rax
.Lrepl_rip_end:

	.section .altinstructions, "a"
	.macro alt site, site_end, repl, repl_end, ft
	.long \site - .
	.long \repl - .
	.long \ft
	.byte \site_end - \site, \repl_end - \repl
	.endm
	alt .Lsite_call, .Lsite_call_end, .Lrepl_call, .Lrepl_call_end, SMAP
	alt .Lsite_pad, .Lsite_pad_end, .Lrepl_pad, .Lrepl_pad_end, ERMS
	alt .Lsite_jmp, .Lsite_jmp_end, .Lrepl_jmp, .Lrepl_jmp_end, ALT_NOT(ERMS)
	alt .Lsite_nested, .Lsite_nested_end, .Lrepl_lfence, .Lrepl_lfence_end, SMAP
	alt .Lsite_nested, .Lsite_nested_end, .Lrepl_mfence, .Lrepl_mfence_end, LFENCE_RDTSC
	alt .Lsite_direct, .Lsite_direct_end, .Lrepl_direct, .Lrepl_direct_end, ALT_DIRECT_CALL(SMAP)
	alt .Lsite_rip, .Lsite_rip_end, .Lrepl_rip, .Lrepl_rip_end, SMAP

	.section .rodata.str1.1, "aMS", @progbits, 1
.Lfile:	.asciz "ft_flags.c"
.Lfmt:	.asciz "value %d"

	.section __bug_table, "aw"
	.macro bug addr, line, flags
	.long \addr - .
	.long .Lfmt - .
	.long .Lfile - .
	.short \line, \flags
	.endm
	bug .Lwarn, 10, 1 | (9 << 8)			/* BUGFLAG_WARNING | TAINT_WARN */
	bug .Lbug, 11, 0
.Lentry_args:
	bug .Lwarn_args_after, 12, 1 | 16 | (9 << 8)	/* | BUGFLAG_ARGS */
