// ORC unwinder over guest memory, with a reliability verdict per stack.
//
// A faithful host-side copy of the guest kernel's own ORC unwinder
// (arch/x86/kernel/unwind_orc.c: orc_find, __orc_find, unwind_next_frame,
// __unwind_start) and of its reliable walk (arch/x86/kernel/stacktrace.c:
// arch_stack_walk_reliable), plus the checks of
// Documentation/livepatch/reliable-stacktrace.rst that the kernel leaves to
// the fact that it never walks a running task. The ORC format history and
// the full list of reliability rules are in orc_unwind.cpp's header.
//
// The guest is the adversary: every table, stack word and layout may be
// corrupt. Nothing here loops without a bound, and bad guest data never
// throws out of unwind_stack(): it ends the walk with reliable = false and
// a reason naming the address.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hvpatch/address.h"
#include "introspect/virtual_memory.h"

namespace hvpatch {

// The base registers of an ORC entry, normalised: these are ORC_REG_* of
// 4.14..6.x (arch/x86/include/asm/orc_types.h); decode_orc_entry() maps the
// renumbered registers of the 7.x format onto them (kAx, new in 7.x, has no
// number of its own before: it gets one outside the 4-bit field), and a
// number the guest's format does not define onto kUnknown.
namespace orc_reg {
inline constexpr std::uint8_t kUndefined = 0;
inline constexpr std::uint8_t kPrevSp = 1;
inline constexpr std::uint8_t kDx = 2;
inline constexpr std::uint8_t kDi = 3;
inline constexpr std::uint8_t kBp = 4;
inline constexpr std::uint8_t kSp = 5;
inline constexpr std::uint8_t kR10 = 6;
inline constexpr std::uint8_t kR13 = 7;
inline constexpr std::uint8_t kBpIndirect = 8;
inline constexpr std::uint8_t kSpIndirect = 9;
inline constexpr std::uint8_t kAx = 16;
inline constexpr std::uint8_t kUnknown = 0xff;
}  // namespace orc_reg

// ORC entry normalised to one in-memory form (the 6.4+ meaning) whatever
// the guest's format.
struct OrcEntry {
    // Invalid: a type value no kernel writes (3 in v1/v2, 5..7 in v3); the
    // kernel's unwinder rejects it ("unknown .orc_unwind entry type").
    enum class Type { Undefined, EndOfStack, Call, Regs, RegsPartial, Invalid };
    std::int16_t sp_offset = 0;
    std::int16_t bp_offset = 0;
    std::uint8_t sp_reg = 0;  // orc_reg::*
    std::uint8_t bp_reg = 0;
    Type type = Type::Undefined;
    // Look the next ORC entry up at ip (true) or ip - 1 (false: ip is a
    // return address). In v1 the kernel derives it from the type (REGS and
    // REGS_PARTIAL: true); the decoder does the same, so the unwinder can
    // apply the 6.3+ rule `state->signal = orc->signal` to every format.
    bool signal = false;
    std::uint16_t raw_flags = 0;  // the 16 flag bits as stored, for messages

