// The three example livepatch modules (examples/patches/) proven with the
// test guest's OWN livepatch core: each is copied into one booted guest,
// insmod-ed, its transition waited for and timed, its patched behaviour
// checked from inside the guest, then disabled, removed, and the original
// behaviour checked again. This is the known-good baseline for hvpatch's
// host-side loader (same modules, same oracles: support/example_patches.h).
//
// Needs linux-headers-<release> of the test guest (scripts/install-deps);
// without them the tests FAIL with the install hint (never skip). The
// kernel is tainted by an out-of-tree, unsigned livepatch module: expected.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <set>
#include <string>
#include <thread>

#include "hvpatch/error.h"
#include "support/example_patches.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string join(const std::vector<GuestTaskPatchState>& tasks) {
    std::string text;
    for (const auto& t : tasks) text += (text.empty() ? "" : ", ") + std::to_string(t.pid) + " " + t.comm;
    return text;
}

// Enough for the guest's fake signals (after 15 one-second retries) on a
// loaded TCG host.
constexpr auto kTransitionTimeout = 120s;

class ExamplePatchesTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot().release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }
    // A failed test must not leave its patch (or its transition) behind for
    // the next one: the guest runs one transition at a time.
    void TearDown() override {
        if (!guest_) return;
        for (const auto& example : example_patches()) {
            try {
                if (guest_livepatch_transition(*guest_, example.module) == "gone") {
                    guest_->run("rmmod " + std::string(example.module) + " 2>/dev/null");
                    continue;
                }
                wait_guest_livepatch_transition(*guest_, example.module, kTransitionTimeout);
                guest_livepatch_disable(*guest_, example.module);
                wait_guest_livepatch_transition(*guest_, example.module, kTransitionTimeout);
                guest_rmmod(*guest_, example.module);
            } catch (const std::exception& e) {
                ADD_FAILURE() << "cleaning up " << example.module << ": " << e.what();
            }
        }
        guest_->run("proto-check stop >/dev/null 2>&1");
    }

    // insmod, wait for the transition, print how long it took. Returns the
    // seconds seen from the host (insmod sent -> transition 0 seen).
    static double apply(const ExamplePatch& example, const std::string& guest_ko) {
        auto start = Clock::now();
        guest_insmod(*guest_, guest_ko);
        std::string state = wait_guest_livepatch_transition(*guest_, example.module, kTransitionTimeout);
        double host = seconds_since(start);
        EXPECT_EQ(state, "0") << example.module << " vanished instead of finishing its transition";
        EXPECT_EQ(guest_->run_ok("cat /sys/kernel/livepatch/" + std::string(example.module) + "/enabled"), "1\n");
        report(example, "patching", host, guest_transition_seconds(*guest_, example.module, true));
        return host;
    }

    // Disable, wait until the patch is gone, rmmod.
    static double revert(const ExamplePatch& example) {
        auto start = Clock::now();
        guest_livepatch_disable(*guest_, example.module);
        std::string state = wait_guest_livepatch_transition(*guest_, example.module, kTransitionTimeout);
        double host = seconds_since(start);
        // After the unpatching transition the core frees the patch and its
        // sysfs directory, from a work item: "0" can show in between.
        EXPECT_TRUE(state == "0" || state == "gone") << state;
        wait_guest_livepatch_gone(*guest_, example.module, kTransitionTimeout);
        report(example, "unpatching", host, guest_transition_seconds(*guest_, example.module, false));
        guest_rmmod(*guest_, example.module);
        EXPECT_EQ(guest_->run("grep -w " + std::string(example.module) + " /proc/modules").status, 1)
            << example.module << " is still loaded";
        return host;
    }

    static void report(const ExamplePatch& example, const char* what, double host, double guest) {
        char line[256];
        std::snprintf(line, sizeof line,
                      "[ info     ] %s: %s transition %.2f s in the guest's log, %.2f s from the command to "
                      "transition done seen through the command channel\n",
                      std::string(example.module).c_str(), what, guest, host);
        std::cout << line << std::flush;
        EXPECT_GE(guest, 0.0) << "the guest's log has no complete " << what << " transition of " << example.module;
    }

    static TestGuest* guest_;
};
TestGuest* ExamplePatchesTest::guest_ = nullptr;

