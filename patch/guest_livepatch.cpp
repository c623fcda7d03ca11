#include "patch/guest_livepatch.h"

#include <optional>

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

void GuestLivepatch::taint_livepatch() {
    if (tainted_) return;
    constexpr std::uint64_t kMaxTaintFlags = 64;  // TAINT_FLAGS_COUNT is 19-20 in 5.10-7.x
    const KernelBtf& btf = kernel_.btf();
    auto flags = kernel_.find_symbol("taint_flags");
    auto mask = kernel_.find_symbol("tainted_mask");
    auto letter = btf.find_member("taint_flag", "c_true");
    if (!flags || !mask || !letter || !btf.has_type("taint_flag"))
        throw Error(ErrorKind::Guest, "cannot taint the guest kernel as livepatched: no taint_flags/tainted_mask or "
                                      "struct taint_flag in its BTF");
    const std::uint64_t entry = btf.size_of("taint_flag");
    auto resolved = kernel_.symbols().resolve(GuestVirtAddr{*flags});
    const std::uint64_t bytes = resolved && resolved->offset == 0 && resolved->size ? resolved->size : 0;
    if (entry == 0 || bytes == 0 || bytes / entry > kMaxTaintFlags)
        throw Error(ErrorKind::Guest, "taint_flags at " + hex(*flags) + ": " + std::to_string(bytes) +
                                          " bytes of " + std::to_string(entry) + "-byte entries is not a taint table");
    std::optional<unsigned> bit;
    for (std::uint64_t i = 0; i < bytes / entry; ++i) {
        if (kernel_.memory().read_u8(GuestVirtAddr{*flags + i * entry + letter->offset}) != 'K') continue;
        if (bit)
            throw Error(ErrorKind::Guest, "taint_flags at " + hex(*flags) + " has two 'K' entries (" +
                                              std::to_string(*bit) + " and " + std::to_string(i) + ")");
        bit = static_cast<unsigned>(i);
    }
    if (!bit) throw Error(ErrorKind::Guest, "taint_flags at " + hex(*flags) + " has no 'K' (TAINT_LIVEPATCH) entry");
    const std::uint64_t value = kernel_.memory().read_u64(GuestVirtAddr{*mask});
    if (!(value & (1ULL << *bit))) write_kernel_value(kernel_, *mask, value | (1ULL << *bit));
    tainted_ = true;
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
