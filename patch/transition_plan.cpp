#include "patch/transition_plan.h"

#include <algorithm>
#include <set>

#include "guest-shim/trampoline.h"
#include "hvpatch/error.h"
#include "patch/guest_livepatch.h"

namespace hvpatch {

namespace {

constexpr std::uint64_t kSiteSize = 5;  // the ftrace NOP a redirection replaces

const AppliedPatch& patch_named(const VmState& state, const std::string& name) {
    for (const auto& p : state.patches)
        if (p.name == name) return p;
    throw Error(ErrorKind::Internal, "transition plan: no patch " + name + " in the record");
}

// The stack of `site`, with `moving` (if any) counted as live whatever its
// phase (a patch about to start its transition, or one being taken out).
std::vector<StackEntry> stack_with(const VmState& state, std::uint64_t site, const AppliedPatch* moving) {
    std::vector<StackEntry> stack;
    for (const auto& p : state.patches) {
        if (!is_live(p) && &p != moving) continue;
        for (const auto& f : p.functions)
            if (f.site == site) stack.push_back({&p, &f});
    }
    return stack;
}

// The entry right below `moving`'s in `stack`, or nullptr (the original code).
// Sets `top` to whether `moving` is the newest entry.
const RedirectedFunction* below(const std::vector<StackEntry>& stack, const AppliedPatch& moving, bool& top) {
    const RedirectedFunction* previous = nullptr;
    for (std::size_t i = 0; i < stack.size(); ++i) {
        if (stack[i].patch != &moving) {
            previous = stack[i].function;
            continue;
        }
        top = i + 1 == stack.size();
        return previous;
    }
    throw Error(ErrorKind::Internal, "transition plan: patch " + moving.name + " is not on its own stack");
}

CheckedFunction original_code(const RedirectedFunction& f) {
    return {f.name, f.entry, f.entry + std::max<std::uint64_t>(f.size, 1)};
}

void add_trampolines(const AppliedPatch& patch, std::vector<CheckedFunction>& checked) {
    // A task preempted inside one may have made its choice already.
    for (const auto& f : patch.functions)
        if (f.trampoline)
            checked.push_back({"trampoline of " + f.name, f.trampoline, f.trampoline + shim::trampoline_size()});
}

}  // namespace

std::vector<StackEntry> function_stack(const VmState& state, std::uint64_t site) {
    return stack_with(state, site, nullptr);
}

CheckedFunction code_running_now(const VmState& state, const RedirectedFunction& function) {
    auto stack = function_stack(state, function.site);
    return stack.empty() ? original_code(function) : running_code(*stack.back().function);
}

std::vector<std::uint8_t> rest_bytes(const RedirectedFunction& function) {
    return function.nop ? function.original : function.to_new;
}

std::uint64_t run_target(const RedirectedFunction& function) {
    return function.nop ? function.site + kSiteSize : function.new_address;
}

CheckedFunction running_code(const RedirectedFunction& function) {
    if (function.nop) return original_code(function);
    return {function.new_symbol, function.new_address,
            function.new_address + std::max<std::uint64_t>(function.new_size, 1)};
}

std::vector<std::uint8_t> expected_site_bytes(const VmState& state, std::uint64_t site) {
    auto stack = function_stack(state, site);
    if (!stack.empty()) {
        const StackEntry& top = stack.back();
        return top.patch->phase == PatchPhase::Applied ? rest_bytes(*top.function) : top.function->to_trampoline;
    }
    for (const auto& p : state.patches)
        for (const auto& f : p.functions)
            if (f.site == site) return f.original;
    return {};
}

namespace {

// Patching moves each site where the patch is the newest from the function
// below to the patch's own; unpatching the other way. The trampoline is the
// same both ways: KLP_UNPATCHED tasks go below, the others to the patch.
TransitionPlan plan_transition(const VmState& state, const std::string& name, int target) {
    const AppliedPatch& patch = patch_named(state, name);
    const bool patching = target == kKlpPatched;
    TransitionPlan plan;
    plan.patch = name;
    plan.target = target;
    for (const auto& f : patch.functions) {
        bool top = false;
        const RedirectedFunction* previous = below(stack_with(state, f.site, &patch), patch, top);
        const std::vector<std::uint8_t> below_rest = previous ? rest_bytes(*previous) : f.original;
        // klp_check_stack_func: patching, the previous function on the
        // stack (what runs now); unpatching, the function going away.
        if (patching) plan.checked.push_back(previous ? running_code(*previous) : original_code(f));
        else plan.checked.push_back(running_code(f));
        if (!top) continue;
        plan.moves.push_back({f.name, f.site, patching ? below_rest : rest_bytes(f), f.to_trampoline,
                              patching ? rest_bytes(f) : below_rest, f.trampoline,
                              previous ? run_target(*previous) : f.site + kSiteSize, run_target(f)});
    }
    add_trampolines(patch, plan.checked);
    if (patching && patch.replace) plan.replaced = patch.replaces;
    return plan;
}

}  // namespace

TransitionPlan plan_patching(const VmState& state, const std::string& name) {
    return plan_transition(state, name, kKlpPatched);
}

TransitionPlan plan_unpatching(const VmState& state, const std::string& name) {
    return plan_transition(state, name, kKlpUnpatched);
}

std::vector<RedirectedFunction> replace_nops(const VmState& state, const std::string& replacing,
                                             const std::vector<RedirectedFunction>& functions) {
    std::set<std::uint64_t> covered;
    for (const auto& f : functions) covered.insert(f.site);
    std::vector<RedirectedFunction> nops;
    for (const auto& p : state.patches) {
        if (!is_live(p) || p.name == replacing) continue;
        for (const auto& f : p.functions) {
            if (!covered.insert(f.site).second) continue;
            RedirectedFunction nop = f;
            nop.nop = true;
            nop.new_symbol.clear();
            nop.new_address = nop.new_size = nop.trampoline = 0;
            nop.to_trampoline.clear();
            nop.to_new = nop.original;
            nops.push_back(std::move(nop));
        }
    }
    return nops;
}

std::vector<std::string> replaced_by(const VmState& state, const std::string& name) {
    std::vector<std::string> out;
    for (const auto& p : state.patches)
        if (is_live(p) && p.name != name) out.push_back(p.name);
    return out;
}

}  // namespace hvpatch
