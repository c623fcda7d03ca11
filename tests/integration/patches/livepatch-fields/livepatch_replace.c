// SPDX-License-Identifier: GPL-2.0
/* A cumulative patch: klp_patch.replace (as kpatch-build and klp-build emit). */
#include "common.h"

static struct klp_object fields_objs[] = {
	{ .funcs = fields_funcs },
	{}
};

static struct klp_patch fields_patch = {
	.mod = THIS_MODULE,
	.objs = fields_objs,
	.replace = true,
};
