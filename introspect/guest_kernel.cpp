#include "introspect/guest_kernel.h"

#include <algorithm>
#include <utility>

#include "hvpatch/error.h"
#include "introspect/kernel_code_facts.h"
#include "introspect/kernel_constants.h"

namespace hvpatch {
namespace {

// A kernel's BTF is a few MiB; anything beyond this is not BTF.
constexpr std::uint64_t kMaxBtfSize = 64ULL << 20;
constexpr int kMaxCpus = 8192;  // NR_CPUS upper bound on x86-64

}  // namespace

GuestKernel::GuestKernel(Machine& machine, KernelPageTables tables)
    : machine_(machine), tables_(tables), memory_(std::make_unique<KernelMemory>(machine, tables.cr3, tables.levels)) {}

std::unique_ptr<GuestKernel> GuestKernel::open(Machine& machine) {
    KernelPageTables tables = find_kernel_page_tables(machine);
    std::unique_ptr<GuestKernel> kernel(new GuestKernel(machine, tables));
    auto step = [&](const char* what, auto&& fn) {
        try {
            fn();
        } catch (const Error& e) {
            throw Error(e.kind(), machine.name() + ": " + what + ": " + e.what());
        }
    };
    step("finding the kernel image", [&] { kernel->image_ = find_kernel_image(*kernel->memory_); });
    step("decoding kallsyms", [&] {
        kernel->symbols_ = std::make_unique<KallsymsTable>(
            KallsymsTable::locate(*kernel->memory_, kernel->image_.start, kernel->image_.size));
    });
    step("switching to the kernel's own page tables", [&] { kernel->anchor_on_init_mm(); });
    step("reading BTF", [&] {
        std::uint64_t start = kernel->symbol("__start_BTF"), stop = kernel->symbol("__stop_BTF");
        if (stop <= start || stop - start > kMaxBtfSize)
            throw Error(ErrorKind::Guest, "__start_BTF..__stop_BTF (" + hex(start) + ".." + hex(stop) +
                                              ") is not a plausible BTF section");
        std::vector<std::byte> raw = kernel->memory_->read_bytes(GuestVirtAddr{start}, stop - start);
        kernel->btf_ = std::make_unique<KernelBtf>(KernelBtf::parse(raw));
        kernel->layouts_ = GuestLayouts::from_btf(*kernel->btf_);
    });
    step("reading kernel variables", [&] { kernel->read_info(); });
    return kernel;
}

std::optional<std::uint64_t> GuestKernel::find_symbol(std::string_view name) const {
    auto all = symbols_->find_all(name);
    if (all.empty()) return std::nullopt;
    return all.front().address.value;
}

std::uint64_t GuestKernel::symbol(std::string_view name) const {
    if (auto a = find_symbol(name)) return *a;
    throw Error(ErrorKind::Guest, "the guest kernel has no symbol '" + std::string(name) + "'");
}

std::uint64_t GuestKernel::per_cpu_offset(int cpu) {
    if (cpu < 0 || cpu >= std::max(info_.nr_cpu_ids, 1) || cpu >= kMaxCpus)
        throw Error(ErrorKind::Guest, "no CPU " + std::to_string(cpu) + " in the guest (nr_cpu_ids " +
                                          std::to_string(info_.nr_cpu_ids) + ")");
    return memory_->read_u64(GuestVirtAddr{symbol("__per_cpu_offset") + 8ULL * static_cast<unsigned>(cpu)});
}

namespace {
// Per-CPU variables that some kernels keep as a member of another per-CPU
// structure, with no symbol of their own: 6.2-6.14 put the hottest ones in
// struct pcpu_hot (arch/x86/include/asm/current.h); up to 6.1 (5.10 here)
// cpu_current_top_of_stack is a macro for cpu_tss_rw.x86_tss.sp1
// (arch/x86/include/asm/processor.h).
struct PerCpuMember {
    std::string_view variable, symbol, type, member;
};
constexpr PerCpuMember kPerCpuMembers[] = {
    {"current_task", "pcpu_hot", "pcpu_hot", "current_task"},
    {"__preempt_count", "pcpu_hot", "pcpu_hot", "preempt_count"},
    {"cpu_number", "pcpu_hot", "pcpu_hot", "cpu_number"},
    {"cpu_current_top_of_stack", "pcpu_hot", "pcpu_hot", "top_of_stack"},
    {"cpu_current_top_of_stack", "cpu_tss_rw", "tss_struct", "x86_tss.sp1"},
    {"hardirq_stack_ptr", "pcpu_hot", "pcpu_hot", "hardirq_stack_ptr"},
    {"hardirq_stack_inuse", "pcpu_hot", "pcpu_hot", "hardirq_stack_inuse"},
};
}  // namespace

std::optional<std::uint64_t> GuestKernel::find_per_cpu_variable(std::string_view name) const {
    if (auto own = find_symbol(name)) return own;
    for (const PerCpuMember& m : kPerCpuMembers) {
        if (m.variable != name) continue;
        auto holder = find_symbol(m.symbol);
        auto field = btf_->find_member(m.type, m.member);
        if (holder && field) return *holder + field->offset;
    }
    return std::nullopt;
}

std::uint64_t GuestKernel::per_cpu_variable(std::string_view name) const {
    if (auto at = find_per_cpu_variable(name)) return *at;
    std::string elsewhere;
    for (const PerCpuMember& m : kPerCpuMembers)
        if (m.variable == name) elsewhere += std::string(elsewhere.empty() ? "" : ", ") + std::string(m.symbol) + "." +
                                             std::string(m.member);
    throw Error(ErrorKind::Guest, "the guest kernel has no per-CPU variable '" + std::string(name) + "'" +
                                      (elsewhere.empty() ? "" : " (no symbol of that name, nor " + elsewhere + ")"));
}

std::uint64_t GuestKernel::per_cpu(std::string_view name, int cpu) {
    return per_cpu_offset(cpu) + per_cpu_variable(name);
}

void GuestKernel::anchor_on_init_mm() {
    // The page tables found through a vCPU may belong to a process that
    // exits as soon as the guest runs again; init_mm's PGD (init_top_pgt,
    // a.k.a. swapper_pg_dir, the kernel copy under PTI) maps the whole
    // kernel half and lives as long as the kernel.
    auto pgd = find_symbol("init_top_pgt");
    if (!pgd) return;  // not x86-64 Linux as we know it: keep the vCPU's tables
    std::uint64_t phys = memory_->translate(GuestVirtAddr{*pgd}).value;
    auto anchored = std::make_unique<KernelMemory>(machine_, phys, tables_.levels);
    // Same view of the kernel through both: the image and a symbol's bytes.
    std::uint64_t text = symbol("_text");
    if (anchored->translate(GuestVirtAddr{text}).value != memory_->translate(GuestVirtAddr{text}).value)
        throw Error(ErrorKind::Guest, "init_top_pgt at " + hex(*pgd) + " maps _text elsewhere than the vCPU's tables");
    memory_ = std::move(anchored);
    tables_.cr3 = phys;
}

void GuestKernel::read_stack_top_padding() {
    // cpu_current_top_of_stack is task_top_of_stack(current) on each CPU:
    // task->stack + THREAD_SIZE - TOP_OF_KERNEL_STACK_PADDING; stacks are
    // THREAD_SIZE-aligned (vmalloc'd with THREAD_ALIGN, init_stack too), so
    // the padding is what the top lacks to the next boundary. Every CPU
    // must agree.
    auto top_of_stack = find_per_cpu_variable("cpu_current_top_of_stack");
    if (!top_of_stack) return;  // left at 0; the unwinder's check then fails loudly on FRED kernels
    std::optional<std::uint64_t> padding;
    for (int cpu = 0; cpu < info_.nr_cpu_ids; ++cpu) {
        const std::uint64_t top = memory_->read_u64(GuestVirtAddr{per_cpu_offset(cpu) + *top_of_stack});
        const std::uint64_t pad = (kconst::kThreadSize - top % kconst::kThreadSize) % kconst::kThreadSize;
        if (pad % 8 != 0 || pad > kMaxStackTopPadding)
            throw Error(ErrorKind::Guest, "cpu_current_top_of_stack of CPU " + std::to_string(cpu) + " is " + hex(top) +
                                              ", not a task stack's top (" + std::to_string(pad) +
                                              " bytes below a 16 KiB boundary)");
        if (padding && *padding != pad)
            throw Error(ErrorKind::Guest, "cpu_current_top_of_stack leaves " + std::to_string(pad) + " bytes on CPU " +
                                              std::to_string(cpu) + " but " + std::to_string(*padding) +
                                              " on CPU 0");
        padding = pad;
    }
    info_.stack_top_padding = padding.value_or(0);
}

void GuestKernel::read_info() {
    KernelInfo& info = info_;
    info.levels = tables_.levels;
    info.text = GuestVirtAddr{symbol("_text")};
    info.kaslr_offset = static_cast<std::int64_t>(info.text.value - kDefaultKernelText);
    info.banner = memory_->read_cstring(GuestVirtAddr{symbol("linux_banner")}, 512);
    while (!info.banner.empty() && info.banner.back() == '\n') info.banner.pop_back();
    if (info.banner.rfind("Linux version ", 0) != 0)
        throw Error(ErrorKind::Guest, "linux_banner at " + hex(symbol("linux_banner")) + " reads '" +
                                          info.banner.substr(0, 40) + "', not a Linux banner");
    std::uint64_t release_at = symbol("init_uts_ns") + btf_->offset_of("uts_namespace", "name.release");
    info.release = memory_->read_cstring(GuestVirtAddr{release_at}, 65);
    // With CONFIG_RANDOMIZE_MEMORY these are variables; without it they
    // are constants and the symbols do not exist.
    auto variable = [&](const char* name) -> std::uint64_t {
        auto addr = find_symbol(name);
        return addr ? memory_->read_u64(GuestVirtAddr{*addr}) : 0;
    };
    info.page_offset_base = variable("page_offset_base");
    info.vmalloc_base = variable("vmalloc_base");
    info.vmemmap_base = variable("vmemmap_base");
    info.phys_base = variable("phys_base");
    info.nr_cpu_ids = static_cast<int>(memory_->read_u32(GuestVirtAddr{symbol("nr_cpu_ids")}));
    if (info.nr_cpu_ids <= 0 || info.nr_cpu_ids > kMaxCpus)
        throw Error(ErrorKind::Guest, "nr_cpu_ids reads " + std::to_string(info.nr_cpu_ids));
    read_stack_top_padding();
    if (auto target = find_symbol("klp_target_state")) {
        info.livepatch = true;
        info.klp_target_state = static_cast<std::int32_t>(memory_->read_u32(GuestVirtAddr{*target}));
        if (auto transition = find_symbol("klp_transition_patch"))
            info.livepatch_transition = memory_->read_u64(GuestVirtAddr{*transition}) != 0;
        try {
            const ThreadFlagBits bits = derive_thread_flag_bits(*this);
            info.tif_patch_pending = bits.patch_pending;
            info.tif_notify_signal = bits.notify_signal;
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Guest) throw;
            info.thread_flags_problem = e.what();
        }
    }
}

}  // namespace hvpatch
