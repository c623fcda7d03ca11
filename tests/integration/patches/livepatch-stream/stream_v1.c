// SPDX-License-Identifier: GPL-2.0
/* Cumulative v1: /proc/version and /proc/cmdline. */
#define STREAM_REPLACE
#define STREAM_CMDLINE
#include "common.h"
