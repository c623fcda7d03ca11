// The kernel's own livepatch selftests (tools/testing/selftests/livepatch:
// test-livepatch.sh, test-callbacks.sh, test-state.sh)
// in Debian's linux-source-6.1), ported to hvpatch on a real guest.
//
// The modules are the kernel's lib/livepatch/test_klp_*.c, built against
// the guest's headers by tests/integration/patches/klp-selftests/build
// (variants with a module parameter set statically where the selftest
// passes one that hvpatch cannot: replace=1, pre_patch_ret=-19). Where a
// script loads a livepatch, `hvpatch apply` stands; where it disables one,
// `hvpatch revert` (which also frees it: the script's later rmmod of the
// livepatch has no counterpart). Target modules are insmod'ed in the guest
// as the scripts do. Each case logs its steps to the guest's /dev/kmsg as
// the scripts do ("% hvpatch apply NAME", "% insmod NAME", ...) and
// compares the guest's kernel log with the script's expected lines, filtered
// as its check_result() filters them (lines with "livepatch:" or
// "test_klp", without the taint notices), minus what only the guest's own
// livepatch core prints ("livepatch: ..." lines: under hvpatch the core
// does nothing; any such line fails the comparison) and minus hvpatch's own
// "hvpatch: " lines.
//
// One deviation, for every case with test_klp_callbacks_demo: its
// test_klp_callbacks_busy object patches a function of that module, and
// hvpatch refuses a patch for a module that is not loaded (the guest's core
// would apply it when the module loads; hvpatch does not follow module
// loads yet). So test_klp_callbacks_busy (block_transition=N) is loaded for
// the whole suite, and its object's callbacks appear where the script shows
// none. The module_coming/module_going cases of test-callbacks.sh, which
// test exactly that, are not ported.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "patch/livepatch_module.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"
#include "support/test_modules.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
using Lines = std::vector<std::string>;

constexpr const char* kLivepatch = "test_klp_livepatch";
constexpr const char* kReplace = "test_klp_atomic_replace";
constexpr const char* kDemo = "test_klp_callbacks_demo";
constexpr const char* kDemo2 = "test_klp_callbacks_demo2";
constexpr const char* kTarget = "test_klp_callbacks_mod";
constexpr const char* kBusy = "test_klp_callbacks_busy";
constexpr const char* kLive = "[MODULE_STATE_LIVE] Normal state";

// "<patch>: <callback>_callback: vmlinux" / "... <module> -> <state>".
std::string callback_line(const std::string& patch, const std::string& callback, const std::string& object = "") {
    return patch + ": " + callback + "_callback: " + (object.empty() ? "vmlinux" : object + " -> " + kLive);
}

class KlpSelftestsTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        release_ = test_guest_release();
        char work[] = "/tmp/hvpatch-klp-selftests-XXXXXX";
        if (!mkdtemp(work)) throw std::runtime_error("mkdtemp failed");
        build_dir_ = work;
        CommandOptions build_options;
        build_options.timeout = 600s;
        // kbuild of 16 modules (~30 s here) while the guest boots.
        auto build = std::make_unique<RunningCommand>(
            std::vector<std::string>{source_dir() + "/tests/integration/patches/klp-selftests/build", build_dir_,
                                     release_},
            build_options);
        guest_ = TestGuest::boot().release();
        modules_build_ = build->wait();
        if (!guest_ || modules_build_.exit_code != 0) return;
        for (const char* target : {kTarget, kBusy})
            guest_->put_file(std::string("/tmp/") + target + ".ko", read_host_file(ko("lib", target)));
        guest_->run_ok(std::string("insmod /tmp/") + kBusy + ".ko block_transition=N");
        original_cmdline_ = guest_->run_ok("cat /proc/cmdline");
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        std::error_code ignored;
        if (!build_dir_.empty()) fs::remove_all(build_dir_, ignored);
    }

    void SetUp() override {
        ASSERT_NE(guest_, nullptr) << "the test guest did not boot";
        ASSERT_EQ(modules_build_.exit_code, 0) << "building the selftest modules: " << modules_build_.describe();
        char work[] = "/tmp/hvpatch-klp-selftests-state-XXXXXX";
        ASSERT_NE(mkdtemp(work), nullptr);
        dir_ = work;
        // functions.sh start_test(): what the log held before is not compared.
        guest_->run_ok("dmesg -c > /dev/null");
    }
    void TearDown() override {
        for (int round = 0; round < 3; ++round) {
            json st = status();
            if (!st.contains("patches") || st["patches"].empty()) break;
            for (auto it = st["patches"].rbegin(); it != st["patches"].rend(); ++it)
                hvpatch({"revert", guest_->target(), (*it)["name"].get<std::string>()});
        }
        guest_->run(std::string("rmmod ") + kTarget + " 2>/dev/null");
        std::error_code ignored;
        if (!dir_.empty()) fs::remove_all(dir_, ignored);
    }

    static std::string ko(const std::string& variant, const std::string& name) {
        return build_dir_ + "/" + variant + "/" + name + ".ko";
    }
    CommandResult hvpatch(std::vector<std::string> args) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", dir_ + "/state", "--audit-log",
                                         dir_ + "/audit.jsonl"};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv, 180s);
    }
    json status() {
        CommandResult r = hvpatch({"status", guest_->target(), "--json"});
        return json::parse(r.out, nullptr, false);
    }
    // functions.sh log().
    void log(const std::string& line) { guest_->run_ok("echo '" + line + "' > /dev/kmsg"); }
    void apply(const std::string& variant, const std::string& name) {
        log("% hvpatch apply " + name);
        CommandResult r = hvpatch({"apply", guest_->target(), ko(variant, name), "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
    }
    void revert(const std::string& name) {
        log("% hvpatch revert " + name);
        CommandResult r = hvpatch({"revert", guest_->target(), name, "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
    }
    void insmod(const std::string& name) {
        log("% insmod " + name);
        guest_->run_ok("insmod /tmp/" + name + ".ko");
    }
    void rmmod(const std::string& name) {
        log("% rmmod " + name);
        guest_->run_ok("rmmod " + name);
    }
    // functions.sh check_result(), with the filter of the header comment.
    void check_result(const Lines& expected) {
        std::istringstream in(guest_->run_ok("dmesg"));
        Lines result;
        for (std::string line; std::getline(in, line);) {
            if (auto close = line.find("] "); line.rfind("[", 0) == 0 && close != std::string::npos)
                line = line.substr(close + 2);
            const bool wanted = line.find("livepatch:") != std::string::npos || line.find("test_klp") != std::string::npos;
            const bool taint = line.find("tainting kernel") != std::string::npos || line.find("taints kernel") != std::string::npos;
            if (wanted && !taint && line.rfind("hvpatch: ", 0) != 0) result.push_back(line);
        }
        std::string want, got;
        for (const auto& l : expected) want += l + "\n";
        for (const auto& l : result) got += l + "\n";
        EXPECT_EQ(got, want);
    }
    // Polls the guest's kernel log for a line containing `text`.
    bool wait_for_log(const std::string& text, std::chrono::seconds bound) {
        const auto deadline = std::chrono::steady_clock::now() + bound;
        while (std::chrono::steady_clock::now() < deadline) {
            if (guest_->run("dmesg | grep -qF -e '" + text + "'").status == 0) return true;
            std::this_thread::sleep_for(500ms);
        }
        ADD_FAILURE() << "no line with '" << text << "' in the guest's kernel log within " << bound.count() << " s";
        return false;
    }
    // The guest's kernel log lines of hvpatch since the test started.
    Lines hvpatch_lines() {
        std::istringstream in(guest_->run_ok("dmesg"));
        Lines out;
        for (std::string line; std::getline(in, line);) {
            if (auto close = line.find("] "); line.rfind("[", 0) == 0 && close != std::string::npos)
                line = line.substr(close + 2);
            if (line.rfind("hvpatch: ", 0) == 0) out.push_back(line);
        }
        return out;
    }
    static std::string sha256_of_file(const std::string& path) {
        const std::string bytes = read_host_file(path);
        return sha256_hex(std::as_bytes(std::span(bytes)));
    }
    // `patch`'s callback lines for the objects loaded in this suite
    // (vmlinux, the target module if `with_target`, test_klp_callbacks_busy).
    static Lines callbacks(const std::string& patch, const std::string& callback, bool with_target = false) {
        Lines out = {callback_line(patch, callback)};
        if (with_target) out.push_back(callback_line(patch, callback, kTarget));
        out.push_back(callback_line(patch, callback, kBusy));
        return out;
    }
    static Lines join(std::initializer_list<Lines> parts) {
        Lines out;
        for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
        return out;
    }

    static TestGuest* guest_;
    static std::string release_, build_dir_, original_cmdline_;
    static CommandResult modules_build_;
    std::string dir_;
};

TestGuest* KlpSelftestsTest::guest_ = nullptr;
std::string KlpSelftestsTest::release_, KlpSelftestsTest::build_dir_, KlpSelftestsTest::original_cmdline_;
CommandResult KlpSelftestsTest::modules_build_;

// --- test-livepatch.sh -------------------------------------------------------

TEST_F(KlpSelftestsTest, LivepatchBasicFunctionPatching) {
    apply("lib", kLivepatch);
    EXPECT_EQ(guest_->run_ok("cat /proc/cmdline"), std::string(kLivepatch) + ": this has been live patched\n");
    revert(kLivepatch);
    EXPECT_EQ(guest_->run_ok("cat /proc/cmdline"), original_cmdline_);
    check_result({"% hvpatch apply test_klp_livepatch", "% hvpatch revert test_klp_livepatch"});
    // The guest's log also says what the host did (hvpatch's own lines,
    // where the guest's core would print its "livepatch: ..." ones).
    const std::string sha = sha256_of_file(ko("lib", kLivepatch));
    EXPECT_EQ(hvpatch_lines(), (Lines{"hvpatch: enabling patch 'test_klp_livepatch' (sha256 " + sha + ") from the host",
                                      "hvpatch: 'test_klp_livepatch': patching complete",
                                      "hvpatch: disabling patch 'test_klp_livepatch' (sha256 " + sha + ") from the host",
                                      "hvpatch: 'test_klp_livepatch': unpatching complete"}));
}

TEST_F(KlpSelftestsTest, LivepatchMultipleLivepatches) {
    const std::string grep = "grep 'live patched' /proc/cmdline > /dev/kmsg; grep 'live patched' /proc/meminfo > /dev/kmsg; true";
    apply("lib", kLivepatch);
    guest_->run_ok(grep);
    apply("lib", kReplace);  // replace=0
    guest_->run_ok(grep);
    revert(kReplace);
    guest_->run_ok(grep);
    revert(kLivepatch);
    guest_->run_ok(grep);
    check_result({"% hvpatch apply test_klp_livepatch", "test_klp_livepatch: this has been live patched",
                  "% hvpatch apply test_klp_atomic_replace", "test_klp_livepatch: this has been live patched",
                  "test_klp_atomic_replace: this has been live patched", "% hvpatch revert test_klp_atomic_replace",
                  "test_klp_livepatch: this has been live patched", "% hvpatch revert test_klp_livepatch"});
}

TEST_F(KlpSelftestsTest, LivepatchAtomicReplaceLivepatch) {
    const std::string grep = "grep 'live patched' /proc/cmdline > /dev/kmsg; grep 'live patched' /proc/meminfo > /dev/kmsg; true";
    apply("lib", kLivepatch);
    guest_->run_ok(grep);
    apply("replace", kReplace);  // replace=1
    guest_->run_ok(grep);
    // The script's `rmmod test_klp_livepatch`: the replaced patch is gone already.
    EXPECT_EQ(hvpatch({"revert", guest_->target(), kLivepatch}).exit_code, 2) << "the replaced patch is gone";
    guest_->run_ok(grep);
    revert(kReplace);
    guest_->run_ok(grep);
    check_result({"% hvpatch apply test_klp_livepatch", "test_klp_livepatch: this has been live patched",
                  "% hvpatch apply test_klp_atomic_replace", "test_klp_atomic_replace: this has been live patched",
                  "test_klp_atomic_replace: this has been live patched", "% hvpatch revert test_klp_atomic_replace"});
}

// --- test-callbacks.sh -------------------------------------------------------

TEST_F(KlpSelftestsTest, CallbacksTargetModuleBeforeLivepatch) {
    insmod(kTarget);
    apply("lib", kDemo);
    revert(kDemo);
    rmmod(kTarget);
    check_result(join({{"% insmod test_klp_callbacks_mod", "test_klp_callbacks_mod: test_klp_callbacks_mod_init",
                        "% hvpatch apply test_klp_callbacks_demo"},
                       callbacks(kDemo, "pre_patch", true),
                       callbacks(kDemo, "post_patch", true),
                       {"% hvpatch revert test_klp_callbacks_demo"},
                       callbacks(kDemo, "pre_unpatch", true),
                       callbacks(kDemo, "post_unpatch", true),
                       {"% rmmod test_klp_callbacks_mod", "test_klp_callbacks_mod: test_klp_callbacks_mod_exit"}}));
}

TEST_F(KlpSelftestsTest, CallbacksPrePatchCallbackENODEV) {
    insmod(kTarget);
    log("% hvpatch apply test_klp_callbacks_demo");
    CommandResult r = hvpatch({"apply", guest_->target(), ko("enodev", kDemo), "--json"});
    EXPECT_EQ(r.exit_code, 4) << r.describe();
    EXPECT_NE(r.out.find("pre_patch callback of klp_object 'vmlinux' returned -19 (ENODEV)"), std::string::npos)
        << r.out;
    EXPECT_TRUE(status().value("patches", json::array()).empty()) << "nothing stays applied";
    rmmod(kTarget);
    // The core's "pre-patch callback failed" and "failed to enable" lines are its own.
    check_result({"% insmod test_klp_callbacks_mod", "test_klp_callbacks_mod: test_klp_callbacks_mod_init",
                  "% hvpatch apply test_klp_callbacks_demo", callback_line(kDemo, "pre_patch"),
                  "% rmmod test_klp_callbacks_mod", "test_klp_callbacks_mod: test_klp_callbacks_mod_exit"});
}

TEST_F(KlpSelftestsTest, CallbacksMultipleLivepatches) {
    apply("lib", kDemo);
    apply("lib", kDemo2);
    revert(kDemo2);
    revert(kDemo);
    check_result(join({{"% hvpatch apply test_klp_callbacks_demo"},
                       callbacks(kDemo, "pre_patch"),
                       callbacks(kDemo, "post_patch"),
                       {"% hvpatch apply test_klp_callbacks_demo2", callback_line(kDemo2, "pre_patch"),
                        callback_line(kDemo2, "post_patch"), "% hvpatch revert test_klp_callbacks_demo2",
                        callback_line(kDemo2, "pre_unpatch"), callback_line(kDemo2, "post_unpatch"),
                        "% hvpatch revert test_klp_callbacks_demo"},
                       callbacks(kDemo, "pre_unpatch"),
                       callbacks(kDemo, "post_unpatch")}));
}

TEST_F(KlpSelftestsTest, CallbacksAtomicReplace) {
    apply("lib", kDemo);
    apply("replace", kDemo2);
    // The replaced patch's unpatch callbacks never run.
    revert(kDemo2);
    check_result(join({{"% hvpatch apply test_klp_callbacks_demo"},
                       callbacks(kDemo, "pre_patch"),
                       callbacks(kDemo, "post_patch"),
                       {"% hvpatch apply test_klp_callbacks_demo2", callback_line(kDemo2, "pre_patch"),
                        callback_line(kDemo2, "post_patch"), "% hvpatch revert test_klp_callbacks_demo2",
                        callback_line(kDemo2, "pre_unpatch"), callback_line(kDemo2, "post_unpatch")}}));
}

// --- test-state.sh -----------------------------------------------------------
// test_klp_state (state 1, version 1) sets console_loglevel to 15 and keeps
// the old value in the state's data; test_klp_state2/3 (version 2) take the
// change over from a previous patch through klp_get_prev_state().

constexpr const char* kState = "test_klp_state";
constexpr const char* kState2 = "test_klp_state2";
constexpr const char* kState3 = "test_klp_state3";

Lines state_patch_lines(const std::string& patch, bool taken_over) {
    return {patch + ": pre_patch_callback: vmlinux",
            patch + (taken_over ? ": allocate_loglevel_state: space to store console_loglevel already allocated"
                                : ": allocate_loglevel_state: allocating space to store console_loglevel"),
            patch + ": post_patch_callback: vmlinux",
            patch + (taken_over ? ": fix_console_loglevel: taking over the console_loglevel change"
                                : ": fix_console_loglevel: fixing console_loglevel")};
}
Lines state_unpatch_lines(const std::string& patch) {
    return {patch + ": pre_unpatch_callback: vmlinux", patch + ": restore_console_loglevel: restoring console_loglevel",
            patch + ": post_unpatch_callback: vmlinux",
            patch + ": free_loglevel_state: freeing space for the stored console_loglevel"};
}

TEST_F(KlpSelftestsTest, StateSystemStateModification) {
    const std::string loglevel = guest_->run_ok("cut -f1 /proc/sys/kernel/printk");
    apply("lib", kState);
    EXPECT_EQ(guest_->run_ok("cut -f1 /proc/sys/kernel/printk"), "15\n") << "CONSOLE_LOGLEVEL_MOTORMOUTH";
    revert(kState);
    EXPECT_EQ(guest_->run_ok("cut -f1 /proc/sys/kernel/printk"), loglevel) << "restored from the state's data";
    check_result(join({{"% hvpatch apply test_klp_state"}, state_patch_lines(kState, false),
                       {"% hvpatch revert test_klp_state"}, state_unpatch_lines(kState)}));
}

TEST_F(KlpSelftestsTest, StateTakingOverSystemStateModification) {
    const std::string loglevel = guest_->run_ok("cut -f1 /proc/sys/kernel/printk");
    apply("lib", kState);
    apply("lib", kState2);  // replaces test_klp_state: the script's rmmod of it has no counterpart
    EXPECT_EQ(guest_->run_ok("cut -f1 /proc/sys/kernel/printk"), "15\n");
    revert(kState2);
    EXPECT_EQ(guest_->run_ok("cut -f1 /proc/sys/kernel/printk"), loglevel) << "restored from the data taken over";
    check_result(join({{"% hvpatch apply test_klp_state"}, state_patch_lines(kState, false),
                       {"% hvpatch apply test_klp_state2"}, state_patch_lines(kState2, true),
                       {"% hvpatch revert test_klp_state2"}, state_unpatch_lines(kState2)}));
}

TEST_F(KlpSelftestsTest, StateCompatibleCumulativeLivepatches) {
    apply("lib", kState2);
    apply("lib", kState3);
    apply("lib", kState2);  // replaces test_klp_state3 (the script's rmmods have no counterpart)
    revert(kState2);
    check_result(join({{"% hvpatch apply test_klp_state2"}, state_patch_lines(kState2, false),
                       {"% hvpatch apply test_klp_state3"}, state_patch_lines(kState3, true),
                       {"% hvpatch apply test_klp_state2"}, state_patch_lines(kState2, true),
                       {"% hvpatch revert test_klp_state2"}, state_unpatch_lines(kState2)}));
}

TEST_F(KlpSelftestsTest, StateIncompatibleCumulativeLivepatches) {
    apply("lib", kState2);
    log("% hvpatch apply test_klp_state");
    CommandResult r = hvpatch({"apply", guest_->target(), ko("lib", kState), "--json"});
    EXPECT_EQ(r.exit_code, 4) << r.describe();
    EXPECT_NE(r.out.find("not compatible with the patches on this VM"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("system state 1 in version 1, older than version 2 of patch test_klp_state2"),
              std::string::npos) << r.out;
    CommandResult c = hvpatch({"check", guest_->target(), ko("lib", kState), "--json"});
    EXPECT_EQ(c.exit_code, 4) << c.describe();
    EXPECT_NE(c.out.find("klp_is_patch_compatible"), std::string::npos) << c.out;
    revert(kState2);
    check_result(join({{"% hvpatch apply test_klp_state2"}, state_patch_lines(kState2, false),
                       {"% hvpatch apply test_klp_state", "% hvpatch revert test_klp_state2"},
                       state_unpatch_lines(kState2)}));
}

// --- samples/livepatch: the shadow-variable demo --------------------------------
// livepatch-shadow-mod leaks memory (a dummy allocation every second, each
// expiring after 12 s); livepatch-shadow-fix1 patches its dummy_alloc and
// dummy_free to keep the leaked pointer in a shadow variable and free it;
// livepatch-shadow-fix2, stacked on fix1 (dummy_free is patched by both),
// adds a shadow counter. Steps 1-4 of the sample's header comment, with
// hvpatch apply/revert for insmod/disable of the fixes. (The fixes' module
// exit functions, which free the shadow variables left over, never run
// under hvpatch: what is left of them stays allocated in the guest.)

TEST_F(KlpSelftestsTest, ShadowVariableSamples) {
    constexpr const char* kMod = "livepatch_shadow_mod";
    guest_->put_file("/tmp/livepatch-shadow-mod.ko", read_host_file(ko("samples", "livepatch-shadow-mod")));
    guest_->run_ok("insmod /tmp/livepatch-shadow-mod.ko");
    ASSERT_TRUE(wait_for_log("dummy_alloc: dummy @", 15s));
    // Step 2: fix1. Dummies allocated before it leak (no shadow variable);
    // those allocated under it are freed with their leak.
    apply("samples", "livepatch-shadow-fix1");
    EXPECT_TRUE(wait_for_log("livepatch_shadow_fix1: livepatch_fix1_dummy_alloc: dummy @", 15s));
    EXPECT_TRUE(wait_for_log("livepatch_shadow_fix1: livepatch_fix1_dummy_free: dummy @", 30s));
    EXPECT_TRUE(wait_for_log("livepatch_shadow_fix1: livepatch_fix1_dummy_leak_dtor: dummy @", 30s));
    // Step 3: fix2 on top: its dummy_free runs (the newest of the stack) and
    // reports the counter its dummy_check keeps in a second shadow variable.
    apply("samples", "livepatch-shadow-fix2");
    EXPECT_TRUE(wait_for_log("livepatch_shadow_fix2: livepatch_fix2_dummy_free: dummy @", 30s));
    EXPECT_TRUE(wait_for_log(", check counter = ", 30s));
    // Step 4: unwind, newest first.
    revert("livepatch_shadow_fix2");
    revert("livepatch_shadow_fix1");
    guest_->run_ok(std::string("rmmod ") + kMod);
    json st = status();
    EXPECT_TRUE(st.value("patches", json::array()).empty()) << st.dump();
}

// Last (tests run in the order of this file).
TEST_F(KlpSelftestsTest, ConsoleShowsNoKernelProblem) {
    auto problems = kernel_problem_lines(guest_->console_log());
    std::string text;
    for (const auto& line : problems) text += line + "\n";
    EXPECT_TRUE(problems.empty()) << text;
}

}  // namespace
}  // namespace hvpatch::test
