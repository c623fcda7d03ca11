// Which code each redirected function runs, and what one transition
// changes: the livepatch core's per-function func_stack
// (kernel/livepatch/patch.c) kept in the VM's record instead of in klp_ops.
//
// Several patches may redirect one function. Their order is the order of
// VmState::patches (the order they were applied); of the live ones
// (is_live) the last one runs. A transition moves one patch up or down
// those stacks: every function where it is (or becomes) the top changes
// between "the function below" (the previous patch's, or the original
// code) and the patch's own, through a trampoline that sends each task by
// its patch_state, exactly as klp_ftrace_handler() picks between the top
// func and the next one. A function where the patch lies beneath another
// does not move; only the stack check sees it (a task may still run the
// code that is going away).
//
// Plans are pure: computed from the record alone, the same before a step
// and after a crash, which is what makes apply --resume and revert of an
// interrupted operation possible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "patch/applied_state.h"
#include "patch/transition.h"

namespace hvpatch {

// One function that changes code in a transition.
struct SiteMove {
    std::string function;  // old function's name (for messages)
    std::uint64_t site = 0;
    // The bytes at the site when no transition is on: before and after this
    // one. `via` is the jump to this transition's trampoline.
    std::vector<std::uint8_t> rest_before, via, rest_after;
    std::uint64_t trampoline = 0;
    std::uint64_t unpatched_target = 0;  // where a task in KLP_UNPATCHED goes
    std::uint64_t patched_target = 0;    // where every other task goes
};

struct TransitionPlan {
    std::string patch;  // the patch that moves
    int target = 0;     // kKlpPatched (apply) or kKlpUnpatched (revert)
    std::vector<SiteMove> moves;
    // Code that no task may be in to switch (klp_check_stack_func): what
    // the switching task leaves behind, and the trampolines in use.
    std::vector<CheckedFunction> checked;
    // Apply of a replacing patch: the patches gone when it completes.
    std::vector<std::string> replaced;
};

// The live redirections of one site, oldest first.
struct StackEntry {
    const AppliedPatch* patch = nullptr;
    const RedirectedFunction* function = nullptr;
};
std::vector<StackEntry> function_stack(const VmState& state, std::uint64_t site);

// The bytes the site holds while `entry` is the top and no transition is
// on (its jump, or for a nop the original bytes); where its tasks go; the
// code they run.
std::vector<std::uint8_t> rest_bytes(const RedirectedFunction& function);
std::uint64_t run_target(const RedirectedFunction& function);
CheckedFunction running_code(const RedirectedFunction& function);

// The code a task runs now where `function` redirects (the newest live
// patch's, or the original function): what a new patch's transition checks
// stacks for there (klp_check_stack_func when patching).
CheckedFunction code_running_now(const VmState& state, const RedirectedFunction& function);

// What the site of `function` should hold now, from the record: the top's
// rest bytes (applied) or trampoline jump (patching, unpatching), the
// original bytes if nothing is live there.
std::vector<std::uint8_t> expected_site_bytes(const VmState& state, std::uint64_t site);

// The transition that takes patch `name` (in `state`) to patched: each of
// its functions where it is the top moves from the one below to its own.
// A replacing patch's record already holds its nops (replace_nops).
TransitionPlan plan_patching(const VmState& state, const std::string& name);
// The transition that takes patch `name` out: where it is the top, its
// functions go back to the one below (for a replacing patch, the original
// code: what it replaced is gone).
TransitionPlan plan_unpatching(const VmState& state, const std::string& name);

// The core's nop functions of an atomic replace: one per site that a live
// patch other than `replacing` redirects and `replacing`'s functions do not,
// with the original bytes taken from the oldest record of that site.
std::vector<RedirectedFunction> replace_nops(const VmState& state, const std::string& replacing,
                                             const std::vector<RedirectedFunction>& functions);

// The live patches other than `name`: what a replace takes over.
std::vector<std::string> replaced_by(const VmState& state, const std::string& name);

}  // namespace hvpatch