    bool operator==(const OrcEntry&) const = default;
};

const char* to_string(OrcEntry::Type type);

// Guest ORC formats (see orc_unwind.cpp's header for the history).
enum class OrcFormat {
    V1 /* 4.14..6.2 */,
    V2 /* 6.3 */,
    V3 /* 6.4..6.x */,
    V4 /* 7.x: V3's bits, registers renumbered (AX added) */
};
const char* to_string(OrcFormat format);

// The 20-byte `.orc_header` of 6.4+ images (__start_orc_header..
// __stop_orc_header; modules carry one too): the SHA-1 that
// scripts/orc_hash.sh takes of orc_types.h's ORC_REG_*/ORC_TYPE_* defines
// and struct orc_entry, so it names the format exactly.
using OrcHeader = std::array<std::uint8_t, 20>;
// The format a header names; nullopt for a hash hvpatch does not know.
std::optional<OrcFormat> orc_format_of_header(const OrcHeader& header);
std::string to_hex(const OrcHeader& header);

// How a caller tells the format: a 6.4+ image carries the `.orc_header`
// section, whose hash decides (an unknown hash is Error(Guest): never a
// guess); without it, the version from the banner (linux_banner /
// init_uts_ns) separates 6.3 (V2) from older kernels (V1). The header wins
// over the version (a vendor backport of the 6.4 format carries it too).
// A kernel of 6.4 or later without a header is Error(Guest).
OrcFormat orc_format_for_kernel(int major, int minor, const std::optional<OrcHeader>& header);

OrcEntry decode_orc_entry(const std::byte raw[6], OrcFormat format);
// The inverse, for synthetic tables (tests, fuzzing). Undefined and
// EndOfStack encode in v1/v2 as sp_reg = UNDEFINED with end = 0 / 1.
std::array<std::byte, 6> encode_orc_entry(const OrcEntry& entry, OrcFormat format);

// Where ORC data for an IP is found: the vmlinux tables (with the
// orc_lookup fast index), each module's own tables, ftrace trampolines.
class OrcSource {
public:
    virtual ~OrcSource() = default;
    // The entry covering `ip`, or nullopt when no table covers it (the
    // unwinder then declares the stack unreliable, naming the address).
    // Throws Error(Guest) when the tables themselves cannot be read.
    virtual std::optional<OrcEntry> find(std::uint64_t ip) = 0;
};

struct VmlinuxOrcTables {
    GuestVirtAddr ip_table;      // __start_orc_unwind_ip (s32 self-relative)
    GuestVirtAddr orc_table;     // __start_orc_unwind (6-byte entries)
    std::uint64_t num_entries = 0;   // (__stop_orc_unwind_ip - __start_orc_unwind_ip) / 4
    GuestVirtAddr lookup_table;  // orc_lookup (u32 per LOOKUP_BLOCK_SIZE bytes of text)
    std::uint64_t lookup_entries = 0;  // (orc_lookup_end - orc_lookup) / 4
    GuestVirtAddr text_start;    // _stext (lookup base)
    GuestVirtAddr text_end;      // _etext
    // _sinittext/_einittext: the kernel's slow path (binary search over the
    // whole table) for .init.text. The boot CPU's idle task keeps return
    // addresses into (freed) init text forever: start_kernel,
    // x86_64_start_kernel. Leave zero to treat init text as uncovered.
    GuestVirtAddr inittext_start;
    GuestVirtAddr inittext_end;
    OrcFormat format = OrcFormat::V1;
};

// Reads vmlinux's tables out of guest memory (entries read lazily, with a
// small cache; bounded binary searches). IPs outside _stext.._etext (and
// the init text, if given) → nullopt. The tables are read-only after boot,
// so one source may serve many freezes.
std::unique_ptr<OrcSource> make_vmlinux_orc(VirtualMemory& memory, const VmlinuxOrcTables& tables);

// A module's tables: struct module's arch.orc_unwind_ip, arch.orc_unwind,
// arch.num_orcs (sorted by the kernel at load: unwind_module_init). The
// kernel first finds the module by address (__module_address: anywhere in
// its core or init layout), then binary-searches the whole table.
struct ModuleOrcTables {
    struct Range {
        std::uint64_t begin = 0, end = 0;  // [begin, end)
    };
    std::vector<Range> ranges;  // the module's core (and live init) layouts
    GuestVirtAddr ip_table;
    GuestVirtAddr orc_table;
    std::uint64_t num_entries = 0;
    OrcFormat format = OrcFormat::V1;
};
std::unique_ptr<OrcSource> make_module_orc(VirtualMemory& memory, const ModuleOrcTables& tables);

// vmlinux, then each module, then ftrace trampolines, as orc_find() orders
// them. Not thread-safe (the sources cache).
class CompositeOrcSource : public OrcSource {
public:
    void add(std::unique_ptr<OrcSource> source);
    // A dynamic ftrace trampoline [begin, begin + size) copied from
    // ftrace_caller or ftrace_regs_caller (`copied_from`, chosen by the
    // ops' FTRACE_OPS_FL_SAVE_REGS): looked up at the same offset in the
    // original, like orc_ftrace_find().
    void add_ftrace_trampoline(std::uint64_t begin, std::uint64_t size, std::uint64_t copied_from);
    std::optional<OrcEntry> find(std::uint64_t ip) override;

private:
    struct Trampoline {
        std::uint64_t begin, size, copied_from;
    };
    std::optional<OrcEntry> find_direct(std::uint64_t ip);
    std::vector<std::unique_ptr<OrcSource>> sources_;
    std::vector<Trampoline> trampolines_;
};

enum class StackType { Task, Irq, Exception, Entry, Unknown };
const char* to_string(StackType type);

struct StackArea {
    StackType type = StackType::Unknown;
    std::string name;    // "task", "IRQ", "#DF", "NMI", "#DB", "#MC", "#VC", "#VC2", "entry"
    std::uint64_t begin = 0;  // lowest address
    std::uint64_t end = 0;    // one past the highest address
    bool contains(std::uint64_t addr) const { return addr >= begin && addr < end; }
};

// pt_regs and inactive_task_frame layouts: from the guest's BTF, or
// x86_64() (the layouts are ABI on x86-64: entry code and ptrace depend on
// them; see arch/x86/include/asm/ptrace.h and asm/switch_to.h).
struct UnwindLayouts {
    std::uint64_t pt_regs_size = 0;
    std::uint64_t regs_ip = 0, regs_sp = 0, regs_bp = 0, regs_cs = 0, regs_flags = 0, regs_orig_ax = 0;
    std::uint64_t regs_r10 = 0, regs_r13 = 0, regs_di = 0, regs_dx = 0;  // ORC_REG_R10/R13/DI/DX
    std::uint64_t regs_ax = 0;  // ORC_REG_AX (7.x)
    std::uint64_t frame_size = 0, frame_bp = 0, frame_ret_addr = 0;  // inactive_task_frame
    static UnwindLayouts x86_64();
};

struct UnwindStart {
    std::uint64_t ip = 0, sp = 0, bp = 0;
    // True for a task that was running on a frozen vCPU: the fields are the
    // vCPU's live registers, used like the kernel uses an interrupt's full
    // pt_regs (cs decides user mode; di/dx/r10/r13 serve ORC entries based
    // on those registers). False for a sleeping task: sp is
    // task->thread.sp and ip/bp are read from its inactive_task_frame.
    bool from_vcpu = false;
    std::uint64_t cs = 0, di = 0, dx = 0, r10 = 0, r13 = 0, ax = 0;
    // A sleeping-task walk of a task with task->on_cpu set is refused, as
    // the kernel's __unwind_start does (task_on_another_cpu): the task is
    // mid context switch or running, and thread.sp is stale.
    bool task_on_cpu = false;
};

// How a frame's ip was obtained.
enum class FrameKind {
    Vcpu,         // the vCPU's RIP (the instruction about to run)
    TaskSwitch,   // inactive_task_frame.ret_addr of a sleeping task
    Call,         // a return address on the stack (CALL entry)
    Regs,         // ip of a full pt_regs (interrupt, exception, syscall)
    PartialRegs,  // ip of an iret frame (REGS_PARTIAL entry)
};
const char* to_string(FrameKind kind);

struct StackFrame {
    GuestVirtAddr ip;
    std::uint64_t sp = 0;
    StackType stack = StackType::Unknown;
    std::string stack_name;
    bool interrupt_frame = false;  // the frame came from a pt_regs (IRQ/exception/syscall entry)
    FrameKind kind = FrameKind::Call;
    // A return address rewritten by a return trampoline and recovered
    // through UnwindContext::recover_return_address.
    bool recovered = false;
};

enum class UnwindEnd {
    UserRegs,         // user-mode pt_regs at the top of the stack: the user-task end
    EndOfStackHint,   // an END_OF_STACK ORC entry: kthreads (ret_from_fork), idle tasks
    UserModeVcpu,     // the vCPU was in user mode: no kernel frames at all
    Failed,           // unreliable; `reason` says why
};
const char* to_string(UnwindEnd end);

struct UnwindResult {
    std::vector<StackFrame> frames;
    bool reliable = false;
    UnwindEnd end = UnwindEnd::Failed;
    std::string reason;  // why not reliable; or how it ended ("reached user pt_regs", "end of stack hint")
};

// Code that rewrites return addresses (reliable-stacktrace.rst 4.4):
// return_to_handler (function-graph tracer), arch_rethook_trampoline
// (kretprobes/rethook). A frame whose ip lies inside one is unreliable
// unless recover_return_address restores the original.
struct ReturnTrampoline {
    std::uint64_t begin = 0, end = 0;  // [begin, end)
    std::string name;
};

struct UnwindContext {
    VirtualMemory* memory = nullptr;
    OrcSource* orc = nullptr;
    UnwindLayouts layouts;
    // Which stack (if any) an address lies on, for the task being unwound
    // and the CPU it runs on (see introspect/stacks.h). For a sleeping task
    // only StackType::Task areas count, whatever this returns: the kernel's
    // get_stack_info_noinstr() looks at other stacks only for `current`.
    std::function<std::optional<StackArea>(std::uint64_t sp)> stack_of;
    std::uint64_t ret_from_fork = 0;  // address of ret_from_fork (ret_from_fork_asm in 6.6+)
    // TOP_OF_KERNEL_STACK_PADDING: a user task's pt_regs end this many
    // bytes below its task stack's end (16 on FRED-capable 7.x builds).
    std::uint64_t task_stack_padding = 0;
    // Livepatch's own limit is MAX_STACK_ENTRIES = 100 (a full buffer is an
    // error there); more frames than this → unreliable.
    std::size_t max_frames = 256;
    // __kernel_text_address(): core/init/module text, ftrace and kprobe
    // trampolines, BPF. Unset: every ip with ORC data is accepted (an ip
    // without ORC data fails anyway).
    std::function<bool(std::uint64_t ip)> is_kernel_text;
    std::vector<ReturnTrampoline> return_trampolines;
    // The original return address for a rewritten one (ftrace_graph_ret_addr
    // / rethook_find_ret_addr from the task's ret_stack / rethook list);
    // `slot` is the stack address the rewritten value was read from.
    // nullopt or unset → unreliable.
    std::function<std::optional<std::uint64_t>(std::uint64_t ip, std::uint64_t slot)> recover_return_address;
};

// Unwinds one stack. Never throws for bad guest data (ErrorKind::Guest from
// reads becomes reliable = false with the reason); other errors (the VMM
// went away) propagate. Throws Error(Internal) if `context` lacks
// memory, orc or stack_of.
UnwindResult unwind_stack(const UnwindContext& context, const UnwindStart& start);

}  // namespace hvpatch
