// The per-function universe trampoline: guest code that sends each task to
// the old or the new version of a patched function during a transition.
//
// While a function is in transition, its ftrace NOP (at the entry, or at
// entry + 4 after an endbr64) is replaced by `jmp rel32` to a trampoline
// that hvpatch has written into guest module memory. The trampoline reads
// the current task's patch_state and jumps on, leaving every register,
// RSP and RFLAGS as the caller set them, so that to the function it is as
// if the NOP had been executed. Source and constraints: trampoline.S.
//
// The decision is the one the guest's own klp_ftrace_handler() makes during
// a transition (kernel/livepatch/patch.c, Linux 6.1, read for this):
//   * It takes the newest klp_func on the function's ops->func_stack. Only
//     if func->transition is set does it look at current->patch_state
//     (after an smp_rmb(), which on x86 is a compiler barrier: loads are not
//     reordered with older loads, so a plain load is the same here).
//   * patch_state == KLP_UNPATCHED (0): the previous klp_func on the stack,
//     or, if there is none, the original function continues (the handler
//     returns without changing the IP, i.e. execution goes on after the
//     ftrace site).
//   * Otherwise the newest func->new_func. That includes KLP_UNDEFINED (-1):
//     the handler WARN_ON_ONCE()s and then takes the new function (-1 is
//     not KLP_UNPATCHED). The trampoline cannot warn; it takes the new
//     function too.
//   * A `nop` klp_func (atomic replace going back to the original) and the
//     stacking of patches are choices of the caller here: old_continue and
//     new_function are wherever "unpatched" and "patched" tasks must go.
// The same trampoline serves both directions: when patching, tasks start at
// KLP_UNPATCHED and move to KLP_PATCHED; when reverting, the reverse. Since
// -1 means "new", the caller must have set every task to 0 or 1 before it
// redirects an entry here, and must remove the redirection before it puts
// tasks back to -1 at the end of a revert (the guest orders
// klp_complete_transition() the same way).
//
// Things the caller must know: a task interrupted inside the trampoline has
// no ORC data for its RIP (so its stack is unreliable, i.e. blocked: right,
// because its choice may already be made), and a trampoline may only be
// freed when no vCPU or interrupted task is inside it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hvpatch::shim {

struct TrampolineParams {
    std::uint64_t address = 0;             // where the blob will live in the guest
    // %gs-relative disp32 of current_task: a zero-based per-CPU offset (up to
    // 6.14) or, sign-extended, its address in the kernel image (6.15+).
    std::int32_t current_task_offset = 0;
    std::int32_t patch_state_offset = 0;   // offsetof(struct task_struct, patch_state), >= 0
    // Where a task in KLP_UNPATCHED goes: normally the old function right
    // after the replaced NOP (patch site + 5); for a function already taken
    // by an earlier patch, that patch's function.
    std::uint64_t old_continue = 0;
    std::uint64_t new_function = 0;  // where every other task goes: the new function's entry
};

// Size of every trampoline blob in bytes: the code padded with int3 to a
// multiple of 16 (32 bytes today).
std::size_t trampoline_size();

// The trampoline relocated for `params`, trampoline_size() bytes. Throws
// Error(Guest) naming the addresses when old_continue or new_function is
// beyond the ±2 GiB reach of a rel32 jump from `address`, or an offset is
// negative.
std::vector<std::byte> build_trampoline(const TrampolineParams& params);

// The 5-byte `jmp rel32` (e9 + displacement) at `from` to `to`: the entry
// redirection to a trampoline, or to the new function once a transition is
// done. Throws Error(Guest) naming both addresses if out of rel32 reach.
std::array<std::byte, 5> jmp_rel32(std::uint64_t from, std::uint64_t to);

}  // namespace hvpatch::shim
