// hvpatch fleet apply / revert over three real test guests booted side by
// side: two run the default kernel, one the cloud kernel, for which the
// sample patch (built for the default kernel) does not fit. Checked from
// inside each guest (cat /proc/cmdline), in the fleet's report and exit
// code, and in the audit log:
//   1. apply on all three: two applied, the cloud guest skipped (vermagic)
//      and untouched, exit 6; again on the two: already-applied, exit 0;
//      revert on all three: two reverted, the cloud guest not-applied,
//      exit 0; every child's record and the fleet's summary in one intact
//      audit chain;
//   2. nothing fits or reachable: exit 7 (skipped + failed);
//   3. SIGINT while a child waits in a transition: passed on, the child
//      stops as a lone apply does (state kept), the queued target is never
//      started, exit 130; revert cleans up;
//   4. one child killed (SIGKILL) in its transition: the other target is
//      patched all the same, the killed one is reported failed, exit 6.
#include <gtest/gtest.h>

#include <dirent.h>

#include <csignal>
#include <fstream>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr int kExitPartial = 6, kExitNone = 7;

class FleetTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        // One vCPU each: three TCG guests share this host's two cores.
        TestGuestOptions plain;
        plain.vcpus = 1;
        TestGuestOptions cloud = plain;
        cloud.flavour = "cloud-amd64";
        // One after the other, from this thread: QEMU dies with the thread
        // that launched it (PR_SET_PDEATHSIG), so no boot threads.
        guests_ = new std::vector<std::unique_ptr<TestGuest>>();
        guests_->push_back(TestGuest::boot(plain));
        guests_->push_back(TestGuest::boot(plain));
        guests_->push_back(TestGuest::boot(cloud));
        char tmpl[] = "/tmp/hvpatch-fleet-test.XXXXXX";
        dir_ = new std::string(mkdtemp(tmpl));
    }
    static void TearDownTestSuite() {
        delete guests_;
        guests_ = nullptr;
        std::error_code ec;
        if (dir_) fs::remove_all(*dir_, ec);
        delete dir_;
        dir_ = nullptr;
    }
    void SetUp() override {
        ASSERT_NE(guests_, nullptr);
        ASSERT_NE(guest(0).release(), guest(2).release()) << "the cloud guest runs the default kernel";
        ASSERT_EQ(guest(0).release(), guest(1).release());
    }
    void TearDown() override {
        for (auto& g : *guests_) EXPECT_EQ(kernel_problems_shown(*g), "") << "kernel problems on " << g->target();
    }

    static TestGuest& guest(int i) { return *(*guests_)[static_cast<std::size_t>(i)]; }
    static std::string audit_log() { return *dir_ + "/audit.jsonl"; }
    static std::vector<std::string> hvpatch_argv(std::vector<std::string> args) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", *dir_ + "/state", "--audit-log", audit_log()};
        argv.insert(argv.end(), args.begin(), args.end());
        return argv;
    }
    static CommandResult hvpatch(std::vector<std::string> args) {
        CommandOptions options;
        options.timeout = 120s;
        return run_command(hvpatch_argv(std::move(args)), options);
    }
    static json parse(const CommandResult& r) {
        try {
            return json::parse(r.out);
        } catch (const std::exception& e) {
            ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.describe();
            return json::object();
        }
    }
    static const json& entry(const json& report, const std::string& target) {
        static const json none = json::object();
        for (const auto& t : report["targets"])
            if (t.value("target", "") == target) return t;
        ADD_FAILURE() << target << " not in the report:\n" << report.dump(2);
        return none;
    }
    static std::string cmdline(int i) { return guest(i).run_ok(std::string(kCmdlineOracle)); }
    // The pid of the child of `parent` whose command line contains `needle`, or -1.
    static pid_t child_with(pid_t parent, const std::string& needle) {
        DIR* proc = opendir("/proc");
        if (!proc) return -1;
        pid_t found = -1;
        while (dirent* e = readdir(proc)) {
            pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
            if (pid <= 0) continue;
            std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
            std::string line;
            std::getline(stat, line);
            auto close = line.rfind(')');
            if (close == std::string::npos) continue;
            char state = 0;
            int ppid = 0;
            if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) != 2 || ppid != parent) continue;
            std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline");
            std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
            for (char& c : args)
                if (c == '\0') c = ' ';
            if (args.find(needle) != std::string::npos) found = pid;
        }
        closedir(proc);
        return found;
    }
    static std::string sample_ko() { return example_patch_ko(Example::Cmdline, guest(0).release()); }

    static std::vector<std::unique_ptr<TestGuest>>* guests_;
    static std::string* dir_;
};
std::vector<std::unique_ptr<TestGuest>>* FleetTest::guests_ = nullptr;
std::string* FleetTest::dir_ = nullptr;

