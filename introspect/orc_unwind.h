// ORC unwinder over guest memory, with a reliability verdict per stack.
//
// (The owner of this file refines the API; the shape below is the contract
// the rest of hvpatch relies on.)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hvpatch/address.h"
#include "introspect/virtual_memory.h"

namespace hvpatch {

// ORC entry normalised to one in-memory form whatever the guest's format.
struct OrcEntry {
    enum class Type { Undefined, EndOfStack, Call, Regs, RegsPartial };
    std::int16_t sp_offset = 0;
    std::int16_t bp_offset = 0;
    std::uint8_t sp_reg = 0;  // ORC_REG_* as in arch/x86/include/asm/orc_types.h
    std::uint8_t bp_reg = 0;
    Type type = Type::Undefined;
    bool signal = false;
};

// Guest ORC formats (see orc_unwind.cpp's header for the history).
enum class OrcFormat { V1 /* 4.14..6.2 */, V2 /* 6.3 */, V3 /* 6.4+ */ };

OrcEntry decode_orc_entry(const std::byte raw[6], OrcFormat format);

// Where ORC data for an IP is found: the vmlinux tables (with the
// orc_lookup fast index) and, later, each module's own tables.
class OrcSource {
public:
    virtual ~OrcSource() = default;
    // The entry covering `ip`, or nullopt when no table covers it (the
    // unwinder then declares the stack unreliable, naming the address).
    virtual std::optional<OrcEntry> find(std::uint64_t ip) = 0;
};

struct VmlinuxOrcTables {
    GuestVirtAddr ip_table;      // __start_orc_unwind_ip (s32 self-relative)
    GuestVirtAddr orc_table;     // __start_orc_unwind (6-byte entries)
    std::uint64_t num_entries = 0;
    GuestVirtAddr lookup_table;  // orc_lookup (u32 per LOOKUP_BLOCK_SIZE bytes of text)
    std::uint64_t lookup_entries = 0;
    GuestVirtAddr text_start;    // _stext (lookup base)
    GuestVirtAddr text_end;      // _etext
    OrcFormat format = OrcFormat::V1;
};

// Reads vmlinux's tables out of guest memory (entries read lazily, with a
// small cache; bounded binary searches).
std::unique_ptr<OrcSource> make_vmlinux_orc(VirtualMemory& memory, const VmlinuxOrcTables& tables);

enum class StackType { Task, Irq, Exception, Entry, Unknown };
const char* to_string(StackType type);

struct StackArea {
    StackType type = StackType::Unknown;
    std::string name;    // "task", "IRQ", "#DF", "NMI", "#DB", "#MC", "#VC", "#VC2", "entry"
    std::uint64_t begin = 0;  // lowest address
    std::uint64_t end = 0;    // one past the highest address
};

// pt_regs and inactive_task_frame layouts come from the guest's BTF.
struct UnwindLayouts {
    std::uint64_t pt_regs_size = 0;
    std::uint64_t regs_ip = 0, regs_sp = 0, regs_bp = 0, regs_cs = 0, regs_flags = 0, regs_orig_ax = 0;
    std::uint64_t frame_size = 0, frame_bp = 0, frame_ret_addr = 0;  // inactive_task_frame
};

struct UnwindStart {
    std::uint64_t ip = 0, sp = 0, bp = 0;
    // True for a task that was running on a frozen vCPU: ip/sp/bp are the
    // vCPU's live registers. False for a sleeping task: sp is
    // task->thread.sp and the start is read from its inactive_task_frame.
    bool from_vcpu = false;
};

struct StackFrame {
    GuestVirtAddr ip;
    std::uint64_t sp = 0;
    StackType stack = StackType::Unknown;
    std::string stack_name;
    bool interrupt_frame = false;  // the frame came from a pt_regs (IRQ/exception/syscall entry)
};

struct UnwindResult {
    std::vector<StackFrame> frames;
    bool reliable = false;
    std::string reason;  // why not reliable; or how it ended ("reached user pt_regs", "end of stack hint")
};

struct UnwindContext {
    VirtualMemory* memory = nullptr;
    OrcSource* orc = nullptr;
    UnwindLayouts layouts;
    // Which stack (if any) an address lies on, for the task being unwound
    // and the CPU it runs on.
    std::function<std::optional<StackArea>(std::uint64_t sp)> stack_of;
    std::uint64_t ret_from_fork = 0;  // address of ret_from_fork
    std::size_t max_frames = 256;
};

// Unwinds one stack. Never throws for bad guest data: unreadable memory,
// missing ORC, loops or stacks out of bounds end the walk with
// reliable = false and the reason.
UnwindResult unwind_stack(const UnwindContext& context, const UnwindStart& start);

}  // namespace hvpatch
