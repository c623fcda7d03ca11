// The Machine interface against a real guest: memory writes land (the guest
// sees them), breakpoints hit and report their vCPU, register writes read
// back, and the VM is left in the run state it was found in.
#include <gtest/gtest.h>

#include <cstring>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/page_walk.h"
#include "support/monitor_oracle.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

class MachineControlTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot().release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    static MonitorOracle monitor() { return MonitorOracle(guest_->vm().qmp_socket_path()); }

    // A kernel symbol's address as the guest's /proc/kallsyms shows it.
    static std::uint64_t guest_symbol(const std::string& name) {
        std::string line = guest_->run_ok("grep ' " + name + "$' /proc/kallsyms");
        return std::stoull(line.substr(0, 16), nullptr, 16);
    }

    // Kernel page tables of a paused machine: vCPU 0's CR3 with the PCID
    // bits and the PTI user-copy bit (12) cleared.
    static PageWalker kernel_walker(Machine& machine) {
        VcpuRegisters regs = machine.read_registers(0);
        return PageWalker(machine, regs.cr3 & 0x000fffffffffe000ULL, paging_levels_from_cr4(regs.cr4));
    }

    static TestGuest* guest_;
};
TestGuest* MachineControlTest::guest_ = nullptr;

TEST_F(MachineControlTest, PhysicalWritesAreSeenByTheGuestAndRestored) {
    // `uname -s` prints init_uts_ns.name.sysname, the first field of the
    // structure: changing it from the host shows in the guest at once.
    std::uint64_t uts = guest_symbol("init_uts_ns");
    ASSERT_EQ(guest_->run_ok("uname -s"), "Linux\n");
    GuestPhysAddr phys;
    std::vector<std::byte> original(5);
    {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        phys = kernel_walker(*machine).translate(GuestVirtAddr{uts});
        machine->read_physical(phys, original);
        ASSERT_EQ(std::memcmp(original.data(), "Linux", 5), 0);
        const char* upper = "LINUX";
        machine->write_physical(phys, std::as_bytes(std::span(upper, 5)));
        std::vector<std::byte> back(5);
        machine->read_physical(phys, back);
        EXPECT_EQ(std::memcmp(back.data(), "LINUX", 5), 0) << "read-back through the mapping";
    }
    EXPECT_EQ(guest_->run_ok("uname -s"), "LINUX\n") << "the guest sees the write";
    {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        machine->write_physical(phys, original);
    }
    EXPECT_EQ(guest_->run_ok("uname -s"), "Linux\n") << "restored";
}

TEST_F(MachineControlTest, BreakpointOnASyscallEntryHitsAndReportsItsVcpu) {
    // The guest's syscall loop runs `cat` over and over: openat is hot.
    std::uint64_t entry = guest_symbol("__x64_sys_openat");
    auto machine = open_machine(guest_->target());
    {
        PauseGuard pause(*machine);
        machine->set_breakpoint(GuestVirtAddr{entry});
    }
    std::optional<BreakpointHit> hit;
    for (int tries = 0; tries < 5 && !hit; ++tries) hit = machine->run_until_breakpoint(5s);
    ASSERT_TRUE(hit) << "no vCPU reached __x64_sys_openat in 25 s";
    EXPECT_EQ(machine->run_state(), RunState::Paused);
    EXPECT_EQ(hit->address.value, entry);
    ASSERT_GE(hit->vcpu, 0);
    ASSERT_LT(hit->vcpu, 2);
    VcpuRegisters regs = machine->read_registers(hit->vcpu);
    EXPECT_EQ(regs.rip, entry);
    EXPECT_EQ(regs.cpl(), 0);
    machine->clear_breakpoint(GuestVirtAddr{entry});
    // Without the breakpoint the guest runs freely for the timeout.
    machine->resume();
    machine.reset();
    EXPECT_EQ(monitor().status(), "running");
    EXPECT_EQ(guest_->run_ok("echo still-alive"), "still-alive\n");
}

TEST_F(MachineControlTest, RunUntilBreakpointTimesOutWhenNothingHits) {
    auto machine = open_machine(guest_->target());
    // A function nothing calls on an idle guest.
    std::uint64_t cold = guest_symbol("__x64_sys_reboot");
    {
        PauseGuard pause(*machine);
        machine->set_breakpoint(GuestVirtAddr{cold});
    }
    auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(machine->run_until_breakpoint(500ms));
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
    EXPECT_EQ(machine->run_state(), RunState::Paused);
    machine->clear_breakpoint(GuestVirtAddr{cold});
    machine.reset();
    EXPECT_EQ(monitor().status(), "running");
}

TEST_F(MachineControlTest, RegisterWritesReadBackAndTouchNothingElse) {
    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    VcpuRegisters before = machine->read_registers(1);
    VcpuRegisters changed = before;
    changed.rbx = 0x1122334455667788ULL;
    changed.r15 = ~before.r15;
    machine->write_registers(1, changed);
    EXPECT_EQ(machine->read_registers(1), changed);
    EXPECT_EQ(machine->read_registers(0).rbx == changed.rbx, false) << "vCPU 0 untouched";
    machine->write_registers(1, before);
    EXPECT_EQ(machine->read_registers(1), before);
}

TEST_F(MachineControlTest, OperatorPausedVmStaysPausedAfterEveryOperation) {
    MonitorOracle mon = monitor();
    OperatorPause operator_pause(mon);
    {
        auto machine = open_machine(guest_->target());
        EXPECT_EQ(machine->run_state(), RunState::Paused);
        machine->read_registers(0);
        std::vector<std::byte> page(4096);
        machine->read_physical(GuestPhysAddr{0x100000}, page);
        { PauseGuard pause(*machine); }
        EXPECT_EQ(machine->run_state(), RunState::Paused);
    }
    EXPECT_EQ(mon.status(), "paused");
}

TEST_F(MachineControlTest, RunningVmIsRunningAfterAnErrorInTheMiddle) {
    {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        machine->read_registers(0);
        std::vector<std::byte> buf(16);
        EXPECT_THROW(machine->read_physical(GuestPhysAddr{1ULL << 40}, buf), Error);
        EXPECT_THROW(machine->read_registers(7), Error);
    }
    EXPECT_EQ(monitor().status(), "running");
    EXPECT_EQ(guest_->run_ok("echo ok"), "ok\n");
}

}  // namespace
}  // namespace hvpatch::test