TEST_F(ExamplePatchesTest, PutFileCopiesBytesExactly) {
    // Every byte value, a size that is no multiple of 3, more than one chunk.
    std::string bytes;
    for (std::size_t i = 0; i < 50 * 1024 + 1; ++i) bytes += static_cast<char>((i * 7 + i / 256) & 0xff);
    guest_->put_file("/tmp/put-file-test", bytes);
    EXPECT_EQ(guest_->run_ok("wc -c < /tmp/put-file-test"), std::to_string(bytes.size()) + "\n");
    EXPECT_EQ(guest_->run_ok("od -An -tx1 -N4 -j256 /tmp/put-file-test"), " 01 08 0f 16\n");
    guest_->put_file("/tmp/put-file-test", "");
    EXPECT_EQ(guest_->run_ok("wc -c < /tmp/put-file-test"), "0\n");
    guest_->put_file("/tmp/put-file-test", "ab");
    EXPECT_EQ(guest_->run_ok("cat /tmp/put-file-test"), "ab");
    EXPECT_THROW(guest_->put_file("tmp/relative", "x"), Error);
    EXPECT_THROW(guest_->put_file("/tmp/it's", "x"), Error);
    guest_->run_ok("rm -f /tmp/put-file-test");
}

TEST_F(ExamplePatchesTest, Example1CmdlineWithTheGuestsLivepatch) {
    const ExamplePatch& example = example_patch(Example::Cmdline);
    std::string ko = put_example_patch(*guest_, example.id);
    std::string original = guest_->run_ok(std::string(kCmdlineOracle));
    ASSERT_NE(original, kCmdlinePatchedOutput);
    EXPECT_NE(original.find("console=ttyS0"), std::string::npos) << original;

    apply(example, ko);
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);

    revert(example);
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original);
}

TEST_F(ExamplePatchesTest, Example4AlternativesWithTheGuestsLivepatch) {
    const ExamplePatch& example = example_patch(Example::Alternatives);
    std::string ko = put_example_patch(*guest_, example.id);
    std::string original = guest_->run_ok(std::string(kVersionOracle));
    ASSERT_EQ(original.rfind("Linux version ", 0), 0u) << original;

    apply(example, ko);
    EXPECT_EQ(guest_->run_ok(std::string(kVersionOracle)), kVersionPatchedOutput);

    revert(example);
    EXPECT_EQ(guest_->run_ok(std::string(kVersionOracle)), original);
}

