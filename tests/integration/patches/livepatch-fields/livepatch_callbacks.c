// SPDX-License-Identifier: GPL-2.0
/* klp_object callbacks, as test_klp_callbacks_demo has. */
#include "common.h"

static int fields_pre_patch(struct klp_object *obj) { return 0; }
static void fields_post_unpatch(struct klp_object *obj) { }

static struct klp_object fields_objs[] = {
	{
		.funcs = fields_funcs,
		.callbacks = {
			.pre_patch = fields_pre_patch,
			.post_unpatch = fields_post_unpatch,
		},
	},
	{}
};

static struct klp_patch fields_patch = {
	.mod = THIS_MODULE,
	.objs = fields_objs,
};
