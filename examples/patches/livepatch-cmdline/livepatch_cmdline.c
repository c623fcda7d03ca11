// SPDX-License-Identifier: GPL-2.0
/*
 * hvpatch example patch 1: replace cmdline_proc_show (fs/proc/cmdline.c),
 * the function behind /proc/cmdline, with one that prints a fixed line.
 *
 * A standard livepatch module: the guest's own livepatch core can load it
 * with insmod, and hvpatch applies it from the host without running its
 * init (it reads the klp_patch below from the module's data).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "this has been live patched");
	return 0;
}

static struct klp_func cmdline_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show,
	},
	{}
};

static struct klp_object cmdline_objs[] = {
	{
		/* .name = NULL: the function lives in vmlinux */
		.funcs = cmdline_funcs,
	},
	{}
};

static struct klp_patch cmdline_patch = {
	.mod = THIS_MODULE,
	.objs = cmdline_objs,
};

static int livepatch_cmdline_init(void)
{
	return klp_enable_patch(&cmdline_patch);
}

static void livepatch_cmdline_exit(void)
{
}

module_init(livepatch_cmdline_init);
module_exit(livepatch_cmdline_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hvpatch example: /proc/cmdline says it has been live patched");
MODULE_INFO(livepatch, "Y");
