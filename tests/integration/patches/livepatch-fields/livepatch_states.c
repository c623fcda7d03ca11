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
