// SPDX-License-Identifier: GPL-2.0
/*
 * hvpatch example patch 2: replace do_nanosleep (kernel/time/hrtimer.c),
 * the function a task sleeps in during nanosleep(2) and clock_nanosleep(2),
 * with an identical copy that lives in this module.
 *
 * Why this function: every task asleep in nanosleep has it on its kernel
 * stack (hrtimer_nanosleep or hrtimer_nanosleep_restart -> do_nanosleep ->
 * schedule), so a consistent transition cannot switch such a task until it
 * wakes up: the test guest's `sleep 1000000` workloads hold the transition
 * until the livepatch core's fake signal restarts their nanosleep (through
 * restart_syscall, into the new copy). In 6.1-56-amd64 it is a local symbol
 * (`t`), unique in kallsyms (old_sympos 0), with an ftrace NOP at its entry,
 * and it is called, not inlined, from both its callers.
 *
 * What a test can observe: the original is in .sched.text, which
 * /proc/PID/stack and /proc/PID/wchan skip (a sleeper shows
 * hrtimer_nanosleep at the top), while this copy is not, so a task asleep in
 * the new version shows `livepatch_do_nanosleep` as the top frame of
 * /proc/PID/stack and as its /proc/PID/wchan. Nothing else changes.
 *
 * The copy calls only exported functions (no klp relocations needed):
 * nanosleep_copyout is not exported, so it is copied too.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/compat.h>
#include <linux/freezer.h>
#include <linux/hrtimer.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/time.h>
#include <linux/version.h>

/* nanosleep_copyout (kernel/time/hrtimer.c), which is not exported. */
static int livepatch_nanosleep_copyout(struct restart_block *restart, struct timespec64 *ts)
{
	switch (restart->nanosleep.type) {
#ifdef CONFIG_COMPAT_32BIT_TIME
	case TT_COMPAT:
		if (put_old_timespec32(ts, restart->nanosleep.compat_rmtp))
			return -EFAULT;
		break;
#endif
	case TT_NATIVE:
		if (put_timespec64(ts, restart->nanosleep.rmtp))
			return -EFAULT;
		break;
	default:
		/*
		 * Unreachable (the caller checked for TT_NONE); the original
		 * BUG()s here. Not copied, so that the module has no
		 * __bug_table for a loader to register.
		 */
		return -EINVAL;
	}
	return -ERESTART_RESTARTBLOCK;
}

/* do_nanosleep, line for line, without __sched (see the header comment). */
static noinline int livepatch_do_nanosleep(struct hrtimer_sleeper *t, enum hrtimer_mode mode)
{
	struct restart_block *restart;

	do {
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
		set_current_state(TASK_INTERRUPTIBLE | TASK_FREEZABLE);
#else
		/* Before 6.1 (TASK_FREEZABLE), do_nanosleep used freezable_schedule(). */
		set_current_state(TASK_INTERRUPTIBLE);
#endif
		hrtimer_sleeper_start_expires(t, mode);

		if (likely(t->task))
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
			schedule();
#else
			freezable_schedule();
#endif

		hrtimer_cancel(&t->timer);
		mode = HRTIMER_MODE_ABS;

	} while (t->task && !signal_pending(current));

	__set_current_state(TASK_RUNNING);

	if (!t->task)
		return 0;

	restart = &current->restart_block;
	if (restart->nanosleep.type != TT_NONE) {
		ktime_t rem = hrtimer_expires_remaining(&t->timer);
		struct timespec64 rmt;

		if (rem <= 0)
			return 0;
		rmt = ktime_to_timespec64(rem);

		return livepatch_nanosleep_copyout(restart, &rmt);
	}
	return -ERESTART_RESTARTBLOCK;
}

static struct klp_func sleeper_funcs[] = {
	{
		.old_name = "do_nanosleep",
		.new_func = livepatch_do_nanosleep,
	},
	{}
};

static struct klp_object sleeper_objs[] = {
	{
		/* .name = NULL: the function lives in vmlinux */
		.funcs = sleeper_funcs,
	},
	{}
};

static struct klp_patch sleeper_patch = {
	.mod = THIS_MODULE,
	.objs = sleeper_objs,
};

static int livepatch_sleeper_init(void)
{
	return klp_enable_patch(&sleeper_patch);
}

static void livepatch_sleeper_exit(void)
{
}

module_init(livepatch_sleeper_init);
module_exit(livepatch_sleeper_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hvpatch example: nanosleep sleeps in a copy of do_nanosleep that /proc/PID/stack shows");
MODULE_INFO(livepatch, "Y");