TEST_F(FleetTest, AppliesWhereThePatchFitsSkipsTheOtherKernelAndReverts) {
    std::vector<std::string> original;
    for (int i = 0; i < 3; ++i) {
        original.push_back(cmdline(i));
        ASSERT_NE(original.back(), kCmdlinePatchedOutput);
    }
    const std::string a = guest(0).target(), b = guest(1).target(), c = guest(2).target();

    CommandResult applied = hvpatch({"fleet", "apply", sample_ko(), a, b, c, "--parallel", "3", "--json"});
    EXPECT_EQ(applied.exit_code, kExitPartial) << applied.describe();
    json report = parse(applied);
    EXPECT_EQ(report["fleet"], "apply");
    EXPECT_EQ(report["patch"], "livepatch_cmdline");
    EXPECT_EQ(report["exit_code"], kExitPartial);
    EXPECT_EQ(report["counts"]["applied"], 2) << report.dump(2);
    EXPECT_EQ(report["counts"]["skipped"], 1) << report.dump(2);
    for (const auto& t : {a, b}) {
        const json& e = entry(report, t);
        EXPECT_EQ(e["outcome"], "applied") << e.dump(2);
        EXPECT_EQ(e["report"]["outcome"], "applied") << e.dump(2);
        EXPECT_GT(e["time_ms"].get<long>(), 0);
        EXPECT_TRUE(e["changed_guest"].get<bool>());
    }
    const json& skipped = entry(report, c);
    EXPECT_EQ(skipped["outcome"], "skipped") << skipped.dump(2);
    EXPECT_EQ(skipped["error_kind"], "guest");
    EXPECT_FALSE(skipped["changed_guest"].get<bool>());
    EXPECT_NE(skipped["reason"].get<std::string>().find(guest(2).release()), std::string::npos) << skipped.dump(2);
    // Inside each guest: patched where the report says so, and only there.
    EXPECT_EQ(cmdline(0), kCmdlinePatchedOutput);
    EXPECT_EQ(cmdline(1), kCmdlinePatchedOutput);
    EXPECT_EQ(cmdline(2), original[2]);

    CommandResult again = hvpatch({"fleet", "apply", sample_ko(), a, b, "--parallel", "2", "--json"});
    EXPECT_EQ(again.exit_code, 0) << again.describe();
    json again_report = parse(again);
    EXPECT_EQ(entry(again_report, a)["outcome"], "already-applied") << again_report.dump(2);
    EXPECT_EQ(entry(again_report, b)["outcome"], "already-applied") << again_report.dump(2);

    // Not a terminal: one line per state change on stderr, the report on stdout.
    CommandResult reverted = hvpatch({"fleet", "revert", "livepatch_cmdline", a, b, c, "--parallel", "2"});
    EXPECT_EQ(reverted.exit_code, 0) << reverted.describe();
    EXPECT_EQ(reverted.out.rfind("fleet revert livepatch_cmdline: 2 reverted, 1 not-applied (3 targets, --parallel 2, ", 0),
              0u) << reverted.describe();
    for (const auto& t : {a, b}) {
        EXPECT_NE(reverted.err.find(t + ": queued"), std::string::npos) << reverted.err;
        EXPECT_NE(reverted.err.find(t + ": reverted in "), std::string::npos) << reverted.err;
        EXPECT_NE(reverted.out.find("  " + t + "  reverted"), std::string::npos) << reverted.out;
    }
    EXPECT_NE(reverted.err.find(c + ": not-applied in "), std::string::npos) << reverted.err;
    for (int i = 0; i < 3; ++i) EXPECT_EQ(cmdline(i), original[static_cast<std::size_t>(i)]) << guest(i).target();

    // Each child audited its own operation, the fleet its summary; the
    // parallel appends left one intact chain.
    auto records = read_audit_log(audit_log());
    int applies = 0, refused = 0, reverts = 0;
    std::vector<std::string> summaries;
    for (const auto& r : records) {
        std::string op = r.value("operation", "");
        if (op == "apply" && r.value("outcome", "") == "applied") ++applies;
        if (op == "apply" && r.value("outcome", "") == "refused") ++refused;
        if (op == "revert" && r.value("outcome", "") == "reverted") ++reverts;
        if (op.rfind("fleet ", 0) == 0) summaries.push_back(op + " " + r.value("outcome", ""));
    }
    EXPECT_EQ(applies, 2);
    EXPECT_EQ(refused, 3);  // the cloud guest, then the two already applied
    EXPECT_EQ(reverts, 2);
    EXPECT_EQ(summaries, (std::vector<std::string>{"fleet apply partial", "fleet apply all-ok", "fleet revert all-ok"}));
    CommandResult verify = hvpatch({"audit", "verify"});
    EXPECT_EQ(verify.exit_code, 0) << verify.describe();
}

