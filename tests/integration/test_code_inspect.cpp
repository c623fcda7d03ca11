// Function entries of the real guest kernel, classified from the host:
// ordinary functions start with the ftrace NOP (cross-checked against
// QEMU's own view of the same bytes), the guest's own ftrace turns it into
// a call and back, a kprobe shows up as what KPROBES_ON_FTRACE makes of it,
// and the kernel sits at its link address with `nokaslr` but not without.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hvpatch/address.h"
#include "hvpatch/machine.h"
#include "introspect/code_inspect.h"
#include "introspect/guest_kernel.h"
#include "support/monitor_oracle.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

constexpr std::uint64_t kLinkText = 0xffffffff81000000ULL;  // _text without KASLR
constexpr std::size_t kEntryBytes = 16;

const std::vector<std::string> kOrdinary = {"cmdline_proc_show", "meminfo_proc_show", "__x64_sys_getpid",
                                            "schedule",          "vfs_read",          "do_sys_openat2"};

struct Entry {
    std::uint64_t address = 0;
    std::vector<std::byte> bytes;  // kEntryBytes from the entry
    EntryKind kind;
};

std::vector<std::uint8_t> as_u8(const std::vector<std::byte>& bytes) {
    std::vector<std::uint8_t> out;
    for (std::byte b : bytes) out.push_back(static_cast<std::uint8_t>(b));
    return out;
}

// Address of `name` in the guest's own /proc/kallsyms (first match).
std::uint64_t guest_kallsyms(TestGuest& guest, const std::string& name) {
    std::string line = guest.run_ok("grep -m1 ' " + name + "$' /proc/kallsyms");
    return std::stoull(line.substr(0, 16), nullptr, 16);
}

// The guest's /proc/kallsyms lines at exactly `addr` ("" if none): it knows
// the ftrace and kprobe trampolines ([__builtin__ftrace], [__builtin__kprobes]).
std::string guest_kallsyms_at(TestGuest& guest, std::uint64_t addr) {
    return guest.run_ok("grep '^" + hex(addr).substr(2) + " ' /proc/kallsyms || true");
}

class CodeInspectTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot().release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    // The entries of `names` (vmlinux symbols, `name+0xOFF` for an offset)
    // in one freeze, through hvpatch's own reader.
    static std::map<std::string, Entry> read_entries(const std::vector<std::string>& names) {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        auto kernel = GuestKernel::open(*machine);
        std::map<std::string, Entry> out;
        for (const auto& name : names) {
            Entry e;
            e.address = kernel->symbol(name);
            e.bytes = kernel->memory().read_bytes(GuestVirtAddr{e.address}, kEntryBytes);
            e.kind = classify_entry(e.bytes, e.address);
            out[name] = std::move(e);
        }
        return out;
    }

    static std::uint64_t symbol(const std::string& name) {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        return GuestKernel::open(*machine)->symbol(name);
    }

    // Reads `n` bytes at `addr` through hvpatch, then (same freeze) through
    // QEMU's monitor, and expects them equal. Returns hvpatch's bytes.
    static std::vector<std::byte> read_and_cross_check(std::uint64_t addr, std::size_t n) {
        MonitorOracle monitor(guest_->vm().qmp_socket_path());
        OperatorPause pause(monitor);
        std::vector<std::byte> ours;
        {
            // QMP serves one client: this Machine is closed before the
            // monitor speaks again.
            auto machine = open_machine(guest_->target());
            PauseGuard guard(*machine);
            auto kernel = GuestKernel::open(*machine);
            ours = kernel->memory().read_bytes(GuestVirtAddr{addr}, n);
        }
        EXPECT_EQ(as_u8(ours), monitor.virtual_bytes(kernel_mode_cpu(monitor), addr, n)) << "at " << hex(addr);
        return ours;
    }

    // A vCPU whose page tables map the kernel (CPL 0), else vCPU 0.
    static int kernel_mode_cpu(const MonitorOracle& monitor) {
        auto regs = monitor.registers();
        for (std::size_t i = 0; i < regs.size(); ++i)
            if (regs[i]["CPL"] == 0) return static_cast<int>(i);
        return 0;
    }

    static TestGuest* guest_;
};
TestGuest* CodeInspectTest::guest_ = nullptr;

