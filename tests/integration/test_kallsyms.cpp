// kallsyms on the real guest: the tables found by shape in the paused
// guest's kernel image decode to exactly the guest's own /proc/kallsyms
// (every vmlinux symbol: address, type letter, name, in order), and
// resolve() agrees with the guest's /proc/PID/stack (%pB).
//
// Out of scope: module, BPF, ftrace and kprobe symbols (the /proc/kallsyms
// lines with a "[...]" suffix); they are not in the vmlinux tables.
//
// /proc/kallsyms (~4 MB) leaves the guest through a raw virtio disk (the
// command channel moves ~250 KB/s): the guest writes it to /dev/vda, the
// host reads the backing file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "hvpatch/machine.h"
#include "introspect/kallsyms.h"
#include "introspect/kernel_location.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

struct ProcSymbol {
    std::uint64_t address = 0;
    char type = '?';
    std::string name;
};

class KallsymsGuestTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        char path[] = "/tmp/hvpatch-kallsyms-bulk-XXXXXX";
        int fd = mkstemp(path);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(ftruncate(fd, 32 << 20), 0);  // sparse
        close(fd);
        bulk_ = path;
        TestGuestOptions options;
        options.extra_args = {"-drive", "file=" + bulk_ + ",format=raw,if=virtio,cache=writethrough"};
        guest_ = TestGuest::boot(options).release();

        // Only vmlinux lines: everything else carries "[module]".
        auto t0 = Clock::now();
        std::string size = guest_->run_ok(
            "grep -v '\\[' /proc/kallsyms > /tmp/ksyms && wc -c < /tmp/ksyms && "
            "dd if=/tmp/ksyms of=/dev/vda bs=1M 2>/dev/null && sync",
            120s);
        std::size_t bytes = std::stoull(size);
        std::ifstream in(bulk_, std::ios::binary);
        std::string text(bytes, '\0');
        in.read(text.data(), static_cast<std::streamsize>(bytes));
        ASSERT_EQ(static_cast<std::size_t>(in.gcount()), bytes);
        std::istringstream lines(text);
        std::string line;
        while (std::getline(lines, line)) {
            std::istringstream fields(line);
            std::string address, type, name;
            fields >> address >> type >> name;
            proc_.push_back({std::stoull(address, nullptr, 16), type.at(0), name});
        }
        std::cout << "[ info     ] /proc/kallsyms: " << proc_.size() << " vmlinux symbols, " << bytes
                  << " bytes, fetched in " << ms_since(t0) << " ms\n";
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        if (!bulk_.empty()) std::remove(bulk_.c_str());
    }
    void SetUp() override {
        ASSERT_NE(guest_, nullptr) << "the test guest did not boot";
        ASSERT_GT(proc_.size(), 10000u);
    }

    static std::uint64_t proc_address(const std::string& name) {
        for (const ProcSymbol& s : proc_)
            if (s.name == name) return s.address;
        ADD_FAILURE() << name << " not in /proc/kallsyms";
        return 0;
    }

    // Finds and decodes the tables in the paused guest.
    static KallsymsTable locate_in_guest(bool report) {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        auto t0 = Clock::now();
        KernelPageTables tables = find_kernel_page_tables(*machine);
        KernelMemory memory(*machine, tables.cr3, tables.levels);
        KernelImage image = find_kernel_image(memory);
        double t_image = ms_since(t0);
        auto t1 = Clock::now();
        KallsymsTable table = KallsymsTable::locate(memory, image.start, image.size);
        double t_locate = ms_since(t1);
        auto t2 = Clock::now();
        KallsymsTable again = KallsymsTable::decode(memory, table.layout());
        double t_decode = ms_since(t2);
        EXPECT_EQ(again.symbols().size(), table.symbols().size());
        if (report) {
            const KallsymsLayout& l = table.layout();
            std::cout << "[ info     ] image " << hex(image.start.value) << " +" << (image.size >> 20)
                      << " MiB found in " << t_image << " ms; locate (scan + decode) " << t_locate
                      << " ms; decode alone " << t_decode << " ms; paused " << 
                      std::chrono::duration<double, std::milli>(pause.paused_for()).count() << " ms\n"
                      << "[ info     ] " << l.num_syms << " symbols, " << l.format << "\n"
                      << "[ info     ] offsets " << hex(l.offsets.value) << " relative_base "
                      << hex(l.relative_base_var.value) << " = " << hex(l.relative_base) << " num_syms "
                      << hex(l.num_syms_var.value) << " names " << hex(l.names.value) << " markers "
                      << hex(l.markers.value) << " seqs_of_names " << hex(l.seqs_of_names.value)
                      << " token_table " << hex(l.token_table.value) << " token_index "
                      << hex(l.token_index.value) << "\n";
            ::testing::Test::RecordProperty("locate_ms", std::to_string(t_locate));
            ::testing::Test::RecordProperty("decode_ms", std::to_string(t_decode));
        }
        return table;
    }

    static TestGuest* guest_;
    static std::string bulk_;
    static std::vector<ProcSymbol> proc_;
};

TestGuest* KallsymsGuestTest::guest_ = nullptr;
std::string KallsymsGuestTest::bulk_;
std::vector<ProcSymbol> KallsymsGuestTest::proc_;