TEST_F(FleetTest, NoTargetOkIsExitSeven) {
    const std::string missing = "qmp:" + *dir_ + "/no-such-vm.qmp";
    CommandResult r = hvpatch({"fleet", "apply", sample_ko(), guest(2).target(), missing, "--json"});
    EXPECT_EQ(r.exit_code, kExitNone) << r.describe();
    json report = parse(r);
    EXPECT_EQ(entry(report, guest(2).target())["outcome"], "skipped") << report.dump(2);
    const json& failed = entry(report, missing);
    EXPECT_EQ(failed["outcome"], "failed") << report.dump(2);
    EXPECT_EQ(failed["error_kind"], "unreachable") << report.dump(2);
    EXPECT_EQ(failed["exit_code"], 3);
}

TEST_F(FleetTest, UsageErrors) {
    EXPECT_EQ(hvpatch({"fleet", "apply", sample_ko()}).exit_code, 2);  // no targets
    EXPECT_EQ(hvpatch({"fleet", "apply", sample_ko(), guest(0).target(), guest(0).target()}).exit_code, 2);
    EXPECT_EQ(hvpatch({"fleet", "apply", sample_ko(), guest(0).target(), "--parallel", "0"}).exit_code, 2);
    EXPECT_EQ(hvpatch({"fleet", "apply", "/etc/hostname", guest(0).target()}).exit_code, 2);
    EXPECT_EQ(hvpatch({"fleet", "revert", "livepatch_cmdline", "--all-running", guest(0).target()}).exit_code, 2);
}