TEST_F(CodeInspectTest, OrdinaryFunctionsStartWithTheFtraceNop) {
    std::map<std::string, Entry> entries;
    {
        MonitorOracle monitor(guest_->vm().qmp_socket_path());
        OperatorPause pause(monitor);
        entries = read_entries(kOrdinary);  // closes its Machine before returning
        int cpu = kernel_mode_cpu(monitor);
        for (const auto& [name, e] : entries) {
            EXPECT_EQ(as_u8(e.bytes), monitor.virtual_bytes(cpu, e.address, kEntryBytes))
                << name << ": hvpatch and QEMU's `x` disagree at " << hex(e.address);
        }
    }
    for (const auto& [name, e] : entries) {
        SCOPED_TRACE(name);
        EXPECT_EQ(e.address, guest_kallsyms(*guest_, name)) << "hvpatch's symbol vs the guest's /proc/kallsyms";
        EXPECT_EQ(e.kind.type, EntryType::FtraceNop) << e.kind.description << " (" << format_code_bytes(e.bytes) << ")";
        EXPECT_EQ(e.kind.landing, EntryLanding::None);
        EXPECT_EQ(e.kind.patch_site, e.address);
        EXPECT_EQ(e.kind.description, "ftrace NOP at " + hex(e.address));
        EXPECT_TRUE(covers_whole_instructions(e.bytes, e.address, 5));
        EXPECT_EQ(instruction_boundaries(e.bytes, e.address, 5), std::vector<std::uint64_t>{e.address});
        std::ostringstream listing;
        for (const auto& insn : decode(e.bytes, e.address, 4)) listing << "  " << insn.text() << ";";
        std::cout << "[ entry    ] " << name << " @ " << hex(e.address) << ": " << format_code_bytes(e.bytes)
                  << "\n[          ]" << listing.str() << "\n";
    }
}

TEST_F(CodeInspectTest, GuestFtraceWritesACallAndPutsTheNopBack) {
    const std::string fn = "cmdline_proc_show";
    const std::string tracing = "/sys/kernel/tracing";
    // tracefs: mounted by nobody in the busybox guest.
    TestGuest::Result mount = guest_->run("grep -q ' " + tracing + " tracefs' /proc/mounts || mount -t tracefs nodev " +
                                          tracing);
    ASSERT_EQ(mount.status, 0) << "mounting tracefs in the guest: " << mount.output;
    std::cout << "[ tracefs  ] available tracers: " << guest_->run_ok("cat " + tracing + "/available_tracers");
    ASSERT_EQ(guest_->run_ok("cat " + tracing + "/current_tracer"), "nop\n");

    Entry before = read_entries({fn})[fn];
    ASSERT_EQ(before.kind.type, EntryType::FtraceNop) << before.kind.description;

    guest_->run_ok("echo " + fn + " > " + tracing + "/set_ftrace_filter");
    guest_->run_ok("echo function > " + tracing + "/current_tracer");
    // The tracer really runs: reading /proc/cmdline is traced.
    guest_->run_ok("cat /proc/cmdline > /dev/null");
    std::string trace = guest_->run_ok("grep -c " + fn + " " + tracing + "/trace || true");
    std::cout << "[ tracefs  ] " << fn << " lines in trace: " << trace;

    std::vector<std::byte> traced = read_and_cross_check(before.address, kEntryBytes);
    EntryKind kind = classify_entry(traced, before.address);
    std::cout << "[ traced   ] " << format_code_bytes(traced) << "\n[          ] " << kind.description << "\n";
    EXPECT_EQ(kind.type, EntryType::Call) << kind.description;
    ASSERT_TRUE(kind.target.has_value());
    EXPECT_EQ(kind.patch_site, before.address);
    // Only the 5 bytes of the site changed.
    EXPECT_TRUE(std::equal(traced.begin() + 5, traced.end(), before.bytes.begin() + 5));
    EXPECT_EQ(decode(traced, before.address, 1).at(0).branch_target, kind.target);

    // What the call goes to: an ftrace trampoline of its own (module space,
    // "ftrace_trampoline [__builtin__ftrace]" in the guest's kallsyms) or
    // ftrace_caller / ftrace_regs_caller in kernel text.
    std::string guest_says = guest_kallsyms_at(*guest_, *kind.target);
    std::cout << "[ target   ] guest kallsyms at " << hex(*kind.target) << ": "
              << (guest_says.empty() ? "(nothing)\n" : guest_says);
    std::uint64_t ftrace_caller = symbol("ftrace_caller"), ftrace_regs_caller = symbol("ftrace_regs_caller");
    bool trampoline = guest_says.find("ftrace_trampoline") != std::string::npos;
    EXPECT_TRUE(trampoline || *kind.target == ftrace_caller || *kind.target == ftrace_regs_caller)
        << hex(*kind.target) << " is neither an ftrace trampoline nor ftrace_(regs_)caller (" << hex(ftrace_caller)
        << ", " << hex(ftrace_regs_caller) << ")";

    guest_->run_ok("echo nop > " + tracing + "/current_tracer");
    guest_->run_ok("echo > " + tracing + "/set_ftrace_filter");
    std::vector<std::byte> after = read_and_cross_check(before.address, kEntryBytes);
    EntryKind restored = classify_entry(after, before.address);
    EXPECT_EQ(restored.type, EntryType::FtraceNop) << restored.description;
    EXPECT_EQ(after, before.bytes);
}

