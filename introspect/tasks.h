// The guest's tasks, walked from init_task through `tasks` (one entry per
// thread group leader) and each group's `signal->thread_head` list, plus the
// per-CPU idle tasks (runqueues.idle), which are on neither list, and each
// CPU's current task (runqueues.curr).
//
// Guest lists are untrusted: each walk is bounded, detects cycles and
// reports the first unreadable or inconsistent entry by address.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "introspect/guest_kernel.h"

namespace hvpatch {

struct GuestTask {
    std::uint64_t address = 0;  // struct task_struct *
    int pid = 0, tgid = 0;
    std::string comm;              // task->comm (at most TASK_COMM_LEN - 1 bytes)
    std::string name;              // as /proc/PID/comm shows it (see proc_name())
    std::uint32_t state = 0;       // __state
    std::uint32_t exit_state = 0;
    char state_letter = '?';       // as /proc/PID/stat: R S D T t X Z P I
    std::uint32_t flags = 0;       // PF_*
    std::uint64_t thread_flags = 0;  // thread_info.flags (TIF_*)
    bool kthread = false;
    bool idle = false;             // a CPU's idle task (pid 0)
    int cpu = -1;                  // thread_info.cpu: where it last ran
    std::optional<int> running_on; // the CPU whose current task this is
    bool on_cpu = false;           // task->on_cpu: running, or mid context switch
    std::uint64_t stack_base = 0;  // task->stack
    std::uint64_t saved_sp = 0;    // thread.sp
    std::uint64_t mm = 0;
    std::optional<int> patch_state;  // KLP_UNDEFINED/UNPATCHED/PATCHED
    bool patch_pending = false;      // TIF_PATCH_PENDING (false when the kernel has none)
};

// The reported state letter for __state/exit_state, as fs/proc/array.c
// computes it (task_state_index()).
char task_state_letter(std::uint32_t state, std::uint32_t exit_state);

struct TaskListOptions {
    std::size_t max_tasks = 1 << 20;  // refuse guests claiming more
};

// All tasks: idle tasks first (one per possible CPU), then init's list in
// list order with each group's threads. Throws Error(Guest) for a corrupt
// list (cycle, dangling pointer, over max_tasks).
std::vector<GuestTask> list_tasks(GuestKernel& kernel, const TaskListOptions& options = {});

// The name /proc/PID/comm shows (fs/proc/array.c proc_task_name()): a
// workqueue worker's comm plus "+desc" (working) or "-desc" (idle)
// (wq_worker_comm()), a kthread's full name (kthread->full_name, 6.1+,
// for names longer than comm), else comm. Falls back to comm when the
// guest's BTF lacks the structures or their memory is unreadable.
std::string proc_name(GuestKernel& kernel, const GuestTask& task);

// Reads one task_struct.
GuestTask read_task(GuestKernel& kernel, std::uint64_t address);

}  // namespace hvpatch
