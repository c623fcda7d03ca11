// SPDX-License-Identifier: GPL-2.0
/*
 * hvpatch example patch 4: a patch whose code the guest's loader must
 * rewrite for the running CPU and kernel, as most real fixes need.
 *
 * Replaces version_proc_show (fs/proc/version.c), the function behind
 * /proc/version, with one that prints a fixed line. On the way it uses:
 *
 *   static_cpu_has()        an alternative (.altinstructions and
 *                           .altinstr_aux): struct alt_instr, whose form
 *                           changed in 6.3 (u32 ft_flags)
 *   local_irq_save/restore  paravirt operations: .parainstructions up to
 *                           6.7, alternatives with ALT_FLAG_DIRECT_CALL from
 *                           6.8
 *   WARN_ON_ONCE, WARN_ONCE __bug_table entries (12 bytes up to 6.x, 16 on
 *                           7.x, where a WARN with arguments calls
 *                           __WARN_trap instead of running ud2); neither
 *                           fires
 *
 * Oracle: `cat /proc/version` prints "hvpatch alternatives example: always
 * yes" instead of the kernel's version line.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/irqflags.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <asm/cpufeature.h>

static int livepatch_version_proc_show(struct seq_file *m, void *v)
{
	unsigned long flags;
	bool always;

	WARN_ONCE(!m, "no seq_file for %p", v);
	WARN_ON_ONCE(!v);
	always = static_cpu_has(X86_FEATURE_ALWAYS);
	local_irq_save(flags);
	local_irq_restore(flags);
	seq_printf(m, "hvpatch alternatives example: always %s\n", always ? "yes" : "no");
	return 0;
}

static struct klp_func alternatives_funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = livepatch_version_proc_show,
	},
	{}
};

static struct klp_object alternatives_objs[] = {
	{
		/* .name = NULL: the function lives in vmlinux */
		.funcs = alternatives_funcs,
	},
	{}
};

static struct klp_patch alternatives_patch = {
	.mod = THIS_MODULE,
	.objs = alternatives_objs,
};

static int livepatch_alternatives_init(void)
{
	return klp_enable_patch(&alternatives_patch);
}

static void livepatch_alternatives_exit(void)
{
}

module_init(livepatch_alternatives_init);
module_exit(livepatch_alternatives_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hvpatch example: /proc/version from code with alternatives, paravirt calls and WARNs");
MODULE_INFO(livepatch, "Y");
