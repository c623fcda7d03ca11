// Guest calls at a safe point on the real test guest: the guest's own
// module_alloc / set_memory_* / module_memfree called from the host, checked
// against the guest's page tables and /proc/vmallocinfo; many calls in a row
// (the return may arrive on the other vCPU); no safe point → clean error; the
// guest stays healthy (no BUG/WARNING/Oops).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <thread>

#include <signal.h>
#include <unistd.h>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/page_walk.h"
#include "patch/guest_call.h"
#include "support/test_guest.h"
#include "vmm/interrupt.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

double ms(std::chrono::nanoseconds d) { return static_cast<double>(d.count()) / 1e6; }

class GuestCallTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot().release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    // /proc/vmallocinfo lines of areas allocated by a module_alloc called
    // from hvpatch: the caller module_alloc records is its return address,
    // the trap, printed with %pS. (The addresses themselves print as
    // (____ptrval____) on the test guest: %pK before the hashing key is ready.)
    static std::string vmallocinfo_of_trap(GuestKernel& kernel, std::uint64_t trap) {
        auto in = kernel.symbols().resolve(GuestVirtAddr{trap});
        if (!in) throw Error(ErrorKind::Guest, "trap " + hex(trap) + " is in no symbol");
        std::string caller = " " + in->symbol.name + "+" + hex_short(in->offset) + "/" + hex_short(in->size) + " ";
        return guest_->run("grep -F '" + caller + "' /proc/vmallocinfo").output;
    }

    static Translation translation(Machine& machine, GuestKernel& kernel, std::uint64_t addr) {
        PageWalker walker(machine, kernel.memory().cr3(), kernel.memory().levels());
        WalkResult result = walker.walk(GuestVirtAddr{addr});
        if (!result.ok()) throw Error(ErrorKind::Guest, result.failure->describe(GuestVirtAddr{addr}));
        return *result.translation;
    }

    static void expect_guest_healthy() {
        EXPECT_EQ(guest_->run_ok("echo ok"), "ok\n");
        std::string console = guest_->console_log();
        for (const char* bad : {"BUG:", "WARNING:", "Oops"})
            EXPECT_EQ(console.find(bad), std::string::npos) << "guest console shows " << bad << ":\n"
                                                            << console.substr(console.size() > 4000 ? console.size() - 4000 : 0);
        EXPECT_EQ(guest_->run("dmesg | grep -c -E 'BUG|WARNING|Oops'").output, "0\n");
    }

    static TestGuest* guest_;
};
TestGuest* GuestCallTest::guest_ = nullptr;

TEST_F(GuestCallTest, TrapIsVerifiedInt3PaddingInKernelText) {
    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    GuestCaller caller(*kernel);
    std::uint64_t trap = caller.trap_address();
    EXPECT_EQ(kernel->memory().read_u8(GuestVirtAddr{trap}), 0xcc);
    auto in = kernel->symbols().resolve(GuestVirtAddr{trap});
    ASSERT_TRUE(in);
    EXPECT_GT(in->offset, 0u);
    EXPECT_GE(in->symbol.address.value, kernel->symbol("_stext"));
    EXPECT_LT(trap, kernel->symbol("_etext")) << "in .text, not in init text";
    EXPECT_FALSE(translation(*machine, *kernel, trap).no_execute);
    // The module area of a KASLR-configured 6.1 kernel.
    EXPECT_EQ(caller.modules_vaddr(), 0xffffffffc0000000ULL);
    EXPECT_EQ(caller.modules_end(), 0xffffffffff000000ULL);
    std::printf("trap at %s (%s+%s)\n", hex(trap).c_str(), in->symbol.name.c_str(), hex_short(in->offset).c_str());
}

