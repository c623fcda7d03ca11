// Every task's kernel stack from one freeze: ORC unwinding with the guest's
// own tables, started from a sleeping task's saved frame or, for a task
// running on a frozen vCPU, from that vCPU's registers. Each stack gets a
// reliability verdict (orc_unwind.h) and frames resolved to symbols.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "introspect/guest_kernel.h"
#include "introspect/modules.h"
#include "introspect/orc_unwind.h"
#include "introspect/tasks.h"

namespace hvpatch {

struct ResolvedFrame {
    StackFrame frame;
    std::string symbol;    // "" when the ip is in no known symbol
    std::uint64_t offset = 0, size = 0;
    std::string module;    // "" for vmlinux
    bool scheduler = false;  // in __sched_text / __lock_text (omitted by /proc/PID/stack)
    // "func+0x1a/0x40 [mod]" or the raw address.
    std::string describe() const;
};

struct TaskStack {
    UnwindResult unwind;
    std::vector<ResolvedFrame> frames;
    std::optional<int> vcpu;  // the vCPU the walk started from (running task)
    // First frame outside the scheduler and lock text: where the task sleeps.
    std::optional<ResolvedFrame> wait_site() const;
};

// Code in the guest that the guest does not know as a module: patch code
// hvpatch loaded itself. Its text counts as kernel text, its own ORC tables
// (in guest memory) unwind it, and its functions name its frames.
struct ForeignCode {
    std::string name;  // shown as the frame's module, e.g. "hvpatch:livepatch_sleeper"
    std::uint64_t text_begin = 0, text_end = 0;  // [begin, end)
    std::uint64_t orc_ip_table = 0, orc_table = 0, orc_entries = 0;
    struct Function {
        std::string name;
        std::uint64_t begin = 0, end = 0;
    };
    std::vector<Function> functions;
};

// The guest's ORC format: from its .orc_header hash (6.4+), else from its
// version (orc_format_for_kernel). Error(Guest) for an unknown hash.
OrcFormat guest_orc_format(GuestKernel& kernel);
// The image's 20-byte .orc_header (6.4+), nullopt for older kernels.
std::optional<OrcHeader> guest_orc_header(GuestKernel& kernel);

class StackWalker {
public:
    // Prepares ORC sources, per-CPU stacks and the vCPU ↔ CPU mapping from
    // the kernel of one freeze. Throws Error(Guest) when the guest lacks ORC
    // tables (a kernel built without CONFIG_UNWINDER_ORC).
    explicit StackWalker(GuestKernel& kernel, std::vector<ForeignCode> foreign = {});
    ~StackWalker();

    TaskStack unwind(const GuestTask& task);

    // The guest CPU a vCPU runs as (by its per-CPU base in GS), if known.
    std::optional<int> cpu_of_vcpu(int vcpu) const;

private:
    std::vector<StackArea> areas_for(const GuestTask& task, int cpu) const;
    ResolvedFrame resolve(const StackFrame& frame);

    GuestKernel& kernel_;
    std::unique_ptr<CompositeOrcSource> orc_;
    std::unique_ptr<ModuleSymbolResolver> modules_;
    UnwindLayouts layouts_;
    std::uint64_t ret_from_fork_ = 0;
    std::vector<ReturnTrampoline> return_trampolines_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> text_ranges_;  // [begin, end) of kernel text
    std::vector<ForeignCode> foreign_;
    std::uint64_t sched_begin_ = 0, sched_end_ = 0, lock_begin_ = 0, lock_end_ = 0;
    struct CpuStacks {
        std::uint64_t hardirq_stack_ptr = 0, cea_exception_stacks = 0, entry_stack = 0;
    };
    std::vector<CpuStacks> cpus_;
    std::vector<std::pair<int, int>> vcpu_to_cpu_;  // (vCPU, CPU)
    std::vector<VcpuRegisters> vcpu_regs_;
    // Built once; unwind() only points the stack lookup at the task's areas.
    UnwindContext context_;
    std::vector<StackArea> areas_;  // the stacks of the task being unwound
};

}  // namespace hvpatch
