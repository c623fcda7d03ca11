/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The patches of a patch stream (tests/integration/test_patch_streams.cpp):
 * each module replaces /proc/version's and, if it defines STREAM_CMDLINE,
 * /proc/cmdline's show function with one that prints the module's name, so
 * that the guest shows which patch runs. STREAM_REPLACE makes it cumulative
 * (klp_patch.replace, as kpatch-build and klp-build emit).
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int stream_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KBUILD_MODNAME);
	return 0;
}

#ifdef STREAM_CMDLINE
static int stream_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s cmdline\n", KBUILD_MODNAME);
	return 0;
}
#endif

static struct klp_func stream_funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = stream_version_proc_show,
	},
#ifdef STREAM_CMDLINE
	{
		.old_name = "cmdline_proc_show",
		.new_func = stream_cmdline_proc_show,
	},
#endif
	{}
};

static struct klp_object stream_objs[] = {
	{ .funcs = stream_funcs },
	{}
};

static struct klp_patch stream_patch = {
	.mod = THIS_MODULE,
	.objs = stream_objs,
#ifdef STREAM_REPLACE
	.replace = true,
#endif
};

static int __init stream_init(void) { return klp_enable_patch(&stream_patch); }
static void __exit stream_exit(void) { }
module_init(stream_init);
module_exit(stream_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