TEST_F(ExamplePatchesTest, Example2SleeperWaitsForTheSleepersWithTheGuestsLivepatch) {
    const ExamplePatch& example = example_patch(Example::Sleeper);
    std::string ko = put_example_patch(*guest_, example.id);
    std::vector<int> sleepers = sleep_workload_pids(*guest_);
    ASSERT_EQ(sleepers.size(), 3u) << "guest/init starts three `sleep 1000000`";
    for (int pid : sleepers) {
        std::string stack = guest_task_stack(*guest_, pid);
        EXPECT_EQ(sleeper_version(stack), SleeperVersion::Original) << stack;
        EXPECT_EQ(stack.rfind("[<0>] hrtimer_nanosleep+", 0), 0u) << "do_nanosleep (sched text) is not shown:\n"
                                                                  << stack;
    }
    EXPECT_EQ(fresh_sleeper_version(*guest_), SleeperVersion::Original);

    // The transition must wait for the sleepers: while it runs they, and
    // only tasks like them, are still unpatched (0).
    auto start = Clock::now();
    guest_insmod(*guest_, ko);
    ASSERT_EQ(guest_livepatch_transition(*guest_, example.module), "1")
        << "the transition ended at once: nobody was asleep in do_nanosleep?";
    auto unpatched = guest_tasks_in_patch_state(*guest_, 0);
    std::cout << "[ info     ] still unpatched during the transition: " << join(unpatched) << "\n";
    for (int pid : sleepers)
        EXPECT_TRUE(std::any_of(unpatched.begin(), unpatched.end(), [&](const auto& t) { return t.pid == pid; }))
            << "sleeper " << pid << " is not among the unpatched tasks: " << join(unpatched);
    // Other tasks may be caught between a fork and their exit to user mode;
    // the only sleepers left behind are the workloads.
    std::set<int> unpatched_sleeps;
    for (const auto& task : unpatched)
        if (task.comm == "sleep") unpatched_sleeps.insert(task.pid);
    EXPECT_EQ(unpatched_sleeps, std::set<int>(sleepers.begin(), sleepers.end()));

    std::string state = wait_guest_livepatch_transition(*guest_, example.module, kTransitionTimeout);
    double host = seconds_since(start);
    EXPECT_EQ(state, "0");
    double guest = guest_transition_seconds(*guest_, example.module, true);
    report(example, "patching", host, guest);
    // The guest woke them with its fake signal after ~15 s of retries.
    EXPECT_NE(guest_->run_ok("dmesg | grep -c 'livepatch: signaling remaining tasks' || true"), "0\n");
    EXPECT_GT(guest, 5.0) << "the transition did not wait for the sleepers";

    // The same sleepers, restarted into the new copy, still asleep.
    EXPECT_EQ(sleep_workload_pids(*guest_), sleepers);
    for (int pid : sleepers) {
        std::string stack = guest_task_stack(*guest_, pid);
        EXPECT_EQ(sleeper_version(stack), SleeperVersion::Patched) << stack;
        EXPECT_EQ(guest_->run_ok("cat /proc/" + std::to_string(pid) + "/wchan"), std::string(kSleeperPatchedFrame));
    }
    std::string stack;
    EXPECT_EQ(fresh_sleeper_version(*guest_, &stack), SleeperVersion::Patched) << stack;
    std::cout << "[ info     ] a new sleep's stack with the patch:\n" << stack;
    // Same behaviour: a one-second sleep still takes a second.
    std::string times = guest_->run_ok("a=$(cut -d' ' -f1 /proc/uptime); sleep 1; echo $a $(cut -d' ' -f1 /proc/uptime)");
    double before = 0, after = 0;
    ASSERT_EQ(std::sscanf(times.c_str(), "%lf %lf", &before, &after), 2) << times;
    EXPECT_GE(after - before, 0.99) << times;
    EXPECT_LT(after - before, 5.0) << times;

    // Unpatching waits for them the other way round: they sleep in the new
    // copy, so they are the ones still patched (1).
    start = Clock::now();
    guest_livepatch_disable(*guest_, example.module);
    ASSERT_EQ(guest_livepatch_transition(*guest_, example.module), "1");
    auto patched = guest_tasks_in_patch_state(*guest_, 1);
    for (int pid : sleepers)
        EXPECT_TRUE(std::any_of(patched.begin(), patched.end(), [&](const auto& t) { return t.pid == pid; }))
            << "sleeper " << pid << " does not hold up the unpatching transition: " << join(patched);
    state = wait_guest_livepatch_transition(*guest_, example.module, kTransitionTimeout);
    host = seconds_since(start);
    EXPECT_TRUE(state == "0" || state == "gone") << state;
    wait_guest_livepatch_gone(*guest_, example.module, kTransitionTimeout);
    report(example, "unpatching", host, guest_transition_seconds(*guest_, example.module, false));
    guest_rmmod(*guest_, example.module);

    EXPECT_EQ(sleep_workload_pids(*guest_), sleepers);
    for (int pid : sleepers) {
        std::string after_revert = guest_task_stack(*guest_, pid);
        EXPECT_EQ(sleeper_version(after_revert), SleeperVersion::Original) << after_revert;
    }
    EXPECT_EQ(fresh_sleeper_version(*guest_), SleeperVersion::Original);
}

