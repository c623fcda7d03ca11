// A VM as nobody prepared it for hvpatch: plain QEMU RAM (-m, no shared
// memory backend). hvpatch reads it out of the QEMU process; where the
// kernel forbids that (hvpatch without CAP_SYS_PTRACE), through the gdbstub
// after a notice. On one real test guest, through the hvpatch command:
//   1. the process's memory is chosen, named in inspect, with QEMU's pid;
//   2. every path reads the same bytes (process memory, gdbstub, QEMU's own
//      `x`) of kernel text, and the guest's own /proc/version at linux_banner;
//   3. check, apply, status, revert of the sample through the stub when
//      ptrace is forbidden: the guest runs the patched code, then the
//      original, every byte as before, the audit records name the path;
//      ps, stack and sym work there too;
//   4. a VM found paused stays paused through apply and revert on the
//      process path.
// The apply matrix on the process path (all three examples) is
// test_patch_apply, whose guest has plain RAM too; libvirt domains without
// <memoryBacking> are in test_libvirt_target and test_fleet_libvirt.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/monitor_oracle.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

class MemoryPathsTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        TestGuestOptions o;
        o.shared_ram = false;
        guest_ = TestGuest::boot(o).release();
        char tmpl[] = "/tmp/hvpatch-memory-paths.XXXXXX";
        dir_ = new std::string(mkdtemp(tmpl));
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        std::error_code ec;
        if (dir_) fs::remove_all(*dir_, ec);
        delete dir_;
        dir_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }
    void TearDown() override { EXPECT_EQ(kernel_problems_shown(*guest_), "") << "kernel problems on its console"; }

    static MonitorOracle monitor() { return MonitorOracle(guest_->vm().qmp_socket_path()); }
    static std::string audit_log() { return *dir_ + "/audit.jsonl"; }

    // build/hvpatch with this suite's state dir and audit log; `ptrace`
    // false runs it with CAP_SYS_PTRACE dropped from its bounding set (root
    // does not get it back at exec), as a reader the kernel refuses.
    static CommandResult hvpatch(std::vector<std::string> args, bool ptrace = true) {
        std::vector<std::string> argv;
        if (!ptrace) argv = {"setpriv", "--bounding-set=-sys_ptrace"};
        argv.insert(argv.end(), {hvpatch_binary(), "--state-dir", *dir_ + "/state", "--audit-log", audit_log()});
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv, 180s);
    }
    static json json_of(std::vector<std::string> args, bool ptrace = true) {
        args.push_back("--json");
        CommandResult r = hvpatch(args, ptrace);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        EXPECT_EQ(contains(r.err, "hvpatch: notice:"), !ptrace) << r.describe();
        json doc = json::parse(r.out, nullptr, false);
        EXPECT_TRUE(doc.is_object()) << r.describe();
        return doc.is_object() ? doc : json::object();
    }
    static std::string kallsyms_address(const std::string& name) {
        std::string line = guest_->run_ok("grep ' " + name + "$' /proc/kallsyms");
        EXPECT_GE(line.size(), 16u) << line;
        return "0x" + line.substr(0, 16);
    }
    static std::string read_hex(std::vector<std::string> args, bool ptrace = true) {
        std::vector<std::string> full = {"read", guest_->target()};
        full.insert(full.end(), args.begin(), args.end());
        return json_of(full, ptrace).value("hex", "");
    }

    static TestGuest* guest_;
    static std::string* dir_;
};
TestGuest* MemoryPathsTest::guest_ = nullptr;
std::string* MemoryPathsTest::dir_ = nullptr;

TEST_F(MemoryPathsTest, TheProcessMemoryIsChosenForPlainRam) {
    json doc = json_of({"inspect", guest_->target()});
    EXPECT_EQ(doc["memory"]["path"], "process-memory") << doc["memory"].dump(2);
    EXPECT_EQ(doc["memory"]["qemu_pid"], guest_->vm().pid());
    EXPECT_EQ(doc["memory"]["reads_while_running"], true);
    EXPECT_FALSE(doc["memory"].contains("notice")) << doc["memory"].dump(2);
    EXPECT_EQ(doc["run_state"], "running");
    EXPECT_EQ(doc["kernel"]["release"], guest_->release());
    EXPECT_EQ(monitor().status(), "running");

    CommandResult human = hvpatch({"inspect", guest_->target()});
    ASSERT_EQ(human.exit_code, 0) << human.describe();
    EXPECT_TRUE(contains(human.out, "read through the memory of QEMU process " + std::to_string(guest_->vm().pid())))
        << human.out;
}

