// Modules on the real guest, against the guest's own view:
//  - list_modules() == /proc/modules (names in order, core base, size, state)
//  - module_symbols() of every module == the "[module]" lines of
//    /proc/kallsyms: address, type letter (incl. its case), name, module,
//    in the order the kernel prints them
//  - ModuleSymbolResolver == %pS in the guest's own stack traces (ftrace's
//    func_stack_trace with sym-offset and sym-addr: "sym+0x1b/0x40 [mod] <addr>")
//  - module ORC tables cover the module return addresses of those traces.
//
// The guest loads, besides the boot modules (guest/modules, all of whose
// exports are EXPORT_SYMBOL_GPL), virtio_dma_buf.ko, whose four
// EXPORT_SYMBOL exports are the only upper-case module letters /proc shows
// (is_exported() searches mod->syms only, not mod->gpl_syms). The .ko comes
// from the guest's kernel package and enters the guest on a raw virtio disk.
//
// /proc/kallsyms lines whose "[...]" is not a module: hvpatch cannot
// produce those from the module list, so the comparison leaves them out,
// by name, and reports how many there were:
//   [__builtin__ftrace]   dynamic ftrace trampolines (ftrace_mod_get_kallsym;
//                         present here: the test turns the function tracer on)
//   [__builtin__kprobes]  kprobe instruction slot pages (kprobe_get_kallsym)
//   [bpf]                 JITed BPF programs (bpf_get_kallsym)
// Any other "[name]" that is not a listed module fails the test.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/modules.h"
#include "introspect/orc_unwind.h"
#include "introspect/task_stacks.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

const std::set<std::string> kNotModules = {"__builtin__ftrace", "__builtin__kprobes", "bpf"};
constexpr const char* kExtraModule = "virtio_dma_buf";

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) out.push_back(line);
    return out;
}

using SymbolKey = std::tuple<std::uint64_t, char, std::string, std::string>;  // address, letter, name, module

std::string describe(const SymbolKey& k) {
    return hex(std::get<0>(k)) + " " + std::get<1>(k) + " " + std::get<2>(k) + "\t[" + std::get<3>(k) + "]";
}

class ModuleSymbolsTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        // virtio_dma_buf.ko at the start of a sparse raw disk.
        std::string dir = test_guest_dir();
        std::string release = lines_of(read_file(dir + "/release")).at(0);
        std::string ko = read_file(dir + "/lib/modules/" + release + "/kernel/drivers/virtio/" + kExtraModule + ".ko");
        char path[] = "/tmp/hvpatch-modules-disk-XXXXXX";
        int fd = mkstemp(path);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(write(fd, ko.data(), ko.size()), static_cast<ssize_t>(ko.size()));
        ASSERT_EQ(ftruncate(fd, 16 << 20), 0);
        close(fd);
        disk_ = path;

        TestGuestOptions options;
        options.extra_args = {"-drive", "file=" + disk_ + ",format=raw,if=virtio,cache=writethrough"};
        guest_ = TestGuest::boot(options).release();
        guest_->run_ok("dd if=/dev/vda of=/tmp/m.ko bs=" + std::to_string(ko.size()) +
                       " count=1 2>/dev/null && insmod /tmp/m.ko");

        // Stack traces through virtio_blk, virtio_ring and virtio_pci: the
        // function tracer on vp_notify (virtio_pci) with a stack trace per
        // call, while writing to the disk (past the .ko) with O_DIRECT.
        guest_->run_ok(
            "mount -t tracefs none /sys/kernel/tracing && cd /sys/kernel/tracing && "
            "echo vp_notify > set_ftrace_filter && echo 1 > options/func_stack_trace && "
            "echo 1 > options/sym-offset && echo 1 > options/sym-addr && echo function > current_tracer && "
            "dd if=/dev/zero of=/dev/vda bs=4k seek=1024 count=4 oflag=direct 2>/dev/null && "
            "echo 0 > tracing_on");
        // Leave the tracer selected: its trampoline stays, and with it the
        // [__builtin__ftrace] line of /proc/kallsyms.
        trace_ = guest_->run_ok("grep '=>' /sys/kernel/tracing/trace | sort -u");
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        if (!disk_.empty()) std::filesystem::remove(disk_);
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    static TestGuest* guest_;
    static std::string disk_, trace_;
};
TestGuest* ModuleSymbolsTest::guest_ = nullptr;
std::string ModuleSymbolsTest::disk_;
std::string ModuleSymbolsTest::trace_;

