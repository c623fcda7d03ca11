// One freeze-and-check pass of a livepatch transition (DESIGN.md §1), as
// kernel/livepatch/transition.c's klp_try_complete_transition() does it
// from inside, but with every task frozen — running ones included, whose
// stacks start at their vCPU's registers.
//
// A task is in the target universe when task->patch_state == target. A
// task that is not is switched in this freeze if its kernel stack unwinds
// reliably and no frame lies in a checked function (patching: the old
// functions; unpatching: the new ones); otherwise it gets
// TIF_PATCH_PENDING (so it switches itself on its way out to user mode or
// in the idle loop) and is reported as a blocker. The guest must be paused
// for the whole pass. `patch_code` is code hvpatch loaded earlier (patches
// applied, or the one in transition), which stacks unwind through.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "introspect/guest_kernel.h"
#include "introspect/task_stacks.h"
#include "patch/guest_livepatch.h"

namespace hvpatch {

struct CheckedFunction {
    std::string name;
    std::uint64_t start = 0, end = 0;  // [start, end)
};

struct TransitionBlocker {
    std::uint64_t task = 0;  // struct task_struct *
    bool kthread = false;
    int pid = 0;
    std::string comm;
    std::string reason;               // "sleeps in do_nanosleep+0x5c/0x140", "unreliable stack: ..."
    std::vector<std::string> frames;  // the stack as resolved, innermost first
};

struct TransitionPass {
    std::size_t tasks = 0;         // tasks seen (idle tasks included)
    std::size_t switched_now = 0;  // switched in this pass
    std::size_t remaining = 0;     // still not in the target universe
    std::vector<TransitionBlocker> blockers;  // one per remaining task
    std::chrono::nanoseconds duration{0};     // host time for the pass (the guest is paused)
    bool complete() const { return remaining == 0; }
};

// Runs one pass towards `target` (kKlpPatched or kKlpUnpatched): sets
// klp_target_state, switches clean tasks, marks the rest pending (or, with
// PassMode::Force, switches them too). Throws Error(Guest) if the guest's own
// livepatch core is mid-transition.
enum class PassMode {
    Switch,  // switch clean tasks, mark the rest pending
    Force,   // switch every task, clean or not (--force, loudly)
    DryRun,  // change nothing; only report who would block
};
TransitionPass run_transition_pass(GuestKernel& kernel, GuestLivepatch& livepatch, int target,
                                   const std::vector<CheckedFunction>& checked, PassMode mode = PassMode::Switch,
                                   const std::vector<ForeignCode>& patch_code = {});

// Ends a completed transition as klp_complete_transition() does: every
// task's patch_state back to KLP_UNDEFINED, TIF_PATCH_PENDING cleared,
// klp_target_state KLP_UNDEFINED. Guest paused.
void clear_transition_state(GuestKernel& kernel, GuestLivepatch& livepatch);

// Every task whose stack is unreliable or has a frame in [begin, end):
// before freeing patch memory nothing may still run in it. Guest paused.
std::vector<TransitionBlocker> tasks_inside(GuestKernel& kernel, std::uint64_t begin, std::uint64_t end,
                                            const std::vector<ForeignCode>& patch_code = {});

}  // namespace hvpatch
