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
};

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
    // Address of a per-CPU variable (a per-CPU kallsyms symbol) on `cpu`.
    std::uint64_t per_cpu(std::string_view name, int cpu);
    std::uint64_t per_cpu_offset(int cpu);

private:
    GuestKernel(Machine& machine, KernelPageTables tables);
    void read_info();
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
