// SPDX-License-Identifier: GPL-2.0
/*
 * hvpatch example patch 3: a patch that changes a function's prototype.
 *
 * /proc/PID/statm is made by proc_pid_statm (fs/proc/array.c), which gets
 * its numbers from task_statm (fs/proc/task_mmu.c):
 *
 *   old: unsigned long task_statm(struct mm_struct *mm, unsigned long *shared,
 *                                 unsigned long *text, unsigned long *data,
 *                                 unsigned long *resident);
 *   new: unsigned long task_statm(struct mm_struct *mm, unsigned long *resident,
 *                                 unsigned long *shared, unsigned long *text,
 *                                 unsigned long *data);
 *
 * (the output parameters in the order the file prints them). Both functions
 * are replaced by the same klp_object, so that a task runs either both old
 * or both new versions. The new proc_pid_statm passes its arguments in the
 * new order and ends the line with " livepatched":
 *
 *   old: "565 1 0 388 0 77 0"               size resident shared text 0 data 0
 *   new: "565 1 0 388 0 77 0 livepatched"
 *
 * A mismatched pairing permutes the four numbers without crashing (every
 * parameter is still a valid pointer to an unsigned long):
 *
 *   new caller, old callee: "565 0 388 77 0 1 0 livepatched"
 *   old caller, new callee: "565 77 1 0 0 388 0"
 *
 * so a checker that reads the statm of a process whose memory does not change
 * (e.g. a sleeping `sleep`) and knows its four values are distinct sees every
 * mismatch (guest/bin/proto-check).
 *
 * The new caller calls task_statm through its patched entry (the address in
 * klp_func.old_func, which the livepatch core fills in when it resolves
 * old_name), exactly as vmlinux's own callers do, so that which task_statm it
 * reaches depends on the calling task's patch state like for any other
 * caller. A loader that leaves old_func NULL gets a direct call to the new
 * task_statm instead. Both functions are global (`T`), unique in kallsyms
 * (old_sympos 0) and start with an ftrace NOP in 6.1-56-amd64;
 * proc_pid_statm is the only caller of task_statm. Only exported symbols are
 * used (no klp relocations).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/version.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>

typedef unsigned long (*task_statm_fn)(struct mm_struct *mm, unsigned long *resident, unsigned long *shared,
				       unsigned long *text, unsigned long *data);

/* Indexes in prototype_funcs[]. */
enum { FUNC_PROC_PID_STATM, FUNC_TASK_STATM, NR_FUNCS };
static struct klp_func prototype_funcs[NR_FUNCS + 1];

/*
 * The exact RSS counter, as task_statm reads it: up to 6.1 the counters are
 * atomics (get_mm_counter); from 6.2 they are per-CPU counters, and the
 * kernels of the test matrix (6.12.y, 7.x) sum them exactly
 * (get_mm_counter_sum, not in every 6.2+ series: hence the sum here).
 */
static unsigned long exact_mm_counter(struct mm_struct *mm, int member)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
	return percpu_counter_sum_positive(&mm->rss_stat[member]);
#else
	return get_mm_counter(mm, member);
#endif
}

/* task_statm with the new prototype; the same numbers. */
static noinline unsigned long livepatch_task_statm(struct mm_struct *mm, unsigned long *resident,
						   unsigned long *shared, unsigned long *text,
						   unsigned long *data)
{
	*shared = exact_mm_counter(mm, MM_FILEPAGES) + exact_mm_counter(mm, MM_SHMEMPAGES);
	*text = (PAGE_ALIGN(mm->end_code) - (mm->start_code & PAGE_MASK)) >> PAGE_SHIFT;
	*data = mm->data_vm + mm->stack_vm;
	*resident = *shared + exact_mm_counter(mm, MM_ANONPAGES);
	return mm->total_vm;
}

/* proc_pid_statm calling task_statm with the new prototype. */
static int livepatch_proc_pid_statm(struct seq_file *m, struct pid_namespace *ns, struct pid *pid,
				    struct task_struct *task)
{
	struct mm_struct *mm = get_task_mm(task);

	if (mm) {
		task_statm_fn statm = READ_ONCE(prototype_funcs[FUNC_TASK_STATM].old_func);
		unsigned long size;
		unsigned long resident = 0;
		unsigned long shared = 0;
		unsigned long text = 0;
		unsigned long data = 0;

		if (!statm)
			statm = livepatch_task_statm;
		size = statm(mm, &resident, &shared, &text, &data);
		mmput(mm);

		seq_put_decimal_ull(m, "", size);
		seq_put_decimal_ull(m, " ", resident);
		seq_put_decimal_ull(m, " ", shared);
		seq_put_decimal_ull(m, " ", text);
		seq_put_decimal_ull(m, " ", 0);
		seq_put_decimal_ull(m, " ", data);
		seq_put_decimal_ull(m, " ", 0);
		seq_puts(m, " livepatched\n");
	} else {
		seq_puts(m, "0 0 0 0 0 0 0 livepatched\n");
	}
	return 0;
}

static struct klp_func prototype_funcs[NR_FUNCS + 1] = {
	[FUNC_PROC_PID_STATM] = {
		.old_name = "proc_pid_statm",
		.new_func = livepatch_proc_pid_statm,
	},
	[FUNC_TASK_STATM] = {
		.old_name = "task_statm",
		.new_func = livepatch_task_statm,
	},
	{}
};

static struct klp_object prototype_objs[] = {
	{
		/* .name = NULL: both functions live in vmlinux */
		.funcs = prototype_funcs,
	},
	{}
};

static struct klp_patch prototype_patch = {
	.mod = THIS_MODULE,
	.objs = prototype_objs,
};

static int livepatch_prototype_init(void)
{
	return klp_enable_patch(&prototype_patch);
}

static void livepatch_prototype_exit(void)
{
}

module_init(livepatch_prototype_init);
module_exit(livepatch_prototype_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hvpatch example: proc_pid_statm and task_statm with a new task_statm prototype");
MODULE_INFO(livepatch, "Y");
