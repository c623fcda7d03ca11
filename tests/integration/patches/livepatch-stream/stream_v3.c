// SPDX-License-Identifier: GPL-2.0
/* Cumulative v3: /proc/version and /proc/cmdline again. */
#define STREAM_REPLACE
#define STREAM_CMDLINE
#include "common.h"
