// Finding the kernel from vCPU state and memory: the page tables (also from
// a vCPU frozen in user mode), the IDT's target and the image bounds agree
// with the guest's own /proc/kallsyms, with 4- and 5-level paging.
#include <gtest/gtest.h>

#include "hvpatch/machine.h"
#include "introspect/kernel_location.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

std::uint64_t guest_symbol(TestGuest& guest, const std::string& name) {
    std::string line = guest.run_ok("grep ' " + name + "$' /proc/kallsyms");
    return std::stoull(line.substr(0, 16), nullptr, 16);
}

void check_location(TestGuest& guest) {
    std::uint64_t text = guest_symbol(guest, "_text");
    std::uint64_t end = guest_symbol(guest, "_end");
    std::uint64_t divide_error = guest_symbol(guest, "asm_exc_divide_error");
    std::string meltdown = guest.run_ok("cat /sys/devices/system/cpu/vulnerabilities/meltdown");

    auto machine = open_machine(guest.target());
    PauseGuard pause(*machine);
    KernelPageTables tables = find_kernel_page_tables(*machine);
    KernelMemory memory(*machine, tables.cr3, tables.levels);
    KernelImage image = find_kernel_image(memory);
    EXPECT_EQ(image.idt_target.value, divide_error);
    EXPECT_EQ(image.start.value, text) << "the image starts at _text";
    EXPECT_GE(image.start.value + image.size, end) << "the image covers _end";
    EXPECT_LT(image.start.value + image.size, end + (4ULL << 20)) << "and not much more";

    // Every vCPU's own CR3, corrected for PTI's user copy, maps the kernel.
    for (int index : machine->vcpus()) {
        VcpuRegisters regs = machine->read_registers(index);
        std::uint64_t root = regs.cr3 & 0x000ffffffffff000ULL;
        bool pti = meltdown.find("PTI") != std::string::npos;
        std::uint64_t kernel_root = (pti && regs.cpl() == 3) ? (root & ~(1ULL << 12)) : root;
        KernelMemory own(*machine, kernel_root, paging_levels_from_cr4(regs.cr4));
        EXPECT_EQ(find_kernel_image(own).start.value, text)
            << "vCPU " << index << " CPL " << regs.cpl() << " meltdown: " << meltdown;
    }
}

TEST(KernelLocationTest, FourLevelPaging) {
    auto guest = TestGuest::boot();
    check_location(*guest);
}

TEST(KernelLocationTest, FiveLevelPagingWithCpuMax) {
    TestGuestOptions options;
    options.cpu_model = "max";
    auto guest = TestGuest::boot(options);
    ASSERT_NE(guest->run_ok("grep -c la57 /proc/cpuinfo"), "0\n");
    check_location(*guest);
}

}  // namespace
}  // namespace hvpatch::test
