// Everything hvpatch knows about the guest kernel from one freeze: where it
// is (page tables, image, KASLR), its symbols (kallsyms), its structure
// layouts (BTF), and per-CPU data. Built from raw memory of a paused VM;
// the data it decoded is valid only while the VM stays paused (a later pass
// builds a new one). Its memory view reads through the kernel's own page
// tables (init_mm's PGD), which live as long as the kernel, so it stays
// usable across a resume (e.g. around a guest call) — the values read do
// not.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "hvpatch/machine.h"
#include "introspect/guest_layouts.h"
#include "introspect/kallsyms.h"
#include "introspect/kernel_btf.h"
#include "introspect/kernel_location.h"
#include "introspect/kernel_memory.h"

namespace hvpatch {

struct KernelInfo {
    std::string release;  // init_uts_ns.name.release, as `uname -r`
    std::string banner;   // linux_banner, without the trailing newline
    GuestVirtAddr text;   // _text
    std::int64_t kaslr_offset = 0;  // _text - 0xffffffff81000000
    std::uint64_t page_offset_base = 0, vmalloc_base = 0, vmemmap_base = 0;
    std::uint64_t phys_base = 0;
    PagingLevels levels = PagingLevels::Four;
    int nr_cpu_ids = 0;
    bool livepatch = false;             // CONFIG_LIVEPATCH: klp_* symbols exist
    bool livepatch_transition = false;  // klp_transition_patch != NULL
    int klp_target_state = -1;
    // TOP_OF_KERNEL_STACK_PADDING: bytes between the user-mode pt_regs and
    // the end of a task's stack (16 with CONFIG_X86_FRED, 7.x; 0 before),
    // measured from cpu_current_top_of_stack.
    std::uint64_t stack_top_padding = 0;
    // TIF_PATCH_PENDING and TIF_NOTIFY_SIGNAL, derived from the guest's
    // code (kernel_code_facts.h) when it has CONFIG_LIVEPATCH; else why not.
    std::optional<unsigned> tif_patch_pending, tif_notify_signal;
    std::string thread_flags_problem;
};

// The largest TOP_OF_KERNEL_STACK_PADDING accepted (x86-64 uses 0 or 16).
inline constexpr std::uint64_t kMaxStackTopPadding = 64;

class GuestKernel {
public:
    // Locates and decodes the kernel of a paused machine. Throws
    // Error(Guest) naming the step that failed.
    static std::unique_ptr<GuestKernel> open(Machine& machine);

    Machine& machine() { return machine_; }
    KernelMemory& memory() { return *memory_; }
    const KernelPageTables& page_tables() const { return tables_; }
    const KernelImage& image() const { return image_; }
    const KallsymsTable& symbols() const { return *symbols_; }
    const KernelBtf& btf() const { return *btf_; }
    const GuestLayouts& layouts() const { return layouts_; }
    const KernelInfo& info() const { return info_; }

    // Address of a vmlinux symbol; throws Error(Guest) if absent.
    std::uint64_t symbol(std::string_view name) const;
    std::optional<std::uint64_t> find_symbol(std::string_view name) const;
    // A per-CPU variable's place in every CPU's area: &var on a CPU is this
    // plus __per_cpu_offset[cpu], and %gs:this reads it on the running CPU.
    // Up to 6.14 it is the symbol's zero-based offset; from 6.15 the
    // symbol's address in the image's .data..percpu (then
    // __per_cpu_offset[cpu] is the area minus __per_cpu_start), so the rule
    // is the same. From 6.2 to 6.14 the hottest variables (current_task,
    // __preempt_count, cpu_number, cpu_current_top_of_stack,
    // hardirq_stack_ptr, hardirq_stack_inuse) are members of struct
    // pcpu_hot and have no symbol: they resolve to pcpu_hot plus the
    // member's offset from the guest's BTF.
    std::optional<std::uint64_t> find_per_cpu_variable(std::string_view name) const;
    // As find_per_cpu_variable, or Error(Guest) naming both places looked at.
    std::uint64_t per_cpu_variable(std::string_view name) const;
    // Address of a per-CPU variable on `cpu`.
    std::uint64_t per_cpu(std::string_view name, int cpu);
    std::uint64_t per_cpu_offset(int cpu);

private:
    GuestKernel(Machine& machine, KernelPageTables tables);
    void read_info();
    void read_stack_top_padding();
    void anchor_on_init_mm();

    Machine& machine_;
    KernelPageTables tables_;
    std::unique_ptr<KernelMemory> memory_;
    KernelImage image_;
    std::unique_ptr<KallsymsTable> symbols_;
    std::unique_ptr<KernelBtf> btf_;
    GuestLayouts layouts_;
    KernelInfo info_;
};

}  // namespace hvpatch
