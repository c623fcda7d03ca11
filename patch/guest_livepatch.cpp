#include "patch/guest_livepatch.h"

#include "hvpatch/error.h"
#include "patch/kernel_write.h"

namespace hvpatch {

GuestLivepatch::GuestLivepatch(GuestKernel& kernel) : kernel_(kernel) {
    const auto& task = kernel.layouts().task;
    auto target = kernel.find_symbol("klp_target_state");
    auto transition = kernel.find_symbol("klp_transition_patch");
    if (!target || !transition || !task.patch_state)
        throw Error(ErrorKind::Guest, "guest kernel " + kernel.info().release +
                                          " has no livepatch support (CONFIG_LIVEPATCH: klp_target_state, "
                                          "klp_transition_patch, task_struct.patch_state)");
    if (task.patch_state->size != 4 || task.thread_info_flags.size != 8)
        throw Error(ErrorKind::Guest, "guest BTF: task_struct.patch_state is " +
                                          std::to_string(task.patch_state->size) + " bytes, thread_info.flags " +
                                          std::to_string(task.thread_info_flags.size) + " (expected 4 and 8)");
    // The TIF bits are #defines that moved between kernels: derived from
    // the guest's own code when it was opened (kernel_code_facts.h).
    const KernelInfo& info = kernel.info();
    if (!info.tif_patch_pending || !info.tif_notify_signal)
        throw Error(ErrorKind::Guest, "guest kernel " + info.release +
                                          ": cannot tell its thread-flag bits: " + info.thread_flags_problem);
    tif_patch_pending_ = *info.tif_patch_pending;
    tif_notify_signal_ = *info.tif_notify_signal;
    target_state_addr_ = *target;
    transition_patch_addr_ = *transition;
    patch_state_offset_ = static_cast<std::int32_t>(task.patch_state->offset);
    thread_flags_offset_ = task.thread_info_flags.offset;
    // The trampoline reads current_task %gs-relative with a sign-extended
    // disp32: a zero-based per-CPU offset (up to 6.14) or its address in
    // the image's .data..percpu (6.15+), both within reach.
    const std::uint64_t current = kernel.per_cpu_variable("current_task");
    if (current >= 0x80000000ULL && current < 0xffffffff80000000ULL)
        throw Error(ErrorKind::Guest, "current_task is at " + hex(current) +
                                          ", which a %gs-relative disp32 cannot reach");
    current_task_offset_ = static_cast<std::int32_t>(static_cast<std::uint32_t>(current));
}

int GuestLivepatch::target_state() {
    return static_cast<std::int32_t>(kernel_.memory().read_u32(GuestVirtAddr{target_state_addr_}));
}

void GuestLivepatch::set_target_state(int state) {
    write_kernel_value(kernel_, target_state_addr_, static_cast<std::int32_t>(state));
}

bool GuestLivepatch::guest_transition_in_progress() {
    return kernel_.memory().read_u64(GuestVirtAddr{transition_patch_addr_}) != 0;
}

void GuestLivepatch::set_task_state(const GuestTask& task, int patch_state, bool pending) {
    if (!task.patch_state || *task.patch_state != patch_state)
        write_kernel_value(kernel_, task.address + patch_state_offset_, static_cast<std::int32_t>(patch_state));
    std::uint64_t flags = task.thread_flags;
    std::uint64_t bit = std::uint64_t{1} << tif_patch_pending_;
    std::uint64_t wanted = pending ? (flags | bit) : (flags & ~bit);
    if (wanted != flags) write_kernel_value(kernel_, task.address + thread_flags_offset_, wanted);
}

}  // namespace hvpatch
