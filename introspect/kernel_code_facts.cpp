#include "introspect/kernel_code_facts.h"

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/code_inspect.h"

namespace hvpatch {
namespace {

constexpr std::size_t kMaxFunctionBytes = 4096;
constexpr std::size_t kMaxInstructions = 1024;

// The function's code: up to the next symbol, at most kMaxFunctionBytes.
std::vector<Instruction> function_code(GuestKernel& kernel, std::string_view name) {
    const std::uint64_t entry = kernel.symbol(name);
    auto resolved = kernel.symbols().resolve(GuestVirtAddr{entry});
    std::uint64_t size = resolved && resolved->size ? std::min<std::uint64_t>(resolved->size, kMaxFunctionBytes)
                                                    : kMaxFunctionBytes;
    auto bytes = kernel.memory().read_bytes(GuestVirtAddr{entry}, size);
    return decode(bytes, entry, kMaxInstructions);
}

}  // namespace

std::optional<unsigned> thread_flag_bit_op(const Instruction& insn, std::string_view op) {
    // On a guest booted with one CPU the kernel's alternatives turned every
    // LOCK prefix into DS (alternatives_smp_unlock): "btr qword ptr ds:[rdi]".
    if (insn.mnemonic != op && insn.mnemonic != "lock " + std::string(op)) return std::nullopt;
    const std::string& o = insn.operands;
    std::size_t open = 0;
    if (o.rfind("qword ptr [", 0) == 0) open = 10;
    else if (o.rfind("qword ptr ds:[", 0) == 0) open = 13;
    else return std::nullopt;
    const auto close = o.find(']', open);
    if (close == std::string::npos || o.find_first_of("+-*", open) < close) return std::nullopt;  // [reg] only
    if (o.compare(close, 3, "], ") != 0) return std::nullopt;
    const std::string imm = o.substr(close + 3);
    try {
        std::size_t used = 0;
        const unsigned long v = std::stoul(imm, &used, 0);
        if (used != imm.size() || v > 63) return std::nullopt;
        return static_cast<unsigned>(v);
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

namespace {

std::set<unsigned> locked_bit_ops(const std::vector<Instruction>& code, std::string_view op) {
    std::set<unsigned> bits;
    for (const Instruction& insn : code)
        if (auto bit = thread_flag_bit_op(insn, op)) bits.insert(*bit);
    return bits;
}

std::string list(const std::set<unsigned>& bits) {
    std::string out;
    for (unsigned b : bits) out += (out.empty() ? "" : ", ") + std::to_string(b);
    return out.empty() ? "none" : out;
}

}  // namespace

ThreadFlagBits derive_thread_flag_bits(GuestKernel& kernel) {
    const auto& task = kernel.layouts().task;
    if (task.thread_info_flags.offset != 0)
        throw Error(ErrorKind::Guest, "thread_info.flags is not at the start of task_struct: TIF bits not derivable");
    ThreadFlagBits bits;

    // klp_update_patch_state(task):
    //   if (test_and_clear_tsk_thread_flag(task, TIF_PATCH_PENDING))
    //       task->patch_state = READ_ONCE(klp_target_state);
    const auto update = function_code(kernel, "klp_update_patch_state");
    const auto& patch_state = task.patch_state;
    if (!patch_state) throw Error(ErrorKind::Guest, "task_struct has no patch_state (no CONFIG_LIVEPATCH)");
    std::optional<unsigned> pending;
    for (std::size_t i = 0; i < update.size() && !pending; ++i) {
        auto bit = thread_flag_bit_op(update[i], "btr");
        if (!bit) continue;
        // The cross-check: the store that follows goes to patch_state.
        const std::string store = "dword ptr [rdi + " + hex_short(patch_state->offset) + "]";
        for (std::size_t j = i + 1; j < update.size() && j < i + 6; ++j)
            if (update[j].mnemonic == "mov" && update[j].operands.rfind(store, 0) == 0) pending = bit;
        if (!pending)
            throw Error(ErrorKind::Guest, "klp_update_patch_state at " + hex(update.front().address) +
                                              " clears bit " + std::to_string(*bit) +
                                              " but does not then store to task_struct.patch_state (" +
                                              hex_short(patch_state->offset) + ")");
    }
    if (!pending)
        throw Error(ErrorKind::Guest, "klp_update_patch_state at " +
                                          (update.empty() ? std::string("?") : hex(update.front().address)) +
                                          " has no `lock btr` of a thread flag (nor `btr`, as on a guest booted "
                                          "with one CPU): TIF_PATCH_PENDING not found");
    bits.patch_pending = *pending;

    // TIF_NOTIFY_SIGNAL: what the guest's own klp sets to nudge a task.
    std::set<unsigned> klp_sets;
    for (const char* name : {"klp_send_signals", "klp_try_complete_transition"})
        if (kernel.find_symbol(name)) {
            klp_sets = locked_bit_ops(function_code(kernel, name), "bts");
            klp_sets.erase(bits.patch_pending);
            if (!klp_sets.empty()) break;
        }
    if (klp_sets.size() == 1) {
        bits.notify_signal = *klp_sets.begin();
        return bits;
    }
    if (klp_sets.size() > 1)
        throw Error(ErrorKind::Guest, "the guest's livepatch code sets thread flags " + list(klp_sets) +
                                          ": TIF_NOTIFY_SIGNAL is not one bit");
    // No bts there (5.10: a fake SIGPENDING). The layout that
    // TIF_PATCH_PENDING names has these candidates; task_work_add() sets
    // TIF_NOTIFY_SIGNAL for TWA_SIGNAL.
    std::set<unsigned> candidates;
    if (bits.patch_pending == 13) candidates = {17, 19};
    if (bits.patch_pending == 9) candidates = {2};
    const std::set<unsigned> sets = locked_bit_ops(function_code(kernel, "task_work_add"), "bts");
    std::set<unsigned> fit;
    std::set_intersection(candidates.begin(), candidates.end(), sets.begin(), sets.end(),
                          std::inserter(fit, fit.begin()));
    if (fit.size() != 1)
        throw Error(ErrorKind::Guest, "cannot tell TIF_NOTIFY_SIGNAL: with TIF_PATCH_PENDING " +
                                          std::to_string(bits.patch_pending) + " it is one of " + list(candidates) +
                                          ", and task_work_add sets " + list(sets));
    bits.notify_signal = *fit.begin();
    return bits;
}

FtraceNop derive_ftrace_nop(GuestKernel& kernel) {
    KernelMemory& memory = kernel.memory();
    std::uint64_t nop_at = 0;
    std::string source;
    if (auto nops = kernel.find_symbol("x86_nops")) {
        // const unsigned char * const x86_nops[ASM_NOP_MAX + 1]
        nop_at = memory.read_u64(GuestVirtAddr{*nops + 5 * 8});
        source = "x86_nops[5]";
    } else if (auto ideal = kernel.find_symbol("ideal_nops")) {
        // const unsigned char * const *ideal_nops; NOP_ATOMIC5 = ASM_NOP_MAX + 1 = 9
        const std::uint64_t table = memory.read_u64(GuestVirtAddr{*ideal});
        nop_at = memory.read_u64(GuestVirtAddr{table + 9 * 8});
        source = "ideal_nops[NOP_ATOMIC5]";
    } else {
        throw Error(ErrorKind::Guest, "the guest kernel has neither x86_nops nor ideal_nops: ftrace's NOP unknown");
    }
    FtraceNop nop{};
    auto bytes = memory.read_bytes(GuestVirtAddr{nop_at}, nop.size());
    std::transform(bytes.begin(), bytes.end(), nop.begin(), [](std::byte b) { return static_cast<std::uint8_t>(b); });
    auto insn = decode(bytes, nop_at, 1);
    if (insn.size() != 1 || insn.front().mnemonic != "nop" || insn.front().size != nop.size())
        throw Error(ErrorKind::Guest, source + " at " + hex(nop_at) + " is " + format_code_bytes(bytes) +
                                          ", not one 5-byte NOP");
    return nop;
}

}  // namespace hvpatch