TEST_F(KallsymsGuestTest, EveryVmlinuxSymbolMatchesProcKallsyms) {
    KallsymsTable table = locate_in_guest(true);
    const KallsymsLayout& l = table.layout();
    EXPECT_TRUE(l.absolute_percpu);
    EXPECT_NE(l.seqs_of_names.value, 0u) << "Debian 6.1.y has kallsyms_seqs_of_names";
    EXPECT_EQ(l.relative_base, proc_address("_text"));

    // /proc/kallsyms prints the vmlinux symbols in table order and skips
    // those with an empty name (s_show()).
    std::vector<const KernelSymbol*> ours;
    for (const KernelSymbol& s : table.symbols())
        if (!s.name.empty()) ours.push_back(&s);
    ASSERT_EQ(ours.size(), proc_.size());
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < proc_.size() && mismatches < 20; ++i) {
        const KernelSymbol& s = *ours[i];
        if (s.address.value != proc_[i].address || s.type != proc_[i].type || s.name != proc_[i].name) {
            ++mismatches;
            ADD_FAILURE() << "symbol " << i << ": ours " << hex(s.address.value) << " " << s.type << " " << s.name
                          << ", guest " << hex(proc_[i].address) << " " << proc_[i].type << " " << proc_[i].name;
        }
    }
}

TEST_F(KallsymsGuestTest, FindAndResolveAgreeWithTheGuest) {
    KallsymsTable table = locate_in_guest(false);
    for (const char* name : {"_text", "startup_64", "schedule", "do_nanosleep", "klp_enable_patch",
                             "__x64_sys_read", "init_task", "jiffies", "_end"})
        EXPECT_EQ(table.require(name).address.value, proc_address(name)) << name;
    EXPECT_EQ(table.require("__preempt_count").type, 'A');
    EXPECT_LT(table.require("__preempt_count").address.value, 0x100000u) << "a per-CPU offset";

    // Static functions with the same name in several files: find_all()
    // is in address order, like livepatch's sympos.
    std::map<std::string, std::vector<std::uint64_t>> by_name;
    for (const ProcSymbol& s : proc_) by_name[s.name].push_back(s.address);
    std::size_t checked_dups = 0;
    for (auto& [name, addresses] : by_name) {
        if (addresses.size() < 3 || checked_dups >= 200) continue;
        std::sort(addresses.begin(), addresses.end());
        std::vector<KernelSymbol> all = table.find_all(name);
        ASSERT_EQ(all.size(), addresses.size()) << name;
        for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].address.value, addresses[i]) << name;
        EXPECT_FALSE(table.find(name).has_value());
        EXPECT_EQ(table.require(name, 2).address.value, addresses[1]);
        ++checked_dups;
    }
    EXPECT_GT(checked_dups, 10u);
}

TEST_F(KallsymsGuestTest, ResolveMatchesProcPidStack) {
    // "[<0>] do_nanosleep+0x6d/0x160" lines of sleeping tasks: %pB looks up
    // the return address minus one and prints the offset plus one.
    std::string pids = guest_->run_ok("pidof sleep");
    std::istringstream ps(pids);
    std::string pid;
    std::string stacks;
    while (ps >> pid) stacks += guest_->run_ok("cat /proc/" + pid + "/stack");
    stacks += guest_->run_ok("cat /proc/1/stack");
    KallsymsTable table = locate_in_guest(false);
    std::istringstream lines(stacks);
    std::string line;
    std::size_t frames = 0;
    while (std::getline(lines, line)) {
        std::size_t sp = line.find("] ");
        std::size_t plus = line.rfind('+');
        std::size_t slash = line.rfind('/');
        ASSERT_TRUE(sp != std::string::npos && plus != std::string::npos && slash != std::string::npos) << line;
        std::string name = line.substr(sp + 2, plus - sp - 2);
        std::uint64_t offset = std::stoull(line.substr(plus + 1, slash - plus - 1), nullptr, 16);
        std::uint64_t size = std::stoull(line.substr(slash + 1), nullptr, 16);
        bool matched = false;
        for (const KernelSymbol& candidate : table.find_all(name)) {
            auto r = table.resolve(GuestVirtAddr{candidate.address.value + offset - 1});
            if (r && r->symbol.name == name && r->offset + 1 == offset && r->size == size) matched = true;
        }
        EXPECT_TRUE(matched) << line;
        ++frames;
    }
    EXPECT_GT(frames, 4u) << stacks;
}

// Through the gdbstub (the last resort, ~5 MiB/s) every byte costs: the
// scan must still be bounded to what it needs.
TEST(KallsymsStubMemoryTest, LocateThroughTheGdbStub) {
    TestGuestOptions options;
    options.shared_ram = false;
    auto guest = TestGuest::boot(options);
    const std::size_t count = std::stoull(guest->run_ok("grep -vc '\\[' /proc/kallsyms"));
    const std::string schedule = guest->run_ok("grep ' schedule$' /proc/kallsyms");
    auto machine = open_machine(guest->target(), "", MemoryAccessInfo::Path::GdbStub);
    ASSERT_EQ(machine->memory_access().path, MemoryAccessInfo::Path::GdbStub);
    PauseGuard pause(*machine);
    KernelPageTables tables = find_kernel_page_tables(*machine);
    KernelMemory memory(*machine, tables.cr3, tables.levels);
    KernelImage image = find_kernel_image(memory);
    auto t0 = Clock::now();
    KallsymsTable table = KallsymsTable::locate(memory, image.start, image.size);
    double t_locate = ms_since(t0);
    std::cout << "[ info     ] through the gdbstub: locate (scan + decode) " << t_locate << " ms\n";
    RecordProperty("locate_ms", std::to_string(t_locate));
    std::size_t named = 0;
    for (const KernelSymbol& s : table.symbols()) named += !s.name.empty();
    EXPECT_EQ(named, count);
    EXPECT_EQ(table.require("schedule").address.value, std::stoull(schedule.substr(0, 16), nullptr, 16));
}

}  // namespace
}  // namespace hvpatch::test
