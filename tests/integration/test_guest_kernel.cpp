// The guest kernel seen from the host (one freeze) against the guest's own
// view: release, banner, KASLR base, memory bases, CPUs, tasks.
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/tasks.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

class GuestKernelTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot().release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    static std::uint64_t guest_symbol(const std::string& name) {
        std::string line = guest_->run_ok("grep ' " + name + "$' /proc/kallsyms");
        return std::stoull(line.substr(0, 16), nullptr, 16);
    }
    static TestGuest* guest_;
};
TestGuest* GuestKernelTest::guest_ = nullptr;

TEST_F(GuestKernelTest, IdentityAndLayoutMatchTheGuest) {
    std::string release = guest_->run_ok("uname -r");
    std::string version = guest_->run_ok("cat /proc/version");
    std::uint64_t text = guest_symbol("_text");
    std::uint64_t page_offset = guest_symbol("page_offset_base");
    (void)page_offset;

    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    const KernelInfo& info = kernel->info();
    EXPECT_EQ(info.release + "\n", release);
    EXPECT_EQ(info.banner + "\n", version);
    EXPECT_EQ(info.text.value, text);
    EXPECT_EQ(info.kaslr_offset, static_cast<std::int64_t>(text - 0xffffffff81000000ULL));
    EXPECT_EQ(info.nr_cpu_ids, 2);
    EXPECT_TRUE(info.livepatch);
    EXPECT_FALSE(info.livepatch_transition);
    EXPECT_EQ(info.page_offset_base & 0xffff800000000000ULL, 0xffff800000000000ULL);
    // GS base of a vCPU in kernel mode is its CPU's per-CPU offset; in user
    // mode KERNEL_GS_BASE holds it. A vCPU frozen in the entry code between
    // the switch to CPL 0 and swapgs (or the reverse on exit) has it in the
    // other register, so either may hold it (CI once caught vCPU 1 there).
    for (int vcpu : machine->vcpus()) {
        VcpuRegisters regs = machine->read_registers(vcpu);
        std::uint64_t expected = kernel->per_cpu_offset(vcpu);
        EXPECT_TRUE(regs.gs_base == expected || regs.kernel_gs_base == expected)
            << "vCPU " << vcpu << ": GS base " << hex(regs.gs_base) << ", kernel GS base " << hex(regs.kernel_gs_base)
            << ", CPL " << regs.cpl() << ", expected " << hex(expected);
    }
}

TEST_F(GuestKernelTest, TaskListMatchesProc) {
    // pid, comm and state letter of every task as /proc shows them, taken
    // while the host holds the VM paused, so both see the same moment...
    // the guest cannot run while paused, so the guest lists first and the
    // host checks that every guest task is there with the same comm.
    std::string listing = guest_->run_ok(
        "for d in /proc/[0-9]*; do p=${d#/proc/}; for t in $d/task/*; do "
        "echo \"${t##*/} $p $(cat $t/comm)\"; done; done");
    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    std::vector<GuestTask> tasks = list_tasks(*kernel);
    std::map<int, GuestTask> by_pid;
    for (const auto& t : tasks)
        if (!t.idle) by_pid[t.pid] = t;
    std::istringstream in(listing);
    int checked = 0, kworkers = 0;
    std::string line;
    while (std::getline(in, line)) {
        // "TID TGID NAME"; a process that exited mid-listing leaves "* TGID".
        std::istringstream fields(line);
        int tid = 0, tgid = 0;
        std::string comm;
        if (!(fields >> tid >> tgid) || !std::getline(fields >> std::ws, comm)) continue;
        auto it = by_pid.find(tid);
        // Tasks of the listing command itself have exited by now.
        if (it == by_pid.end()) continue;
        EXPECT_EQ(it->second.tgid, tgid) << "tid " << tid;
        EXPECT_EQ(comm.rfind(it->second.comm, 0), 0u) << "comm is a prefix of the /proc name";
        if (it->second.comm.rfind("kworker/", 0) == 0) {
            // A worker's "+desc"/"-desc" names its latest work item, which
            // changes between the guest's listing and the freeze: compare
            // the form, not the work.
            std::string ours = it->second.name.substr(0, it->second.comm.size());
            EXPECT_EQ(ours, comm.substr(0, it->second.comm.size())) << "tid " << tid;
            if (it->second.name.size() > it->second.comm.size()) {
                EXPECT_NE(std::string("+-").find(it->second.name[it->second.comm.size()]), std::string::npos)
                    << it->second.name;
            }
            ++kworkers;
        } else {
            EXPECT_EQ(it->second.name, comm) << "tid " << tid;
        }
        ++checked;
    }
    EXPECT_GT(checked, 30) << listing;
    EXPECT_GT(checked - kworkers, 20) << "most names are compared exactly";
    int idle = 0, running = 0;
    for (const auto& t : tasks) {
        idle += t.idle;
        running += t.running_on.has_value();
    }
    EXPECT_EQ(idle, 2);
    EXPECT_EQ(running, 2) << "one current task per CPU";
}

}  // namespace
}  // namespace hvpatch::test
