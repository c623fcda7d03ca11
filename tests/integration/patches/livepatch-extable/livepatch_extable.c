// SPDX-License-Identifier: GPL-2.0
/*
 * A test input of test_patch_refusals, not an example: a livepatch of
 * cmdline_proc_show whose new function reads user memory with
 * unsafe_get_user(), which puts an entry into the module's __ex_table (the
 * fixup the page-fault handler jumps to when the read faults).
 *
 * The guest kernel's loader registers that table with the module, and its
 * fault handler (search_exception_tables) only searches the tables of
 * modules it loaded itself. hvpatch loads the module from the host, so a
 * fault here would find no fixup: hvpatch must refuse the module.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>

static int livepatch_extable_cmdline_proc_show(struct seq_file *m, void *v)
{
	const int __user *p = (const int __user *)m->private;
	int value = 0;

	if (!user_access_begin(p, sizeof(*p)))
		return -EFAULT;
	unsafe_get_user(value, p, efault);
	user_access_end();
	seq_printf(m, "%d\n", value);
	return 0;
efault:
	user_access_end();
	return -EFAULT;
}

static struct klp_func extable_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_extable_cmdline_proc_show,
	},
	{}
};

static struct klp_object extable_objs[] = {
	{
		.funcs = extable_funcs,
	},
	{}
};

static struct klp_patch extable_patch = {
	.mod = THIS_MODULE,
	.objs = extable_objs,
};

static int livepatch_extable_init(void)
{
	return klp_enable_patch(&extable_patch);
}

static void livepatch_extable_exit(void)
{
}

module_init(livepatch_extable_init);
module_exit(livepatch_extable_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hvpatch test input: a livepatch with a non-empty __ex_table");
MODULE_INFO(livepatch, "Y");
