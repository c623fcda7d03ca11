#include "introspect/kernel_location.h"

#include <algorithm>
#include <vector>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::uint64_t k2MiB = 2ULL << 20;
constexpr std::uint64_t kKernelImageMax = 1ULL << 30;  // KERNEL_IMAGE_SIZE with KASLR
constexpr std::uint64_t kMinKernelImage = 8 * k2MiB;     // any real kernel is larger
constexpr std::uint64_t kMaxHoleProbes = 4;               // holes inside the image are < 8 MiB

std::uint64_t align_down(std::uint64_t v, std::uint64_t a) { return v & ~(a - 1); }

}  // namespace

std::uint64_t read_idt_gate_target(VirtualMemory& memory, int vector) {
    // 16-byte 64-bit gate: offset 15..0 at bytes 0-1, 31..16 at 6-7,
    // 63..32 at 8-11; byte 5 holds P (bit 7) and the type.
    std::vector<std::byte> gate = memory.read_bytes(GuestVirtAddr{kCpuEntryAreaIdt + 16ULL * static_cast<unsigned>(vector)}, 16);
    auto b = [&](int i) { return static_cast<std::uint64_t>(gate[static_cast<std::size_t>(i)]); };
    if (!(b(5) & 0x80))
        throw Error(ErrorKind::Guest, "IDT gate " + std::to_string(vector) + " at " +
                                          hex(kCpuEntryAreaIdt + 16ULL * static_cast<unsigned>(vector)) + " is not present");
    return b(0) | b(1) << 8 | b(6) << 16 | b(7) << 24 | b(8) << 32 | b(9) << 40 | b(10) << 48 | b(11) << 56;
}

std::optional<KernelPageTables> kernel_page_tables_of_vcpu(Machine& machine, int vcpu, const VcpuRegisters& regs,
                                                           std::string* why) {
    std::string reasons;
    if (!(regs.cr0 & (1ULL << 31)) || !(regs.efer & (1ULL << 10))) {
        if (why) *why = "vCPU " + std::to_string(vcpu) + " is not in long mode with paging";
        return std::nullopt;
    }
    PagingLevels levels = paging_levels_from_cr4(regs.cr4);
    const std::uint64_t root = regs.cr3 & 0x000ffffffffff000ULL;
    std::vector<std::uint64_t> candidates{root};
    if (root & (1ULL << 12)) candidates.push_back(root & ~(1ULL << 12));  // PTI: the kernel half
    for (std::uint64_t cr3 : candidates) {
        KernelMemory memory(machine, cr3, levels);
        try {
            KernelImage image = find_kernel_image(memory);
            // PTI's user copy maps the IDT and the entry trampoline, but
            // not the kernel image (tens of MiB).
            if (image.size >= kMinKernelImage) return KernelPageTables{cr3, levels, vcpu, cr3 != root};
            reasons += "; CR3 " + hex(cr3) + " maps only " + std::to_string(image.size >> 20) + " MiB of kernel";
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Guest) throw;
            reasons += "; CR3 " + hex(cr3) + ": " + e.what();
        }
    }
    if (why) *why = "vCPU " + std::to_string(vcpu) + reasons;
    return std::nullopt;
}

KernelPageTables find_kernel_page_tables(Machine& machine) {
    std::vector<std::pair<int, VcpuRegisters>> vcpus;
    for (int index : machine.vcpus()) vcpus.emplace_back(index, machine.read_registers(index));
    // vCPUs in kernel mode first: their CR3 is certainly a kernel one.
    std::stable_partition(vcpus.begin(), vcpus.end(), [](const auto& v) { return v.second.cpl() == 0; });
    std::string reasons;
    for (const auto& [index, regs] : vcpus) {
        std::string why;
        if (auto tables = kernel_page_tables_of_vcpu(machine, index, regs, &why)) return *tables;
        reasons += "; " + why;
    }
    throw Error(ErrorKind::Guest, machine.name() + ": no vCPU's page tables map the kernel" + reasons);
}

KernelImage find_kernel_image(KernelMemory& memory) {
    KernelImage image;
    image.idt_target = GuestVirtAddr{read_idt_gate_target(memory, 0)};
    std::uint64_t target = image.idt_target.value;
    if (target < kStartKernelMap || target >= kStartKernelMap + kKernelImageMax)
        throw Error(ErrorKind::Guest, "the divide-error gate points to " + hex(target) +
                                          ", outside the kernel image area at " + hex(kStartKernelMap));
    std::uint64_t low = align_down(target, k2MiB);
    if (!memory.is_mapped(GuestVirtAddr{low}))
        throw Error(ErrorKind::Guest, "kernel text at " + hex(low) + " is not mapped");
    // Under PTI the kernel unmaps the freed text/rodata and rodata/data gaps
    // (free_kernel_image_pages()), so a probe may land in a hole inside the
    // image: step over up to kMaxHoleProbes unmapped probes and keep the
    // outermost mapped block.
    std::uint64_t misses = 0;
    for (std::uint64_t probe = low; probe > kStartKernelMap && misses < kMaxHoleProbes;) {
        probe -= k2MiB;
        if (memory.is_mapped(GuestVirtAddr{probe})) {
            low = probe;
            misses = 0;
        } else {
            ++misses;
        }
    }
    std::uint64_t high = align_down(target, k2MiB) + k2MiB;
    misses = 0;
    for (std::uint64_t probe = high; probe - kStartKernelMap < kKernelImageMax && misses < kMaxHoleProbes;
         probe += k2MiB) {
        if (memory.is_mapped(GuestVirtAddr{probe})) {
            high = probe + k2MiB;
            misses = 0;
        } else {
            ++misses;
        }
    }
    image.start = GuestVirtAddr{low};
    image.size = high - low;
    return image;
}

}  // namespace hvpatch