TEST_F(GuestCallTest, AllocateProtectUnprotectAndFreeModuleMemory) {
    auto machine = open_machine(guest_->target());
    machine->pause();
    auto kernel = GuestKernel::open(*machine);
    GuestCaller caller(*kernel);
    std::vector<std::string> log;
    auto note = [&](const char* step) {
        const GuestCallReport& r = caller.last_call();
        char line[256];
        std::snprintf(line, sizeof line,
                      "%-16s safe point %-22s vCPU %d→%d, skipped %d, wait %7.2f ms, call %7.2f ms, total %7.2f ms",
                      step, r.safe_point.c_str(), r.call_vcpu, r.return_vcpu, r.skipped_hits, ms(r.safe_point_wait),
                      ms(r.call_time), ms(r.total));
        log.push_back(line);
    };

    std::uint64_t p = caller.allocate_module_memory(4096);
    note("module_alloc");
    EXPECT_EQ(machine->run_state(), RunState::Paused) << "left paused as found";
    EXPECT_GE(p, 0xffffffffc0000000ULL);
    EXPECT_LT(p, 0xffffffffff000000ULL);
    EXPECT_EQ(p % 4096, 0u);
    {
        Translation t = translation(*machine, *kernel, p);
        EXPECT_TRUE(t.writable);
        EXPECT_TRUE(t.no_execute) << "module_alloc maps PAGE_KERNEL";
    }
    // A marker written through the guest's page tables reads back.
    const char marker[] = "hvpatch-guest-call-marker";
    kernel->memory().clear_cache();
    machine->write_physical(kernel->memory().translate(GuestVirtAddr{p}), std::as_bytes(std::span(marker)));
    EXPECT_EQ(kernel->memory().read_cstring(GuestVirtAddr{p}, 64), marker);
    // The guest itself lists the area (4 KiB + guard page), allocated from
    // the trap.
    machine->resume();
    std::string area = vmallocinfo_of_trap(*kernel, caller.trap_address());
    EXPECT_NE(area.find(" 8192 "), std::string::npos) << area;
    EXPECT_EQ(std::count(area.begin(), area.end(), '\n'), 1) << area;
    machine->pause();

    caller.set_memory_ro(p, 1);
    note("set_memory_ro");
    caller.set_memory_x(p, 1);
    note("set_memory_x");
    {
        Translation t = translation(*machine, *kernel, p);
        EXPECT_FALSE(t.writable);
        EXPECT_FALSE(t.no_execute);
    }
    EXPECT_EQ(kernel->memory().read_cstring(GuestVirtAddr{p}, 64), marker);

    caller.set_memory_nx(p, 1);
    note("set_memory_nx");
    caller.set_memory_rw(p, 1);
    note("set_memory_rw");
    {
        Translation t = translation(*machine, *kernel, p);
        EXPECT_TRUE(t.writable);
        EXPECT_TRUE(t.no_execute);
    }
    caller.free_module_memory(p);
    note("module_memfree");
    machine->resume();
    EXPECT_EQ(vmallocinfo_of_trap(*kernel, caller.trap_address()), "") << "freed";
    machine.reset();
    for (const auto& line : log) std::printf("%s\n", line.c_str());
    expect_guest_healthy();
}

