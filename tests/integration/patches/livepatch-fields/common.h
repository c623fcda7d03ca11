/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One replacement of version_proc_show (/proc/version) for the modules of
 * this directory; each adds one field of struct klp_patch or klp_object.
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