TEST_F(ModuleSymbolsTest, ListMatchesProcModules) {
    // "name size refcnt deps state 0xaddress [taints]"
    std::vector<std::string> proc = lines_of(guest_->run_ok("cat /proc/modules"));
    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    std::vector<GuestModule> modules = list_modules(*kernel);
    const auto& layouts = kernel->layouts();

    ASSERT_EQ(modules.size(), proc.size());
    for (std::size_t i = 0; i < proc.size(); ++i) {
        std::istringstream f(proc[i]);
        std::string name, refcnt, deps, state, address;
        std::uint64_t size = 0;
        f >> name >> size >> refcnt >> deps >> state >> address;
        const GuestModule& m = modules[i];
        EXPECT_EQ(m.name, name) << "entry " << i;
        EXPECT_EQ(m.core.size + m.init.size, size) << name;
        EXPECT_EQ(hex(m.core.base), address) << name;
        EXPECT_EQ(state, "Live") << name;
        EXPECT_EQ(m.state, layouts.module.state_live) << name;
        // Init done: mod->kallsyms was switched to &mod->core_kallsyms and
        // the init region freed.
        EXPECT_EQ(m.kallsyms, m.address + layouts.module.core_kallsyms.offset) << name;
        EXPECT_EQ(m.init.base, 0u) << name;
        EXPECT_EQ(m.init.size, 0u) << name;
        EXPECT_LE(m.core.text_size, m.core.size) << name;
        EXPECT_FALSE(m.livepatch) << name;
        ASSERT_TRUE(m.orc) << name;
        EXPECT_GT(m.orc->num_entries, 0u) << name;
        EXPECT_TRUE(m.within(m.core.base)) << name;
        EXPECT_EQ(module_for_address(modules, m.core.base + m.core.size - 1), &m) << name;
    }
    ASSERT_FALSE(modules.empty());
    EXPECT_EQ(modules.front().name, kExtraModule) << "the newest module comes first";
    EXPECT_EQ(modules.back().name, "virtio_ring") << "the first module loaded at boot comes last";
}

TEST_F(ModuleSymbolsTest, SymbolsMatchProcKallsyms) {
    std::vector<std::string> proc_lines = lines_of(guest_->run_ok("grep '\\[' /proc/kallsyms"));
    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    std::vector<GuestModule> modules = list_modules(*kernel);
    std::set<std::string> names;
    for (const auto& m : modules) names.insert(m.name);

    // "%px %c %s\t[%s]\n"
    std::vector<SymbolKey> proc;
    std::map<std::string, int> excluded;
    for (const std::string& line : proc_lines) {
        std::size_t tab = line.find('\t');
        ASSERT_NE(tab, std::string::npos) << line;
        ASSERT_GT(line.size(), tab + 2) << line;
        ASSERT_EQ(line[16], ' ') << line;
        ASSERT_EQ(line[18], ' ') << line;
        std::string module = line.substr(tab + 2, line.size() - tab - 3);
        ASSERT_EQ(line.substr(tab + 1, 1) + line.back(), "[]") << line;
        if (kNotModules.contains(module)) {
            ++excluded[module];
            continue;
        }
        EXPECT_TRUE(names.contains(module)) << "/proc/kallsyms names a module hvpatch did not list: " << line;
        proc.emplace_back(std::stoull(line.substr(0, 16), nullptr, 16), line[17], line.substr(19, tab - 19), module);
    }

    auto t0 = std::chrono::steady_clock::now();
    std::vector<SymbolKey> ours;
    for (const GuestModule& m : modules)
        for (const KernelSymbol& s : module_symbols(*kernel, m))
            ours.emplace_back(s.address.value, s.type, s.name, s.module);
    auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

    std::cout << "[ info     ] /proc/kallsyms: " << proc.size() << " module symbols in " << modules.size()
              << " modules (hvpatch read them in " << ms << " ms); left out by name:";
    for (const auto& [name, count] : excluded) std::cout << " [" << name << "] x" << count;
    std::cout << (excluded.empty() ? " none" : "") << "\n";
    EXPECT_GT(excluded["__builtin__ftrace"], 0) << "the function tracer's trampoline is a non-module line";

    // Exact equality as sets, and in the kernel's order.
    std::multiset<SymbolKey> want(proc.begin(), proc.end()), got(ours.begin(), ours.end());
    std::vector<SymbolKey> missing, extra;
    std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(missing));
    std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(extra));
    for (std::size_t i = 0; i < missing.size() && i < 20; ++i) ADD_FAILURE() << "only in /proc: " << describe(missing[i]);
    for (std::size_t i = 0; i < extra.size() && i < 20; ++i) ADD_FAILURE() << "only in hvpatch: " << describe(extra[i]);
    EXPECT_EQ(missing.size(), 0u);
    EXPECT_EQ(extra.size(), 0u);
    EXPECT_TRUE(ours == proc) << "same lines, same order";
    EXPECT_GT(proc.size(), 500u);

    // The case rule, seen in the guest: EXPORT_SYMBOL → upper case,
    // EXPORT_SYMBOL_GPL and everything else → lower case.
    std::map<std::pair<std::string, std::string>, char> letter;
    for (const auto& k : ours) letter[{std::get<3>(k), std::get<2>(k)}] = std::get<1>(k);
    EXPECT_EQ((letter[{kExtraModule, "virtio_dma_buf_export"}]), 'T');
    EXPECT_EQ((letter[{kExtraModule, "is_virtio_dma_buf"}]), 'T');
    EXPECT_EQ((letter[{kExtraModule, "__this_module"}]), 'd') << "global, not exported";
    EXPECT_EQ((letter[{"virtio_ring", "vring_interrupt"}]), 't') << "EXPORT_SYMBOL_GPL";
    EXPECT_EQ((letter[{"virtio", "register_virtio_driver"}]), 't') << "EXPORT_SYMBOL_GPL";
    int upper = 0;
    for (const auto& k : ours) upper += std::isupper(static_cast<unsigned char>(std::get<1>(k))) != 0;
    EXPECT_EQ(upper, 4) << "virtio_dma_buf's four EXPORT_SYMBOLs";
}

