#include "patch/transition.h"

#include <algorithm>

#include "hvpatch/error.h"
#include "introspect/task_stacks.h"
#include "introspect/tasks.h"

namespace hvpatch {

namespace {

std::vector<std::string> describe_frames(const TaskStack& stack) {
    std::vector<std::string> out;
    for (const auto& frame : stack.frames) out.push_back(frame.describe());
    return out;
}

// Why `stack` keeps its task from switching, or "" if it does not.
std::string blocking_reason(const TaskStack& stack, const std::vector<CheckedFunction>& checked) {
    if (!stack.unwind.reliable) return "unreliable stack: " + stack.unwind.reason;
    for (const auto& frame : stack.frames) {
        std::uint64_t ip = frame.frame.ip.value;
        for (const auto& function : checked)
            if (ip >= function.start && ip < function.end)
                return "in " + function.name + " (" + frame.describe() + ")";
    }
    return {};
}

// A task whose stack is gone (an exited task after its final schedule) has
// nothing on it: stack_trace_save_tsk_reliable() reports it empty too.
bool has_no_stack(const GuestTask& task) { return task.stack_base == 0; }

}  // namespace

TransitionPass run_transition_pass(GuestKernel& kernel, GuestLivepatch& livepatch, int target,
                                   const std::vector<CheckedFunction>& checked, PassMode mode,
                                   const std::vector<ForeignCode>& patch_code) {
    const auto start = std::chrono::steady_clock::now();
    if (target != kKlpPatched && target != kKlpUnpatched)
        throw Error(ErrorKind::Internal, "transition target must be patched or unpatched");
    const bool dry = mode == PassMode::DryRun;
    if (!dry && livepatch.guest_transition_in_progress())
        throw Error(ErrorKind::Guest, "the guest's own livepatch core is in a transition (klp_transition_patch "
                                      "is set); hvpatch does not run alongside it");
    const int initial = target == kKlpPatched ? kKlpUnpatched : kKlpPatched;
    // The core taints every kernel it patches 'K' (klp_enable_patch).
    if (!dry && target == kKlpPatched) livepatch.taint_livepatch();
    if (!dry && livepatch.target_state() != target) livepatch.set_target_state(target);

    TransitionPass pass;
    std::vector<GuestTask> tasks = list_tasks(kernel);
    StackWalker walker(kernel, patch_code);
    pass.tasks = tasks.size();
    for (const GuestTask& task : tasks) {
        if (task.patch_state == target) {
            // Switched earlier (by hvpatch or by klp_update_patch_state()).
            if (task.patch_pending && !dry) livepatch.set_task_state(task, target, false);
            continue;
        }
        std::string reason;
        std::vector<std::string> frames;
        if (!has_no_stack(task)) {
            TaskStack stack = walker.unwind(task);
            reason = blocking_reason(stack, checked);
            if (!reason.empty()) frames = describe_frames(stack);
        }
        if (reason.empty() || mode == PassMode::Force) {
            if (!dry) livepatch.set_task_state(task, target, false);
            ++pass.switched_now;
            if (reason.empty()) continue;
        } else {
            if (!dry) livepatch.set_task_state(task, initial, true);
            ++pass.remaining;
        }
        // Forced tasks are reported too: the operator must see whom --force switched.
        pass.blockers.push_back({task.address, task.kthread, task.pid, task.comm, std::move(reason), std::move(frames)});
    }
    pass.duration = std::chrono::steady_clock::now() - start;
    return pass;
}

void clear_transition_state(GuestKernel& kernel, GuestLivepatch& livepatch) {
    for (const GuestTask& task : list_tasks(kernel))
        if (task.patch_state != kKlpUndefined || task.patch_pending)
            livepatch.set_task_state(task, kKlpUndefined, false);
    livepatch.set_target_state(kKlpUndefined);
}

std::vector<TransitionBlocker> tasks_inside(GuestKernel& kernel, std::uint64_t begin, std::uint64_t end,
                                            const std::vector<ForeignCode>& patch_code) {
    std::vector<CheckedFunction> region = {{"patch memory", begin, end}};
    std::vector<TransitionBlocker> inside;
    StackWalker walker(kernel, patch_code);
    for (const GuestTask& task : list_tasks(kernel)) {
        if (has_no_stack(task)) continue;
        TaskStack stack = walker.unwind(task);
        std::string reason = blocking_reason(stack, region);
        if (!reason.empty()) inside.push_back({task.address, task.kthread, task.pid, task.comm, std::move(reason), describe_frames(stack)});
    }
    return inside;
}

}  // namespace hvpatch
