// SPDX-License-Identifier: GPL-2.0
/* A non-cumulative patch of /proc/version and /proc/cmdline. */
#define STREAM_CMDLINE
#include "common.h"
