// SPDX-License-Identifier: GPL-2.0
/* Cumulative v2: /proc/version only; /proc/cmdline goes back to the original. */
#define STREAM_REPLACE
#include "common.h"