TEST_F(ModuleSymbolsTest, ResolverMatchesGuestStackTraces) {
    // " => virtqueue_notify+0x1b/0x40 [virtio_ring] <ffffffffc04bc14b>"
    // " => 0xffffffffc04cf083 <ffffffffc04cf083>" (an ftrace trampoline)
    struct Frame {
        std::string text;
        std::uint64_t address;
    };
    std::vector<Frame> in_modules, not_resolved;
    for (const std::string& line : lines_of(trace_)) {
        std::size_t arrow = line.find("=> "), lt = line.rfind(" <");
        if (arrow == std::string::npos || lt == std::string::npos || line.back() != '>') continue;
        Frame f{line.substr(arrow + 3, lt - arrow - 3), std::stoull(line.substr(lt + 2), nullptr, 16)};
        if (f.text.back() == ']') in_modules.push_back(f);
        if (f.text.rfind("0x", 0) == 0) not_resolved.push_back(f);
    }
    ASSERT_GE(in_modules.size(), 3u) << trace_;

    auto machine = open_machine(guest_->target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    ModuleSymbolResolver resolver = ModuleSymbolResolver::for_kernel(*kernel);
    std::set<std::string> modules_seen;
    for (const Frame& f : in_modules) {
        auto r = resolver.resolve(f.address);
        ASSERT_TRUE(r) << f.text;
        EXPECT_EQ(format_symbol(*r), f.text) << hex(f.address);
        modules_seen.insert(r->symbol.module);
    }
    EXPECT_TRUE(modules_seen.contains("virtio_ring") && modules_seen.contains("virtio_blk") &&
                modules_seen.contains("virtio_pci"))
        << trace_;
    // What %pS leaves as a bare address (an ftrace trampoline) is in no module.
    for (const Frame& f : not_resolved) EXPECT_FALSE(resolver.resolve(f.address)) << f.text;

    // The modules' ORC tables: each module frame is a return address (or
    // the traced function's fentry return) in a normal function body: a
    // CALL entry with the CFA on the stack pointer.
    OrcFormat format = guest_orc_format(*kernel);
    CompositeOrcSource orc;
    add_module_orc_sources(orc, kernel->memory(), resolver.modules(), format);
    for (const Frame& f : in_modules) {
        auto e = orc.find(f.address);
        ASSERT_TRUE(e) << f.text;
        EXPECT_EQ(e->type, OrcEntry::Type::Call) << f.text;
        EXPECT_EQ(e->sp_reg, orc_reg::kSp) << f.text;
        EXPECT_GE(e->sp_offset, 8) << f.text;
    }
    EXPECT_FALSE(orc.find(kernel->info().text.value)) << "vmlinux text is not a module's";
}

}  // namespace
}  // namespace hvpatch::test