TEST_F(ExamplePatchesTest, Example3PrototypeChangeNeverMixesVersionsWithTheGuestsLivepatch) {
    const ExamplePatch& example = example_patch(Example::Prototype);
    std::string ko = put_example_patch(*guest_, example.id);
    std::string original = guest_->run_ok(std::string(kStatmOracle));
    ASSERT_FALSE(statm_is_patched(original)) << original;

    std::string ref = start_proto_check(*guest_);
    std::cout << "[ info     ] proto-check target statm: " << ref << "\n";
    // The checker tells the two valid lines from both mismatched pairings.
    EXPECT_EQ(proto_check_classify(*guest_, ref, ref), "old");
    EXPECT_EQ(proto_check_classify(*guest_, ref, ref + std::string(kStatmPatchedSuffix)), "new");
    for (const auto& mismatch : statm_mismatch_lines(ref)) {
        EXPECT_NE(mismatch, ref);
        EXPECT_EQ(proto_check_classify(*guest_, ref, mismatch), "wrong") << mismatch;
    }

    auto wait_for_reads = [&](auto enough, const char* what) {
        auto deadline = Clock::now() + 60s;
        ProtoCheckCounts counts;
        while (Clock::now() < deadline) {
            counts = proto_check_status(*guest_);
            if (enough(counts)) return counts;
            std::this_thread::sleep_for(200ms);
        }
        ADD_FAILURE() << "proto-check did not get " << what << ": " << counts.original << " original, "
                      << counts.patched << " patched, " << counts.wrong << " wrong";
        return counts;
    };
    wait_for_reads([](const ProtoCheckCounts& c) { return c.original >= 50; }, "50 original reads");

    apply(example, ko);
    EXPECT_TRUE(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))));
    std::string init_statm = guest_->run_ok("cat /proc/1/statm");
    EXPECT_TRUE(statm_is_patched(init_statm)) << init_statm;
    auto during = wait_for_reads([](const ProtoCheckCounts& c) { return c.patched >= 200; }, "200 patched reads");

    revert(example);
    EXPECT_FALSE(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))));
    wait_for_reads([&](const ProtoCheckCounts& c) { return c.original >= during.original + 50; },
                   "50 more original reads");

    ProtoCheckCounts counts = stop_proto_check(*guest_);
    std::cout << "[ info     ] proto-check: " << counts.original << " original, " << counts.patched << " patched, "
              << counts.wrong << " wrong reads\n";
    EXPECT_EQ(counts.wrong, 0) << counts.errors;
    EXPECT_EQ(counts.errors, "");
    EXPECT_GT(counts.patched, 0);
}

TEST_F(ExamplePatchesTest, GuestKernelStayedHealthy) {
    EXPECT_EQ(guest_->run_ok("echo ok"), "ok\n");
    auto console = kernel_problem_lines(guest_->console_log());
    std::string shown;
    for (const auto& line : console) shown += line + "\n";
    EXPECT_TRUE(console.empty()) << "the guest console shows:\n" << shown;
    auto dmesg = kernel_problem_lines(guest_->run_ok("dmesg"));
    shown.clear();
    for (const auto& line : dmesg) shown += line + "\n";
    EXPECT_TRUE(dmesg.empty()) << "the guest's kernel log shows:\n" << shown;
    // Expected: the out-of-tree livepatch modules taint the kernel.
    std::cout << "[ info     ] guest taint: " << guest_->run_ok("cat /proc/sys/kernel/tainted");
}

}  // namespace
}  // namespace hvpatch::test