TEST_F(MemoryPathsTest, EveryPathReadsTheSameBytes) {
    const std::string banner = kallsyms_address("linux_banner");
    const std::string version = guest_->run_ok("cat /proc/version");
    const std::string text = kallsyms_address("_text");
    std::string process_banner, stub_banner, process_block, stub_block;
    std::vector<std::uint8_t> xp;
    {
        // Guest memory holds still while the operator has the VM paused.
        MonitorOracle mon = monitor();
        OperatorPause pause(mon);
        const std::string length = std::to_string(version.size());
        process_banner = read_hex({"--virt", banner, length});
        stub_banner = read_hex({"--memory-path", "gdbstub", "--virt", banner, length});
        process_block = read_hex({"--virt", text, "64k"});
        stub_block = read_hex({"--memory-path", "gdbstub", "--virt", text, "64k"});
        xp = mon.virtual_bytes(0, std::stoull(text, nullptr, 16) + 0x800, 256);
        EXPECT_EQ(mon.status(), "paused");
    }
    std::string expected_banner;
    for (unsigned char c : version) {
        char two[3];
        std::snprintf(two, sizeof two, "%02x", c);
        expected_banner += two;
    }
    EXPECT_EQ(process_banner, expected_banner) << "the guest's /proc/version: " << version;
    EXPECT_EQ(stub_banner, expected_banner);
    ASSERT_EQ(process_block.size(), 2u * 65536);
    EXPECT_EQ(process_block, stub_block) << "the process's memory and the gdbstub disagree";
    std::string xp_hex;
    for (auto b : xp) {
        char two[3];
        std::snprintf(two, sizeof two, "%02x", b);
        xp_hex += two;
    }
    EXPECT_EQ(process_block.substr(2 * 0x800, 2 * 256), xp_hex) << "QEMU's own x disagrees";
    EXPECT_EQ(monitor().status(), "running");
}

TEST_F(MemoryPathsTest, WithoutPtraceEveryVerbWorksThroughTheStub) {
    const std::string ko = example_patch_ko(Example::Cmdline, guest_->release());
    const std::string original = guest_->run_ok(std::string(kCmdlineOracle));
    ASSERT_NE(original, kCmdlinePatchedOutput);
    const std::string entry = kallsyms_address("cmdline_proc_show");
    const std::string code_before = read_hex({"--virt", entry, "64"});

    json inspect = json_of({"inspect", guest_->target()}, false);
    EXPECT_EQ(inspect["memory"]["path"], "gdbstub");
    EXPECT_TRUE(contains(inspect["memory"].value("notice", ""), "CAP_SYS_PTRACE")) << inspect["memory"].dump(2);
    EXPECT_EQ(inspect["memory"]["reads_while_running"], false);

    json sym = json_of({"sym", guest_->target(), "cmdline_proc_show"}, false);
    ASSERT_EQ(sym["symbols"].size(), 1u) << sym.dump(2);
    EXPECT_EQ(std::stoull(sym["symbols"][0]["address"].get<std::string>(), nullptr, 16),
              std::stoull(entry, nullptr, 16));
    json ps = json_of({"ps", guest_->target()}, false);
    EXPECT_GE(ps["tasks"].size(), 30u);
    json stacks = json_of({"stack", guest_->target(), "--all"}, false);
    EXPECT_GE(stacks["stacks"].size(), 30u);

    json check = json_of({"check", guest_->target(), ko}, false);
    EXPECT_EQ(check["ok"], true) << check.dump(2);
    json applied = json_of({"apply", guest_->target(), ko}, false);
    EXPECT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    // What the stub wrote, the stub and the process's memory both read back.
    EXPECT_EQ(read_hex({"--virt", entry, "5"}, false).substr(0, 2), "e9");
    EXPECT_EQ(read_hex({"--virt", entry, "5"}).substr(0, 2), "e9");
    json status = json_of({"status", guest_->target()}, false);
    ASSERT_EQ(status["patches"].size(), 1u) << status.dump(2);
    EXPECT_EQ(status["patches"][0]["phase"], "applied");
    json reverted = json_of({"revert", guest_->target(), "livepatch_cmdline"}, false);
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(read_hex({"--virt", entry, "64"}, false), code_before);
    EXPECT_EQ(monitor().status(), "running");

    auto records = read_audit_log(audit_log());
    int by_stub = 0;
    for (const auto& rec : records)
        if (rec.value("operation", "") == "apply" || rec.value("operation", "") == "revert") {
            EXPECT_EQ(rec.value("memory_path", ""), "gdbstub") << rec.dump();
            ++by_stub;
        }
    EXPECT_EQ(by_stub, 2);
}

TEST_F(MemoryPathsTest, AVmFoundPausedStaysPausedThroughApplyAndRevert) {
    const std::string ko = example_patch_ko(Example::Cmdline, guest_->release());
    const std::string original = guest_->run_ok(std::string(kCmdlineOracle));
    const std::string entry = kallsyms_address("cmdline_proc_show");
    const std::string code_before = read_hex({"--virt", entry, "64"});
    json applied, reverted;
    std::string after_apply, after_revert;
    {
        MonitorOracle mon = monitor();
        OperatorPause pause(mon);
        applied = json_of({"apply", guest_->target(), ko});
        after_apply = mon.status();
        reverted = json_of({"revert", guest_->target(), "livepatch_cmdline"});
        after_revert = mon.status();
    }
    EXPECT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(after_apply, "paused");
    EXPECT_EQ(after_revert, "paused");
    EXPECT_EQ(monitor().status(), "running");
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(read_hex({"--virt", entry, "64"}), code_before);
    auto records = read_audit_log(audit_log());
    ASSERT_GE(records.size(), 2u);
    EXPECT_EQ(records.back().value("memory_path", ""), "process-memory") << records.back().dump();
}

}  // namespace
}  // namespace hvpatch::test
