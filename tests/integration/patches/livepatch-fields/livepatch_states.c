// SPDX-License-Identifier: GPL-2.0
/* A system state (klp_patch.states), as test_klp_state has. */
#include "common.h"

static struct klp_object fields_objs[] = {
	{ .funcs = fields_funcs },
	{}
};

static struct klp_state fields_states[] = {
	{ .id = 42, .version = 1 },
	{}
};

static struct klp_patch fields_patch = {
	.mod = THIS_MODULE,
	.objs = fields_objs,
	.states = fields_states,
};

static int __init fields_init(void) { return klp_enable_patch(&fields_patch); }
static void __exit fields_exit(void) { }
module_init(fields_init);
module_exit(fields_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