TEST_F(GuestCallTest, ManyCallsInARowReturnTheRightResults) {
    auto machine = open_machine(guest_->target());
    machine->pause();
    auto kernel = GuestKernel::open(*machine);
    GuestCaller caller(*kernel);
    std::uint64_t banner = kernel->symbol("linux_banner");
    std::uint64_t banner_len = kernel->memory().read_cstring(GuestVirtAddr{banner}, 1024).size();
    machine->resume();  // calls from a running VM leave it running

    std::vector<double> call_ms, total_ms;
    int migrated = 0, skipped = 0;
    auto record = [&] {
        const GuestCallReport& r = caller.last_call();
        call_ms.push_back(ms(r.call_time));
        total_ms.push_back(ms(r.total));
        if (r.call_vcpu != r.return_vcpu) ++migrated;
        skipped += r.skipped_hits;
    };
    // strnlen(linux_banner, n): a plain exported function whose result
    // depends on both arguments.
    for (std::uint64_t i = 0; i < 20; ++i) {
        std::uint64_t n = 40 + i * 13;
        std::uint64_t got = caller.call("strnlen", {banner, n});
        record();
        EXPECT_EQ(got, std::min(n, banner_len)) << "call " << i;
        EXPECT_EQ(machine->run_state(), RunState::Running);
    }
    for (int i = 0; i < 5; ++i) {
        std::uint64_t p = caller.allocate_module_memory(8192);
        record();
        caller.free_module_memory(p);
        record();
    }
    machine.reset();
    auto sorted = call_ms;
    std::sort(sorted.begin(), sorted.end());
    auto sorted_total = total_ms;
    std::sort(sorted_total.begin(), sorted_total.end());
    std::printf("%zu calls: callee time min %.2f / median %.2f / max %.2f ms; whole call (safe point + call + restore) "
                "min %.2f / median %.2f / max %.2f ms; returned on the other vCPU %d times; safe point hits skipped %d\n",
                sorted.size(), sorted.front(), sorted[sorted.size() / 2], sorted.back(), sorted_total.front(),
                sorted_total[sorted_total.size() / 2], sorted_total.back(), migrated, skipped);
    expect_guest_healthy();
}

// SIGINT while the borrowed task is inside the callee: the call must be
// finished (else the task returns into int3 padding nobody catches any
// more, and the guest oopses); the interrupt stays pending for the caller.
TEST_F(GuestCallTest, AnInterruptDuringTheCallLetsItFinish) {
    install_interrupt_handlers();
    auto machine = open_machine(guest_->target());
    machine->pause();
    auto kernel = GuestKernel::open(*machine);
    GuestCaller caller(*kernel);
    machine->resume();
    bool interrupted_inside = false;
    // The signal must land while the callee (msleep(1500)) runs, not while
    // hvpatch waits for a safe point (that may be abandoned): retry if it
    // came too early.
    for (int attempt = 0; attempt < 3 && !interrupted_inside; ++attempt) {
        clear_interrupt();
        std::thread signaller([] {
            std::this_thread::sleep_for(500ms);
            ::kill(::getpid(), SIGINT);
        });
        try {
            caller.call("msleep", {1500});
            interrupted_inside = true;
            EXPECT_TRUE(interrupt_requested()) << "the signal arrived after the call: the test proves nothing";
            EXPECT_GE(ms(caller.last_call().call_time), 1400.0);
        } catch (const Error& e) {
            signaller.join();
            clear_interrupt();
            ASSERT_EQ(e.kind(), ErrorKind::Interrupted) << e.what();
            ASSERT_TRUE(caller.last_call().safe_point.empty())
                << "interrupted after the call had started on " << caller.last_call().safe_point << ": " << e.what();
            continue;
        }
        signaller.join();
    }
    clear_interrupt();
    EXPECT_TRUE(interrupted_inside) << "the signal came before the safe point three times";
    machine.reset();
    expect_guest_healthy();
}

TEST_F(GuestCallTest, NoSafePointIsACleanErrorAndChangesNothing) {
    auto machine = open_machine(guest_->target());
    machine->pause();
    auto kernel = GuestKernel::open(*machine);
    GuestCallOptions options;
    options.safe_point_entries = {"__x64_sys_reboot"};  // nothing reboots an idle guest
    options.safe_point_timeout = 500ms;
    GuestCaller caller(*kernel, options);
    try {
        caller.call("module_alloc", {4096});
        ADD_FAILURE() << "a call without a safe point succeeded";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_NE(std::string(e.what()).find("no safe point within 0.5 s"), std::string::npos) << e.what();
    }
    EXPECT_EQ(machine->run_state(), RunState::Paused);
    EXPECT_THROW(caller.call("module_alloc", {1, 2, 3, 4, 5, 6, 7}), Error);
    machine.reset();
    expect_guest_healthy();
}

}  // namespace
}  // namespace hvpatch::test
