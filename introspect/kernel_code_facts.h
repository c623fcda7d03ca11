// Constants of the guest kernel that BTF cannot carry (#defines), derived
// from the guest's own machine code, each cross-checked, never taken from a
// version table alone:
//
//   TIF_PATCH_PENDING  13 up to 6.17 (x86 thread_info.h), 9 with the generic
//                      TIF bits (7.x): the `lock btr $N, [rdi]` of
//                      klp_update_patch_state(), whose next store must go to
//                      task_struct.patch_state (offset from BTF).
//   TIF_NOTIFY_SIGNAL  19 (5.10), 17 (5.11-6.x), 2 (7.x): the bit the guest's
//                      own klp_send_signals() sets (inlined into
//                      klp_try_complete_transition() on 6.x/7.x), else
//                      (5.10, whose livepatch sends a fake SIGPENDING) the
//                      candidate of that TIF layout that task_work_add()
//                      sets with `lock bts` (TWA_SIGNAL); exactly one must fit.
//   ftrace's 5-byte NOP  x86_nops[5] (6.x: 0f 1f 44 00 00), or 5.10's
//                      ideal_nops[NOP_ATOMIC5], chosen at boot for the CPU
//                      (66 66 66 66 90 on TCG's default CPU); must decode as
//                      one 5-byte NOP.
//
// Every read is bounded; what cannot be derived is Error(Guest) naming the
// function and what was missing.
#pragma once

#include <array>
#include <cstdint>

#include <optional>
#include <string_view>

#include "introspect/code_inspect.h"
#include "introspect/guest_kernel.h"

namespace hvpatch {

struct ThreadFlagBits {
    unsigned patch_pending = 0;  // TIF_PATCH_PENDING
    unsigned notify_signal = 0;  // TIF_NOTIFY_SIGNAL
};

// Needs CONFIG_LIVEPATCH (klp_update_patch_state).
ThreadFlagBits derive_thread_flag_bits(GuestKernel& kernel);

// `lock OP qword ptr [reg], N` (OP btr or bts: a thread flag set or cleared
// atomically through task->thread_info.flags at offset 0) -> N; also the
// unlocked form a one-CPU guest runs. nullopt for anything else.
std::optional<unsigned> thread_flag_bit_op(const Instruction& insn, std::string_view op);

using FtraceNop = std::array<std::uint8_t, 5>;
FtraceNop derive_ftrace_nop(GuestKernel& kernel);

}  // namespace hvpatch
