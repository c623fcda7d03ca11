#include "introspect/kernel_location.h"

#include <algorithm>
#include <vector>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::uint64_t k2MiB = 2ULL << 20;
constexpr std::uint64_t kKernelImageMax = 1ULL << 30;  // KERNEL_IMAGE_SIZE with KASLR
constexpr std::uint64_t kMinKernelImage = 8 * k2MiB;     // any real kernel is larger

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

KernelPageTables find_kernel_page_tables(Machine& machine) {
    std::vector<std::pair<int, VcpuRegisters>> vcpus;
    for (int index : machine.vcpus()) vcpus.emplace_back(index, machine.read_registers(index));
    // vCPUs in kernel mode first: their CR3 is certainly a kernel one.
    std::stable_partition(vcpus.begin(), vcpus.end(), [](const auto& v) { return v.second.cpl() == 0; });
    std::string reasons;
    for (const auto& [index, regs] : vcpus) {
        if (!(regs.cr0 & (1ULL << 31)) || !(regs.efer & (1ULL << 10))) {
            reasons += "; vCPU " + std::to_string(index) + " is not in long mode with paging";
            continue;
        }
        PagingLevels levels = paging_levels_from_cr4(regs.cr4);
        const std::uint64_t root = regs.cr3 & 0x000ffffffffff000ULL;
        for (std::uint64_t cr3 : std::vector<std::uint64_t>{root, root & ~(1ULL << 12)}) {
            bool user_copy = cr3 != root;
            if (user_copy && (root & (1ULL << 12)) == 0) break;
            KernelMemory memory(machine, cr3, levels);
            try {
                KernelImage image = find_kernel_image(memory);
                // PTI's user copy maps the IDT and the entry trampoline, but
                // not the kernel image (tens of MiB).
                if (image.size >= kMinKernelImage) return KernelPageTables{cr3, levels, index, user_copy};
                reasons += "; vCPU " + std::to_string(index) + " CR3 " + hex(cr3) + " maps only " +
                           std::to_string(image.size >> 20) + " MiB of kernel";
            } catch (const Error& e) {
                if (e.kind() != ErrorKind::Guest) throw;
                reasons += "; vCPU " + std::to_string(index) + " CR3 " + hex(cr3) + ": " + e.what();
            }
        }
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
    while (low > kStartKernelMap && memory.is_mapped(GuestVirtAddr{low - k2MiB})) low -= k2MiB;
    std::uint64_t high = align_down(target, k2MiB) + k2MiB;
    while (high - kStartKernelMap < kKernelImageMax && memory.is_mapped(GuestVirtAddr{high})) high += k2MiB;
    image.start = GuestVirtAddr{low};
    image.size = high - low;
    return image;
}

}  // namespace hvpatch
