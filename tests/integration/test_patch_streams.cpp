// Patch streams on a real guest: patches stacked on one function, and
// cumulative (klp_patch.replace) upgrades, with the livepatch core's
// semantics (kernel/livepatch: the per-function func_stack, nop functions
// of an atomic replace).
//
// The modules (tests/integration/patches/livepatch-stream, built with the
// guest's headers while it boots) replace /proc/version's show function,
// and some /proc/cmdline's, with one that prints the module's name: the
// guest itself shows which patch runs. Through the real CLI (--json, a
// private state dir and audit log per test):
//   - stacked patches: the newest runs; reverting the one beneath leaves
//     the newest running and its other functions go back; reverting the
//     top falls back to the one below; `status` shows a covered function
//     as "beneath <top>";
//   - a cumulative upgrade v1 -> v2 -> v3 while a guest loop reads
//     /proc/version without pause: the original never shows in between;
//     v2 (no cmdline function) puts /proc/cmdline back to the original
//     (the core's nop); replaced patches are gone (status, state, audit
//     "replaced" with "freed"); reverting v3 restores the original kernel;
//   - `check` of a replacing patch names what it takes over and restores;
//   - kill -9 of hvpatch in the middle of a replace: status tells the truth,
//     `apply --resume` finishes the replace, or `revert` of the replacing
//     patch puts back the patch it was replacing.
// No kernel problem may show on the guest console.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"
#include "support/test_modules.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

class PatchStreamsTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        release_ = test_guest_release();
        char work[] = "/tmp/hvpatch-streams-build-XXXXXX";
        if (!mkdtemp(work)) throw std::runtime_error("mkdtemp failed");
        build_dir_ = work;
        auto build = start_kbuild("livepatch-stream", build_dir_, release_);  // ~15 s, while the guest boots
        guest_ = TestGuest::boot().release();
        modules_build_ = build->wait();
        if (guest_) {
            original_version_ = guest_->run_ok("cat /proc/version");
            original_cmdline_ = guest_->run_ok("cat /proc/cmdline");
        }
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        std::error_code ignored;
        if (!build_dir_.empty()) fs::remove_all(build_dir_, ignored);
    }

    void SetUp() override {
        ASSERT_NE(guest_, nullptr) << "the test guest did not boot";
        ASSERT_EQ(modules_build_.exit_code, 0) << "building livepatch-stream: " << modules_build_.describe();
        char work[] = "/tmp/hvpatch-streams-XXXXXX";
        ASSERT_NE(mkdtemp(work), nullptr);
        dir_ = work;
        state_dir_ = dir_ + "/state";
        audit_log_ = dir_ + "/audit.jsonl";
    }
    void TearDown() override {
        // Whatever a failed test left applied goes, newest first, so that
        // the next test starts from the original kernel.
        for (int round = 0; round < 4; ++round) {
            auto names = status_patches();
            if (names.empty()) break;
            for (auto it = names.rbegin(); it != names.rend(); ++it) hvpatch({"revert", guest_->target(), *it, "--signal-after", "1"});
        }
        std::error_code ignored;
        if (!dir_.empty()) fs::remove_all(dir_, ignored);
    }

    CommandResult hvpatch(std::vector<std::string> args, std::chrono::milliseconds timeout = 180s) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", state_dir_, "--audit-log", audit_log_};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv, timeout);
    }
    std::string ko(const std::string& name) const { return build_dir_ + "/" + name + ".ko"; }
    json apply_ok(const std::string& name) {
        CommandResult r = hvpatch({"apply", guest_->target(), ko(name), "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        return json::parse(r.out, nullptr, false);
    }
    void revert_ok(const std::string& name) {
        CommandResult r = hvpatch({"revert", guest_->target(), name, "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
    }
    // The patches `hvpatch status --json` lists, in the record's order (oldest first).
    std::vector<std::string> status_patches() {
        json report = status();
        std::vector<std::string> names;
        if (report.contains("patches"))
            for (const auto& p : report.at("patches")) names.push_back(p.at("name"));
        return names;
    }
    json status() {
        CommandResult r = hvpatch({"status", guest_->target(), "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        return json::parse(r.out, nullptr, false);
    }
    // entry_now of `function` in patch `patch` per status --json; "" if absent.
    std::string entry_now(const std::string& patch, const std::string& function) {
        json report = status();
        for (const auto& p : report.value("patches", json::array()))
            if (p.at("name") == patch)
                for (const auto& f : p.at("functions"))
                    if (f.at("name") == function) return f.at("entry_now");
        return "";
    }
    // Leaves stream_v2 killed mid-replace over example 2 (see below).
    void kill_replace_mid_transition();
    std::string version() { return guest_->run_ok("cat /proc/version"); }
    std::string cmdline() { return guest_->run_ok("cat /proc/cmdline"); }
    void expect_original_kernel() {
        EXPECT_EQ(version(), original_version_);
        EXPECT_EQ(cmdline(), original_cmdline_);
        EXPECT_TRUE(status_patches().empty());
    }

    static TestGuest* guest_;
    static std::string release_, build_dir_, original_version_, original_cmdline_;
    static CommandResult modules_build_;
    std::string dir_, state_dir_, audit_log_, sleeper_ko_;
};

TestGuest* PatchStreamsTest::guest_ = nullptr;
std::string PatchStreamsTest::release_, PatchStreamsTest::build_dir_, PatchStreamsTest::original_version_,
    PatchStreamsTest::original_cmdline_;
CommandResult PatchStreamsTest::modules_build_;

TEST_F(PatchStreamsTest, StackedPatchesNewestRunsAndTheOneBeneathRevertsFirst) {
    apply_ok("stack_a");
    EXPECT_EQ(version(), "stack_a\n");
    EXPECT_EQ(cmdline(), "stack_a cmdline\n");
    apply_ok("stack_b");
    EXPECT_EQ(version(), "stack_b\n");
    EXPECT_EQ(cmdline(), "stack_a cmdline\n") << "stack_b does not patch /proc/cmdline";
    EXPECT_EQ(entry_now("stack_a", "version_proc_show"), "beneath stack_b");
    EXPECT_EQ(entry_now("stack_a", "cmdline_proc_show"), "direct");
    EXPECT_EQ(entry_now("stack_b", "version_proc_show"), "direct");
    EXPECT_EQ(status_patches(), (std::vector<std::string>{"stack_a", "stack_b"}));

    // The one beneath goes first: the newest keeps running; what only the
    // one beneath patched goes back to the original.
    revert_ok("stack_a");
    EXPECT_EQ(version(), "stack_b\n");
    EXPECT_EQ(cmdline(), original_cmdline_);
    EXPECT_EQ(status_patches(), (std::vector<std::string>{"stack_b"}));
    revert_ok("stack_b");
    expect_original_kernel();
}

TEST_F(PatchStreamsTest, StackedPatchesRevertingTheTopFallsBackToTheOneBelow) {
    apply_ok("stack_a");
    apply_ok("stack_b");
    revert_ok("stack_b");
    EXPECT_EQ(version(), "stack_a\n");
    EXPECT_EQ(cmdline(), "stack_a cmdline\n");
    EXPECT_EQ(entry_now("stack_a", "version_proc_show"), "direct");
    revert_ok("stack_a");
    expect_original_kernel();
}

TEST_F(PatchStreamsTest, CheckNamesWhatAReplaceTakesOverAndRestores) {
    apply_ok("stream_v1");
    CommandResult c = hvpatch({"check", guest_->target(), ko("stream_v2"), "--json"});
    EXPECT_EQ(c.exit_code, 0) << c.describe();
    json report = json::parse(c.out, nullptr, false);
    EXPECT_EQ(report.value("replace", false), true) << c.out;
    EXPECT_EQ(report.value("replaces", json::array()), json::array({"stream_v1"})) << c.out;
    EXPECT_EQ(report.value("restores", json::array()), json::array({"cmdline_proc_show"})) << c.out;
    CommandResult text = hvpatch({"check", guest_->target(), ko("stream_v2")});
    EXPECT_NE(text.out.find("stream_v1"), std::string::npos) << text.out;
    EXPECT_NE(text.out.find("cmdline_proc_show"), std::string::npos) << text.out;
    EXPECT_EQ(version(), "stream_v1\n") << "check changed the guest";
}

TEST_F(PatchStreamsTest, CumulativeUpgradeUnderLoadNeverRunsTheOriginal) {
    apply_ok("stream_v1");
    EXPECT_EQ(version(), "stream_v1\n");
    EXPECT_EQ(cmdline(), "stream_v1 cmdline\n");
    // A reader of /proc/version without pause, for the whole upgrade.
    guest_->run_ok("setsid sh -c 'while :; do cat /proc/version; done' > /tmp/versions 2>&1 < /dev/null &");

    json v2 = apply_ok("stream_v2");
    EXPECT_EQ(v2.value("replaced", json::array()), json::array({"stream_v1"})) << v2.dump();
    EXPECT_EQ(version(), "stream_v2\n");
    EXPECT_EQ(cmdline(), original_cmdline_) << "v2 has no cmdline function: the replace restores the original";
    EXPECT_EQ(status_patches(), (std::vector<std::string>{"stream_v2"}));
    auto records = read_audit_log(audit_log_);
    ASSERT_FALSE(records.empty());
    EXPECT_EQ(records.back().value("operation", ""), "apply");
    EXPECT_EQ(records.back().value("/replaced/0/name"_json_pointer, ""), "stream_v1") << records.back().dump();
    EXPECT_EQ(records.back().value("/replaced/0/freed"_json_pointer, false), true) << records.back().dump();

    json v3 = apply_ok("stream_v3");
    EXPECT_EQ(v3.value("replaced", json::array()), json::array({"stream_v2"})) << v3.dump();
    EXPECT_EQ(version(), "stream_v3\n");
    EXPECT_EQ(cmdline(), "stream_v3 cmdline\n");
    guest_->run_ok("pkill -f 'cat /proc/version; done' || true; sleep 1");
    std::string seen = guest_->run_ok("sort /tmp/versions | uniq -c");
    std::cout << "[ reader   ] /proc/version during the upgrade:\n" << seen;
    EXPECT_EQ(seen.find("Linux version"), std::string::npos) << "the original ran during the upgrade:\n" << seen;
    EXPECT_NE(seen.find("stream_v1"), std::string::npos) << seen;
    EXPECT_NE(seen.find("stream_v2"), std::string::npos) << seen;
    EXPECT_NE(seen.find("stream_v3"), std::string::npos) << seen;

    revert_ok("stream_v3");
    expect_original_kernel();
    AuditVerifyResult verified = verify_audit_log(audit_log_);
    EXPECT_TRUE(verified.ok);
}

TEST_F(PatchStreamsTest, ReplaceOverStackedPatchesThenStackOnTheReplace) {
    apply_ok("stack_a");
    apply_ok("stack_b");
    json v2 = apply_ok("stream_v2");
    EXPECT_EQ(v2.value("replaced", json::array()), json::array({"stack_a", "stack_b"})) << v2.dump();
    EXPECT_EQ(version(), "stream_v2\n");
    EXPECT_EQ(cmdline(), original_cmdline_);
    EXPECT_EQ(status_patches(), (std::vector<std::string>{"stream_v2"}));
    // A non-cumulative patch goes on top of a cumulative one as on any other.
    apply_ok("stack_b");
    EXPECT_EQ(version(), "stack_b\n");
    revert_ok("stream_v2");
    EXPECT_EQ(version(), "stack_b\n");
    revert_ok("stack_b");
    expect_original_kernel();
}

// A replace that cannot finish on its own: v1 is example 2 (do_nanosleep),
// applied with the sleep workloads woken into its copy; stream_v2 does not
// patch do_nanosleep, so its nop sends the sleepers back to the original,
// and they block it (not woken: --signal-after 600) in v1's copy. Killed
// with SIGKILL mid-transition, then `finish` (apply --resume or revert).
void PatchStreamsTest::kill_replace_mid_transition() {
    sleeper_ko_ = example_patch_ko(Example::Sleeper, guest_->release());
    CommandResult v1 = hvpatch({"apply", guest_->target(), sleeper_ko_, "--signal-after", "1", "--json"});
    ASSERT_EQ(v1.exit_code, 0) << v1.describe();
    std::string stack = fresh_sleeper_stack(*guest_);
    ASSERT_EQ(to_string(classify_hvpatch_sleeper(stack)), "hvpatch-patched") << stack;
    CommandOptions options;
    options.timeout = 300s;
    std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", state_dir_, "--audit-log", audit_log_,
                                     "apply", guest_->target(), ko("stream_v2"), "--signal-after", "600",
                                     "--timeout", "600"};
    RunningCommand replace(argv, options);
    bool passes = replace.wait_for_output("patching: pass 2,", 60s, /*in_stderr=*/true);
    ASSERT_TRUE(passes) << "the replace never reached its second pass; stderr:\n" << replace.err();
    ASSERT_EQ(::kill(replace.pid(), SIGKILL), 0);
    CommandResult killed = replace.wait();
    ASSERT_EQ(killed.term_signal, SIGKILL) << killed.describe();
    // What the kill left: the replace mid-transition, the sleeper still applied.
    json st = status();
    ASSERT_EQ(st.value("patches", json::array()).size(), 2u) << st.dump();
    EXPECT_EQ(st["patches"][0].value("name", ""), "livepatch_sleeper");
    EXPECT_EQ(st["patches"][0].value("phase", ""), "applied");
    EXPECT_EQ(st["patches"][1].value("name", ""), "stream_v2");
    EXPECT_EQ(st["patches"][1].value("phase", ""), "patching");
    EXPECT_TRUE(st["patches"][1].value("consistent", false)) << st.dump();
    EXPECT_GE(st["tasks"].value("pending", 0), 1) << "the sleepers block the replace";
}

TEST_F(PatchStreamsTest, KillNineMidReplaceThenResume) {
    kill_replace_mid_transition();
    if (HasFatalFailure()) return;
    // --signal-after 1: the sleepers are woken, restart in the original.
    CommandResult resumed = hvpatch({"apply", guest_->target(), ko("stream_v2"), "--resume", "--signal-after", "1",
                                     "--json"});
    ASSERT_EQ(resumed.exit_code, 0) << resumed.describe();
    json report = json::parse(resumed.out, nullptr, false);
    EXPECT_EQ(report.value("replaced", json::array()), json::array({"livepatch_sleeper"})) << resumed.out;
    EXPECT_EQ(status_patches(), std::vector<std::string>{"stream_v2"});
    EXPECT_EQ(version(), "stream_v2\n");
    std::string stack = fresh_sleeper_stack(*guest_);
    EXPECT_EQ(to_string(classify_hvpatch_sleeper(stack)), "original") << stack;
    revert_ok("stream_v2");
    expect_original_kernel();
}

TEST_F(PatchStreamsTest, KillNineMidReplaceThenRevertKeepsWhatItWasReplacing) {
    kill_replace_mid_transition();
    if (HasFatalFailure()) return;
    CommandResult reverted = hvpatch({"revert", guest_->target(), "stream_v2", "--signal-after", "1", "--json"});
    ASSERT_EQ(reverted.exit_code, 0) << reverted.describe();
    EXPECT_EQ(status_patches(), std::vector<std::string>{"livepatch_sleeper"});
    EXPECT_EQ(version(), original_version_);
    std::string stack = fresh_sleeper_stack(*guest_);
    EXPECT_EQ(to_string(classify_hvpatch_sleeper(stack)), "hvpatch-patched") << "v1 runs again:\n" << stack;
    CommandResult v1 = hvpatch({"revert", guest_->target(), "livepatch_sleeper", "--signal-after", "1", "--json"});
    ASSERT_EQ(v1.exit_code, 0) << v1.describe();
    expect_original_kernel();
}

// Last (tests run in the order of this file).
TEST_F(PatchStreamsTest, ConsoleShowsNoKernelProblem) {
    auto problems = kernel_problem_lines(guest_->console_log());
    std::string text;
    for (const auto& line : problems) text += line + "\n";
    EXPECT_TRUE(problems.empty()) << text;
}

}  // namespace
}  // namespace hvpatch::test