TEST_F(FleetTest, SigintIsPassedOnAndNothingNewStarts) {
    const std::string a = guest(0).target(), b = guest(1).target();
    // The sleeper's transition waits for the guest's sleeping tasks; with
    // --signal-after 100 they are not woken while the test interrupts.
    CommandOptions options;
    options.timeout = 120s;
    RunningCommand fleet(hvpatch_argv({"fleet", "apply", example_patch_ko(Example::Sleeper, guest(0).release()), a, b,
                                       "--parallel", "1", "--signal-after", "100", "--timeout", "100"}),
                         options);
    ASSERT_TRUE(fleet.wait_for_output(a + ": patching pass", 90s, true)) << fleet.err();
    fleet.send_signal(SIGINT);
    CommandResult r = fleet.wait();
    EXPECT_EQ(r.exit_code, 130) << r.describe();
    EXPECT_NE(r.err.find("interrupted (SIGINT): passed on to 1 running"), std::string::npos) << r.err;
    EXPECT_NE(r.out.find("  " + a + "  failed"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("interrupted by"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("  " + b + "  not-started"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("blocking at the last pass: pid"), std::string::npos) << r.out;

    // As a lone apply: the state is kept (patching), and revert takes it out.
    CommandResult status = hvpatch({"status", a, "--json"});
    json s = parse(status);
    ASSERT_EQ(s["patches"].size(), 1u) << s.dump(2);
    EXPECT_EQ(s["patches"][0]["phase"], "patching");
    CommandResult reverted = hvpatch({"revert", a, "livepatch_sleeper", "--json"});
    EXPECT_EQ(reverted.exit_code, 0) << reverted.describe();
    EXPECT_TRUE(parse(hvpatch({"status", a, "--json"}))["patches"].empty());
    // b was never started: nothing recorded for it, nothing in its audit trail.
    EXPECT_TRUE(parse(hvpatch({"status", b, "--json"}))["patches"].empty());
    for (const auto& rec : read_audit_log(audit_log())) {
        if (rec.value("operation", "") == "apply" && rec["patch"].value("name", "") == "livepatch_sleeper") {
            EXPECT_NE(rec["vm"].value("target", ""), b) << rec.dump();
        }
    }
}

TEST_F(FleetTest, AChildKilledInItsTransitionDoesNotTouchTheOthers) {
    const std::string a = guest(0).target(), b = guest(1).target();
    // Sleepers hold both transitions up until they are woken after 2 s: time
    // to kill a's child while both are in their transitions.
    CommandOptions options;
    options.timeout = 120s;
    RunningCommand fleet(hvpatch_argv({"fleet", "apply", example_patch_ko(Example::Sleeper, guest(0).release()), a, b,
                                       "--parallel", "2", "--signal-after", "2"}),
                         options);
    ASSERT_TRUE(fleet.wait_for_output(a + ": patching pass", 90s, true)) << fleet.err();
    const pid_t child = child_with(fleet.pid(), " apply " + a + " ");
    ASSERT_GT(child, 0) << "no hvpatch apply child for " << a;
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    CommandResult r = fleet.wait();
    EXPECT_EQ(r.exit_code, kExitPartial) << r.describe();
    EXPECT_NE(r.out.find("  " + a + "  failed"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("killed by signal 9"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("see hvpatch status " + a), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("  " + b + "  applied"), std::string::npos) << r.out;
    json sb = parse(hvpatch({"status", b, "--json"}));
    ASSERT_EQ(sb["patches"].size(), 1u) << sb.dump(2);
    EXPECT_EQ(sb["patches"][0]["phase"], "applied");
    // a is where the kill left it (its state file says so); revert takes
    // over, then both are clean again.
    json sa = parse(hvpatch({"status", a, "--json"}));
    ASSERT_EQ(sa["patches"].size(), 1u) << sa.dump(2);
    EXPECT_NE(sa["patches"][0]["phase"], "applied");
    CommandResult back = hvpatch({"fleet", "revert", "livepatch_sleeper", a, b, "--parallel", "2", "--signal-after", "2", "--json"});
    EXPECT_EQ(back.exit_code, 0) << back.describe();
    for (const auto& t : {a, b}) EXPECT_TRUE(parse(hvpatch({"status", t, "--json"}))["patches"].empty()) << t;
}

}  // namespace
}  // namespace hvpatch::test
