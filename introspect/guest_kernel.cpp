#include "introspect/guest_kernel.h"

#include "hvpatch/error.h"

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

std::uint64_t GuestKernel::per_cpu(std::string_view name, int cpu) {
    // With CONFIG_KALLSYMS_ABSOLUTE_PERCPU per-CPU symbols are offsets into
    // the per-CPU area; the address on a CPU adds that CPU's offset.
    return per_cpu_offset(cpu) + symbol(name);
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
    if (auto target = find_symbol("klp_target_state")) {
        info.livepatch = true;
        info.klp_target_state = static_cast<std::int32_t>(memory_->read_u32(GuestVirtAddr{*target}));
        if (auto transition = find_symbol("klp_transition_patch"))
            info.livepatch_transition = memory_->read_u64(GuestVirtAddr{*transition}) != 0;
    }
}

}  // namespace hvpatch