TEST_F(CodeInspectTest, KprobesOnTheFtraceSiteUseFtraceElsewhereInt3OrJmp) {
    // CONFIG_KPROBES_ON_FTRACE: a kprobe at the entry is an ftrace call; one
    // at a later instruction is an int3, which the optimiser may turn into
    // a jmp to a detour buffer (CONFIG_OPTPROBES) soon after.
    const std::string fn = "meminfo_proc_show";
    const std::string tracing = "/sys/kernel/tracing";
    ASSERT_EQ(guest_->run("grep -q ' " + tracing + " tracefs' /proc/mounts || mount -t tracefs nodev " + tracing).status,
              0);
    TestGuest::Result has_kprobes = guest_->run("test -w " + tracing + "/kprobe_events");
    if (has_kprobes.status != 0) GTEST_SKIP() << "no kprobe_events in the guest's tracefs";

    Entry before = read_entries({fn})[fn];
    ASSERT_EQ(before.kind.type, EntryType::FtraceNop);
    // The first instruction boundary at or after entry + 5 (decoded here).
    auto insns = decode(before.bytes, before.address, 4);
    ASSERT_GE(insns.size(), 2u);
    const std::uint64_t offset = insns[1].address - before.address;

    guest_->run_ok("echo 'p:hvp_entry " + fn + "' >> " + tracing + "/kprobe_events");
    guest_->run_ok("echo 'p:hvp_body " + fn + "+" + std::to_string(offset) + "' >> " + tracing + "/kprobe_events");
    guest_->run_ok("echo 1 > " + tracing + "/events/kprobes/enable");
    // Give the optimiser (a delayed work, 5 jiffies) a moment.
    guest_->run_ok("sleep 1; cat /proc/meminfo > /dev/null");

    std::vector<std::byte> probed = read_and_cross_check(before.address, kEntryBytes);
    EntryKind at_entry = classify_entry(probed, before.address);
    EntryKind at_body = classify_entry(std::span(probed).subspan(offset), before.address + offset);
    std::cout << "[ kprobes  ] " << format_code_bytes(probed) << "\n[          ] entry: " << at_entry.description
              << "\n[          ] +" << offset << ": " << at_body.description << "\n";
    for (const EntryKind* k : {&at_entry, &at_body}) {
        if (!k->target) continue;
        std::string known = guest_kallsyms_at(*guest_, *k->target);
        std::cout << "[ target   ] guest kallsyms at " << hex(*k->target) << ": " << (known.empty() ? "(nothing)\n" : known);
    }

    guest_->run_ok("echo 0 > " + tracing + "/events/kprobes/enable");
    guest_->run_ok("echo > " + tracing + "/kprobe_events");

    EXPECT_EQ(at_entry.type, EntryType::Call) << at_entry.description;
    EXPECT_TRUE(at_body.type == EntryType::Int3 || at_body.type == EntryType::Jmp) << at_body.description;

    // An optimised probe is unoptimised by the optimiser's delayed work,
    // not by the write that removes it: wait for the code to come back.
    for (int i = 0; i < 50 && read_entries({fn})[fn].bytes != before.bytes; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::vector<std::byte> after = read_and_cross_check(before.address, kEntryBytes);
    EXPECT_EQ(after, before.bytes) << "the guest restored " << fn;
}

TEST_F(CodeInspectTest, DefaultGuestHasKaslr) {
    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    const KernelInfo& info = kernel->info();
    std::cout << "[ kaslr    ] _text " << hex(info.text.value) << ", offset " << hex(info.kaslr_offset) << "\n";
    EXPECT_NE(info.text.value, kLinkText);
    EXPECT_NE(info.kaslr_offset, 0);
    EXPECT_EQ(info.kaslr_offset, static_cast<std::int64_t>(info.text.value - kLinkText));
}

class NoKaslrTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        TestGuestOptions options;
        options.extra_append = "nokaslr";
        guest_ = TestGuest::boot(options).release();
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the nokaslr guest did not boot"; }
    static TestGuest* guest_;
};
TestGuest* NoKaslrTest::guest_ = nullptr;

TEST_F(NoKaslrTest, KernelSitsAtItsLinkAddress) {
    std::string cmdline = guest_->run_ok("cat /proc/cmdline");
    EXPECT_NE(cmdline.find(" nokaslr"), std::string::npos) << cmdline;
    std::uint64_t guest_text = guest_kallsyms(*guest_, "_text");
    std::uint64_t guest_fn = guest_kallsyms(*guest_, "cmdline_proc_show");

    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    const KernelInfo& info = kernel->info();
    EXPECT_EQ(info.text.value, kLinkText);
    EXPECT_EQ(info.kaslr_offset, 0);
    EXPECT_EQ(guest_text, kLinkText);
    // Entries look the same at the link address.
    std::uint64_t fn = kernel->symbol("cmdline_proc_show");
    EXPECT_EQ(fn, guest_fn);
    EntryKind kind = classify_entry(kernel->memory().read_bytes(GuestVirtAddr{fn}, kEntryBytes), fn);
    EXPECT_EQ(kind.type, EntryType::FtraceNop) << kind.description;
}

}  // namespace
}  // namespace hvpatch::test
