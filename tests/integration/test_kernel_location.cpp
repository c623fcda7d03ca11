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

// Returns how many vCPUs were found on PTI's user page tables.
int check_location(TestGuest& guest) {
    std::uint64_t text = guest_symbol(guest, "_text");
    std::uint64_t end = guest_symbol(guest, "_end");
    std::uint64_t divide_error = guest_symbol(guest, "asm_exc_divide_error");
    // X86_FEATURE_PTI shows as the "pti" cpuinfo flag (also when forced
    // with pti=on on a CPU the kernel considers not affected).
    bool pti = guest.run("grep -qw pti /proc/cpuinfo").status == 0;

    auto machine = open_machine(guest.target());
    PauseGuard pause(*machine);
    KernelPageTables tables = find_kernel_page_tables(*machine);
    KernelMemory memory(*machine, tables.cr3, tables.levels);
    KernelImage image = find_kernel_image(memory);
    EXPECT_EQ(image.idt_target.value, divide_error);
    EXPECT_EQ(image.start.value, text) << "the image starts at _text";
    EXPECT_GE(image.start.value + image.size, end) << "the image covers _end";
    EXPECT_LT(image.start.value + image.size, end + (4ULL << 20)) << "and not much more";

    // Every vCPU on its own finds the kernel's page tables — under PTI a
    // vCPU frozen in user mode runs on the user copy and must be corrected.
    int user_copies = 0;
    for (int index : machine->vcpus()) {
        VcpuRegisters regs = machine->read_registers(index);
        std::string why;
        auto own = kernel_page_tables_of_vcpu(*machine, index, regs, &why);
        EXPECT_TRUE(own) << why;
        if (!own) continue;
        KernelMemory mem(*machine, own->cr3, own->levels);
        EXPECT_EQ(find_kernel_image(mem).start.value, text) << "vCPU " << index << " CPL " << regs.cpl();
        if (own->from_user_copy) {
            ++user_copies;
            // Usually CPL 3; CPL 0 too when the vCPU was frozen in the entry
            // or exit code before/after it switched CR3.
            EXPECT_TRUE(pti) << "only PTI has a user copy (vCPU " << index << ", CPL " << regs.cpl() << ")";
        }
    }
    return user_copies;
}

TEST(KernelLocationTest, FourLevelPaging) {
    auto guest = TestGuest::boot();
    check_location(*guest);
}

TEST(KernelLocationTest, VcpuFrozenInUserModeUnderPti) {
    // QEMU's default CPU is an AMD model (no Meltdown, no PTI): force PTI.
    TestGuestOptions options;
    options.extra_append = "pti=on";
    auto guest = TestGuest::boot(options);
    ASSERT_EQ(guest->run("grep -qw pti /proc/cpuinfo").status, 0) << "pti=on did not enable PTI";
    // The CPU loop keeps a vCPU in user mode most of the time; freeze until
    // one is caught there (bounded).
    int user_copies = 0;
    for (int attempt = 0; attempt < 10 && user_copies == 0; ++attempt) user_copies = check_location(*guest);
    EXPECT_GT(user_copies, 0) << "no vCPU was caught in user mode in 10 freezes";
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
