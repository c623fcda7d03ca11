/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One replacement of version_proc_show (/proc/version) for the modules of
 * this directory, and their init; each module defines fields_patch with one
 * more field of struct klp_patch or klp_object.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int livepatch_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KBUILD_MODNAME);
	return 0;
}

static struct klp_func fields_funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = livepatch_version_proc_show,
	},
	{}
};

static struct klp_patch fields_patch;  /* defined by each module */

static int __init fields_init(void) { return klp_enable_patch(&fields_patch); }
static void __exit fields_exit(void) { }
module_init(fields_init);
module_exit(fields_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
