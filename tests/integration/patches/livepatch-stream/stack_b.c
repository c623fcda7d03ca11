// SPDX-License-Identifier: GPL-2.0
/* A non-cumulative patch of /proc/version, stacked on stack_a. */
#include "common.h"
