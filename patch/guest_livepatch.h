// The guest kernel's own livepatch machinery, driven from the host.
//
// A CONFIG_LIVEPATCH kernel (every distribution kernel) already carries the
// per-task consistency state that kernel/livepatch/transition.c drives:
// task->patch_state (KLP_UNDEFINED -1, KLP_UNPATCHED 0, KLP_PATCHED 1),
// TIF_PATCH_PENDING in thread_info.flags, and the global klp_target_state
// that klp_update_patch_state() copies into a pending task on its way out to
// user mode (kernel/entry/common.c) and in the idle loop
// (kernel/sched/idle.c); fork copies both to the child. hvpatch writes the
// same fields, only while every vCPU is paused, so no guest code can see a
// half-made change.
#pragma once

#include <cstdint>

#include "introspect/guest_kernel.h"
#include "introspect/tasks.h"

namespace hvpatch {

inline constexpr int kKlpUndefined = -1;
inline constexpr int kKlpUnpatched = 0;
inline constexpr int kKlpPatched = 1;

class GuestLivepatch {
public:
    // Throws Error(Guest) when the kernel lacks CONFIG_LIVEPATCH (no
    // klp_target_state / task_struct.patch_state) or current_task.
    explicit GuestLivepatch(GuestKernel& kernel);

    // klp_target_state.
    int target_state();
    void set_target_state(int state);
    // The guest's own livepatch core is mid-transition (klp_transition_patch
    // != NULL): hvpatch must not start, and must stop if this happens.
    bool guest_transition_in_progress();

    // Writes task->patch_state and sets or clears TIF_PATCH_PENDING, from
    // the values in `task` as read in this freeze (the flags word is written
    // back with only that bit changed).
    void set_task_state(const GuestTask& task, int patch_state, bool pending);

    // Taints the guest kernel 'K' (TAINT_LIVEPATCH) as the core does for
    // every livepatch (klp_enable_patch -> add_taint_module): sets that bit
    // of tainted_mask if it is not set. The bit is a #define: it is the
    // index of the entry of the guest's taint_flags[] whose letter is 'K'
    // (struct taint_flag from BTF). Error(Guest) if that cannot be told.
    // Call in a freeze; the taint stays, as in the kernel.
    // The bit is derived and the taint written at most once per
    // GuestLivepatch: later passes of a transition cost nothing.
    void taint_livepatch();

    // For the trampoline: the per-CPU offset of current_task and
    // offsetof(struct task_struct, patch_state).
    std::int32_t current_task_offset() const { return current_task_offset_; }
    // TIF_PATCH_PENDING and TIF_NOTIFY_SIGNAL of this guest.
    unsigned tif_patch_pending() const { return tif_patch_pending_; }
    unsigned tif_notify_signal() const { return tif_notify_signal_; }
    std::int32_t patch_state_offset() const { return patch_state_offset_; }

private:
    GuestKernel& kernel_;
    std::uint64_t target_state_addr_ = 0, transition_patch_addr_ = 0;
    std::int32_t current_task_offset_ = 0, patch_state_offset_ = 0;
    unsigned tif_patch_pending_ = 0, tif_notify_signal_ = 0;
    std::uint64_t thread_flags_offset_ = 0;
    bool tainted_ = false;  // taint_livepatch() has made sure of it
};

}  // namespace hvpatch
