// hvpatch's state outside the guest stays truthful across crashes, signals,
// concurrent operations and guest reboots, and every unfinished operation
// can be finished or undone:
// - kill -9 of an apply mid-transition (example 2, livepatch-sleeper: the
//   guest's `sleep` workloads block the transition): `hvpatch status` shows
//   the transition as it is in the guest; `apply --resume` finishes it and
//   `revert` restores the original bytes; or `revert` right away does;
// - a second apply while one runs is refused at once (exit 3), naming the
//   holder's pid;
// - SIGINT mid-transition: exit 130, the same truthful state, resume works;
// - a guest reboot (a new QEMU with the same -uuid): the record is stale,
//   revert refuses and says why, a new apply works.
// One guest for the binary, replaced by a reboot in the last test; private
// state dir and audit log. No kernel problem (Oops, BUG, WARNING) may show
// on the guest console.
//
// The sleeper's oracle: hvpatch loads the patch without registering a module
// in the guest, so the guest's own unwinder stops at the patched
// livepatch_do_nanosleep (an address it does not know as kernel text):
// a task asleep in it has an EMPTY /proc/PID/stack, while one asleep in the
// original do_nanosleep (in .sched.text, skipped) shows hrtimer_nanosleep
// and the syscall path. (sleeper_version() of support/example_patches.h
// reads the guest's own livepatch, where the new function shows by name.)
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"
#include "vmm/qemu/qmp_client.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// The guest's identity across its boots: hvpatch keys its state by it.
constexpr const char* kVmUuid = "5ec0e1a7-0b5e-4c1e-9a11-7e57ab1e0001";
constexpr const char* kSleeper = "livepatch_sleeper";
constexpr const char* kCmdline = "livepatch_cmdline";
// Not reached: the sleepers block the transition until the test acts.
constexpr const char* kBlockedSeconds = "600";

std::string lines_of(const std::vector<std::string>& lines) {
    std::string text;
    for (const auto& l : lines) text += l + "\n";
    return text;
}

class PatchRecoveryTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        char dir_template[] = "/tmp/hvpatch-recovery.XXXXXX";
        ASSERT_NE(::mkdtemp(dir_template), nullptr);
        work_dir_ = dir_template;
        state_dir_ = work_dir_ + "/state";
        audit_log_ = work_dir_ + "/audit.jsonl";
        boot_guest();
        ASSERT_NE(guest_, nullptr);
        sleeper_ko_ = example_patch_ko(Example::Sleeper, guest_->release());
        cmdline_ko_ = example_patch_ko(Example::Cmdline, guest_->release());
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        std::error_code ec;
        std::filesystem::remove_all(work_dir_, ec);
    }
    static void boot_guest() {
        TestGuestOptions options;
        options.uuid = kVmUuid;
        // A second QMP monitor, the test's own: it sees QEMU's run state
        // while hvpatch holds the first one.
        std::error_code ec;
        std::filesystem::remove(observer_socket(), ec);
        options.extra_args = {"-qmp", "unix:" + observer_socket() + ",server=on,wait=off"};
        auto start = Clock::now();
        guest_ = TestGuest::boot(options).release();
        std::cout << "[ guest   ] booted in " << std::chrono::duration<double>(Clock::now() - start).count()
                  << " s (uuid " << kVmUuid << ")\n";
    }

    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    // Whatever a failed test left: reverted, so the next test starts clean.
    // And the guest must still answer (hvpatch never leaves it paused), show
    // no kernel problem, and the audit log must verify.
    void TearDown() override {
        if (!guest_) return;
        try {
            json st = status();
            for (const auto& p : st["patches"]) {
                std::string name = p["name"];
                ADD_FAILURE() << "patch " << name << " was left in phase " << p["phase"] << "; reverting it";
                CommandResult r = hvpatch({"revert", guest_->target(), name, "--signal-after", "1"}, 120s);
                if (r.exit_code != 0) ADD_FAILURE() << "revert " << name << ": " << r.describe();
            }
            auto answer = guest_->run("true", 10s);
            EXPECT_EQ(answer.status, 0) << "the guest does not answer";
        } catch (const std::exception& e) {
            ADD_FAILURE() << "cleaning up: " << e.what();
        }
        auto problems = kernel_problem_lines(guest_->console_log());
        EXPECT_TRUE(problems.empty()) << "kernel problems on the guest console:\n" << lines_of(problems);
        // Killed operations leave no record of their own, but never a torn one.
        if (std::filesystem::exists(audit_log_)) {
            AuditVerifyResult audit = verify_audit_log(audit_log_);
            EXPECT_TRUE(audit.ok) << "audit log " << audit_log_ << ":\n" << lines_of(audit.problems);
        }
    }

    // --- hvpatch, with this binary's private state dir and audit log ---------

    static std::vector<std::string> hvpatch_argv(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", state_dir_, "--audit-log", audit_log_};
        argv.insert(argv.end(), args.begin(), args.end());
        return argv;
    }
    static CommandResult hvpatch(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 60s) {
        return run_command(hvpatch_argv(args), timeout);
    }
    // `hvpatch status --json`, which must succeed.
    static json status() {
        CommandResult r = hvpatch({"status", guest_->target(), "--json"});
        if (r.exit_code != 0) throw std::runtime_error("hvpatch status failed: " + r.describe());
        return json::parse(r.out);
    }
    static json patch_status(const json& st, const std::string& name) {
        for (const auto& p : st["patches"])
            if (p["name"] == name) return p;
        return nullptr;
    }

    // An apply of the sleeper patch that cannot finish on its own: the
    // sleepers block it and are not woken (--signal-after 600). Returns
    // once the transition runs: the state file says "patching" and a pass
    // has marked the blockers pending.
    // `interval_ms` between passes: with 1 the guest is paused (in a pass)
    // nearly all the time, with 2000 it runs nearly all the time.
    static std::unique_ptr<RunningCommand> start_blocked_apply(int interval_ms = 50) {
        CommandOptions options;
        options.timeout = 300s;
        auto apply = std::make_unique<RunningCommand>(
            hvpatch_argv({"apply", guest_->target(), sleeper_ko_, "--signal-after", kBlockedSeconds, "--timeout",
                          kBlockedSeconds, "--interval", std::to_string(interval_ms)}),
            options);
        // Progress lines go to stderr, one per pass when it is not a tty.
        bool passes = apply->wait_for_output("patching: pass 2,", 60s, /*in_stderr=*/true);
        EXPECT_TRUE(passes) << "the apply never reached its second transition pass; stderr:\n" << apply->err();
        EXPECT_EQ(recorded_phase(kSleeper), "patching");
        return apply;
    }
    // The phase the state file records for `name` ("" if none).
    static std::string recorded_phase(const std::string& name) {
        std::ifstream in(state_dir_ + "/uuid-" + kVmUuid + ".json");
        if (!in) return "";
        json state = json::parse(in, nullptr, /*allow_exceptions=*/false);
        if (!state.is_object() || !state.contains("patches")) return "";
        for (const auto& p : state["patches"])
            if (p.value("name", "") == name) return p.value("phase", "");
        return "";
    }

    // --- oracles -------------------------------------------------------------

    // The first `size` bytes of a vmlinux function, read from the host
    // (only while no hvpatch runs: QMP serves one client at a time).
    static std::vector<std::byte> guest_code(const std::string& function, std::size_t size = 64) {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        auto kernel = GuestKernel::open(*machine);
        return kernel->memory().read_bytes(GuestVirtAddr{kernel->symbol(function)}, size);
    }

    // The vmalloc areas in the module area (where module_alloc allocates),
    // with their addresses (shown to root with kptr_restrict 1) and callers;
    // without the guest's own modules (load_module), whose init sections
    // are freed from a work item some time after boot.
    static std::set<std::string> module_area_allocations() {
        std::string out = guest_module_area_allocations(*guest_);
        std::set<std::string> lines;
        std::istringstream in(out);
        for (std::string line; std::getline(in, line);)
            if (!line.empty()) lines.insert(line);
        return lines;
    }
    static bool allocation_at(const std::set<std::string>& lines, const std::string& base) {
        return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return l.rfind(base + "-", 0) == 0; });
    }

    // The guest's three `sleep 1000000` workloads.
    static std::vector<HvpatchSleeper> workload_sleepers(std::string* stacks) {
        std::vector<HvpatchSleeper> found;
        for (int pid : sleep_workload_pids(*guest_)) {
            std::string stack = guest_task_stack(*guest_, pid);
            *stacks += "pid " + std::to_string(pid) + ":\n" + stack;
            found.push_back(classify_hvpatch_sleeper(stack));
        }
        return found;
    }
    static void expect_sleepers(HvpatchSleeper expected) {
        std::string stacks;
        auto sleepers = workload_sleepers(&stacks);
        EXPECT_EQ(sleepers.size(), 3u) << stacks;
        for (HvpatchSleeper s : sleepers) EXPECT_EQ(to_string(s), to_string(expected)) << "workload sleepers:\n" << stacks;
        std::string stack = fresh_sleeper_stack(*guest_);
        EXPECT_EQ(to_string(classify_hvpatch_sleeper(stack)), to_string(expected)) << "a new sleep's stack:\n" << stack;
    }

    static std::string observer_socket() { return work_dir_ + "/observer.sock"; }
    // Whether QEMU runs the guest, asked on the test's own monitor.
    static bool guest_running() {
        return QmpClient::connect(observer_socket()).execute("query-status").value("running", false);
    }

    // SIGKILL for `command` at a moment when the guest is paused (by it, in
    // a transition pass) or running, as asked: the command is stopped
    // (SIGSTOP), QEMU's run state read, and it is killed if the state is
    // the wanted one, else continued and tried again a little later.
    static void kill_with_guest(RunningCommand& command, bool paused) {
        for (int attempt = 0; attempt < 500; ++attempt) {
            ASSERT_EQ(::kill(command.pid(), SIGSTOP), 0);
            ASSERT_TRUE(wait_until_stopped(command.pid()));
            if (guest_running() != paused) {
                ASSERT_EQ(::kill(command.pid(), SIGKILL), 0);
                return;
            }
            ASSERT_EQ(::kill(command.pid(), SIGCONT), 0);
            std::this_thread::sleep_for(std::chrono::milliseconds(3 + attempt % 17));
        }
        FAIL() << "never caught the guest " << (paused ? "paused" : "running") << " by the apply";
    }
    static bool wait_until_stopped(pid_t pid) {
        for (int i = 0; i < 1000; ++i) {
            std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
            std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
            auto close = text.rfind(')');
            if (close != std::string::npos && close + 2 < text.size() && text[close + 2] == 'T') return true;
            std::this_thread::sleep_for(1ms);
        }
        return false;
    }

    // The state a transition interrupted by a kill or a signal leaves, as
    // `hvpatch status` must tell it: the redirection on the trampoline, the
    // guest's livepatch target "patched", the sleepers still pending, and
    // the VM's run state as it is.
    static void expect_interrupted_transition(const json& st, bool running) {
        SCOPED_TRACE("status: " + st.dump(2));
        EXPECT_FALSE(st["stale"]);
        EXPECT_EQ(st["vm_running"], running);
        json p = patch_status(st, kSleeper);
        ASSERT_FALSE(p.is_null());
        EXPECT_EQ(p["phase"], "patching");
        EXPECT_TRUE(p["consistent"]);
        ASSERT_EQ(p["functions"].size(), 1u);
        EXPECT_EQ(p["functions"][0]["name"], "do_nanosleep");
        EXPECT_EQ(p["functions"][0]["entry_now"], "trampoline");
        EXPECT_EQ(st["klp_target_state"], 1);
        EXPECT_GE(st["tasks"]["pending"].get<int>(), 3) << "the three sleepers block the transition";
        EXPECT_GT(st["tasks"]["patched"].get<int>(), 0);
    }
    // Nothing of hvpatch in the guest, by status.
    static void expect_clean_status(const json& st) {
        SCOPED_TRACE("status: " + st.dump(2));
        EXPECT_TRUE(st["patches"].empty());
        EXPECT_EQ(st["unfinished_operation"], "");
        EXPECT_TRUE(st["vm_running"]);
        EXPECT_EQ(st["klp_target_state"], -1);
        EXPECT_EQ(st["tasks"]["pending"], 0);
        EXPECT_EQ(st["tasks"]["patched"], 0);
        EXPECT_EQ(st["tasks"]["unpatched"], 0);
    }

    static void expect_ok(const CommandResult& r, const std::string& what) {
        EXPECT_EQ(r.exit_code, 0) << what << ": " << r.describe();
    }
    // The audit log's last record.
    static json last_audit_record() {
        std::ifstream in(audit_log_);
        std::string line, last;
        while (std::getline(in, line))
            if (!line.empty()) last = line;
        return json::parse(last, nullptr, /*allow_exceptions=*/false);
    }
    static json operation_report(const CommandResult& r) {
        json report = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
        return report.is_discarded() ? json::object() : report;
    }

    static TestGuest* guest_;
    static std::string work_dir_, state_dir_, audit_log_, sleeper_ko_, cmdline_ko_;
};

TestGuest* PatchRecoveryTest::guest_ = nullptr;
std::string PatchRecoveryTest::work_dir_, PatchRecoveryTest::state_dir_, PatchRecoveryTest::audit_log_,
    PatchRecoveryTest::sleeper_ko_, PatchRecoveryTest::cmdline_ko_;

TEST_F(PatchRecoveryTest, KillNineMidTransitionThenResumeThenRevert) {
    const auto original = guest_code("do_nanosleep");
    const auto allocations_before = module_area_allocations();

    // Killed in a pass, with the guest paused: nobody is left to resume it
    // but the next hvpatch. (Passes back to back: the guest is paused most
    // of the time.)
    auto apply = start_blocked_apply(1);
    const pid_t apply_pid = apply->pid();
    kill_with_guest(*apply, /*paused=*/true);
    CommandResult killed = apply->wait();
    ASSERT_EQ(killed.term_signal, SIGKILL) << killed.describe();
    const bool running = guest_running();
    EXPECT_FALSE(running);

    // What the dead apply left, as status tells it.
    json st = status();
    expect_interrupted_transition(st, running);
    EXPECT_NE(st["unfinished_operation"].get<std::string>().find("'apply' by hvpatch pid " + std::to_string(apply_pid)),
              std::string::npos)
        << st["unfinished_operation"];
    const std::string base = patch_status(st, kSleeper)["memory"]["base"];
    // The entry's first bytes are the jump to the trampoline; the rest is as before.
    auto during = guest_code("do_nanosleep");
    EXPECT_EQ(during[0], std::byte{0xe9});
    EXPECT_TRUE(std::equal(during.begin() + 5, during.end(), original.begin() + 5));
    // (Nothing through the guest's command channel yet: a paused guest
    // does not answer.) Text status says the same, and that an operation did not finish.
    CommandResult text = hvpatch({"status", guest_->target()});
    EXPECT_EQ(text.exit_code, 0) << text.describe();
    EXPECT_NE(text.out.find("UNFINISHED: 'apply' by hvpatch pid " + std::to_string(apply_pid)), std::string::npos)
        << text.out;
    EXPECT_NE(text.out.find("livepatch_sleeper  patching"), std::string::npos) << text.out;
    EXPECT_NE(text.out.find("entry trampoline"), std::string::npos) << text.out;
    EXPECT_EQ(text.out.find("the VM is PAUSED") != std::string::npos, !running) << text.out;
    EXPECT_EQ(guest_running(), running) << "status changed the run state";

    // Resume: the sleepers are woken after a second, as klp_send_signals does.
    CommandResult resumed =
        hvpatch({"apply", guest_->target(), sleeper_ko_, "--resume", "--signal-after", "1", "--json"}, 120s);
    expect_ok(resumed, "apply --resume");
    EXPECT_EQ(operation_report(resumed)["outcome"], "applied") << resumed.out;
    // The audit log says the resume took over from the dead apply.
    json audit = last_audit_record();
    EXPECT_EQ(audit["operation"], "apply --resume") << audit.dump(2);
    EXPECT_EQ(audit["outcome"], "applied") << audit.dump(2);
    EXPECT_EQ(audit.value("took_over", "").find("'apply' by hvpatch pid " + std::to_string(apply_pid)), 0u)
        << audit.dump(2);
    st = status();
    {
        SCOPED_TRACE("status after resume: " + st.dump(2));
        json p = patch_status(st, kSleeper);
        ASSERT_FALSE(p.is_null());
        EXPECT_EQ(p["phase"], "applied");
        EXPECT_EQ(p["functions"][0]["entry_now"], "direct");
        EXPECT_TRUE(p["consistent"]);
        EXPECT_EQ(st["unfinished_operation"], "");
        EXPECT_TRUE(st["vm_running"]);
        EXPECT_EQ(st["klp_target_state"], -1);
        EXPECT_EQ(st["tasks"]["pending"], 0);
    }
    EXPECT_TRUE(guest_running()) << "the resume left the guest paused";
    EXPECT_TRUE(allocation_at(module_area_allocations(), base)) << "no vmalloc area at " << base;
    expect_sleepers(HvpatchSleeper::Patched);

    CommandResult reverted = hvpatch({"revert", guest_->target(), kSleeper, "--signal-after", "1"}, 120s);
    expect_ok(reverted, "revert");
    expect_clean_status(status());
    EXPECT_EQ(guest_code("do_nanosleep"), original) << "do_nanosleep's first 64 bytes differ after the revert";
    EXPECT_EQ(module_area_allocations(), allocations_before);
    expect_sleepers(HvpatchSleeper::Original);
}

TEST_F(PatchRecoveryTest, KillNineMidTransitionThenRevertRightAway) {
    const auto original = guest_code("do_nanosleep");
    const auto allocations_before = module_area_allocations();

    // Killed between passes, with the guest running.
    auto apply = start_blocked_apply();
    kill_with_guest(*apply, /*paused=*/false);
    CommandResult killed = apply->wait();
    ASSERT_EQ(killed.term_signal, SIGKILL) << killed.describe();
    const bool running = guest_running();
    EXPECT_TRUE(running);
    json st = status();
    expect_interrupted_transition(st, running);
    const std::string base = patch_status(st, kSleeper)["memory"]["base"];
    EXPECT_TRUE(allocation_at(module_area_allocations(), base)) << "no vmalloc area at " << base;

    CommandResult reverted = hvpatch({"revert", guest_->target(), kSleeper, "--signal-after", "1", "--json"}, 120s);
    expect_ok(reverted, "revert after kill -9");
    EXPECT_EQ(operation_report(reverted)["outcome"], "reverted") << reverted.out;
    expect_clean_status(status());
    EXPECT_EQ(guest_code("do_nanosleep"), original) << "do_nanosleep's first 64 bytes differ after the revert";
    auto allocations_after = module_area_allocations();
    EXPECT_FALSE(allocation_at(allocations_after, base)) << "the patch memory at " << base << " leaked";
    EXPECT_EQ(allocations_after, allocations_before);
    expect_sleepers(HvpatchSleeper::Original);
}

TEST_F(PatchRecoveryTest, SecondOperationWhileOneRunsIsRefusedAtOnceNamingTheHolder) {
    auto apply = start_blocked_apply();
    const std::string holder = "hvpatch pid " + std::to_string(apply->pid());

    auto start = Clock::now();
    CommandResult second = hvpatch({"apply", guest_->target(), cmdline_ko_, "--json"});
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    EXPECT_EQ(second.exit_code, 3) << second.describe();
    EXPECT_EQ(operation_report(second)["error"]["kind"], "busy") << second.out;
    EXPECT_NE(second.err.find("busy: " + holder + " "), std::string::npos) << second.err;
    EXPECT_NE(second.err.find("running 'apply'"), std::string::npos) << second.err;
    // Not QMP's 10 s greeting timeout: the monitor lock answers (after a
    // 2 s grace for short holders).
    EXPECT_LT(seconds, 8.0);
    std::cout << "[ busy    ] second apply refused in " << seconds << " s: " << second.err;
    // status and revert are refused the same way while the apply runs.
    CommandResult st = hvpatch({"status", guest_->target()});
    EXPECT_EQ(st.exit_code, 3) << st.describe();
    EXPECT_NE(st.err.find(holder), std::string::npos) << st.err;
    CommandResult revert = hvpatch({"revert", guest_->target(), kSleeper});
    EXPECT_EQ(revert.exit_code, 3) << revert.describe();
    EXPECT_NE(revert.err.find(holder), std::string::npos) << revert.err;
    // The refused apply touched nothing.
    EXPECT_EQ(recorded_phase(kCmdline), "");
    EXPECT_EQ(recorded_phase(kSleeper), "patching");

    // The running apply was not disturbed: it finishes once woken... here,
    // interrupted, then reverted.
    apply->send_signal(SIGINT);
    CommandResult interrupted = apply->wait();
    EXPECT_EQ(interrupted.exit_code, 130) << interrupted.describe();
    expect_ok(hvpatch({"revert", guest_->target(), kSleeper, "--signal-after", "1"}, 120s), "revert");
    expect_clean_status(status());
}

TEST_F(PatchRecoveryTest, InterruptMidTransitionLeavesTheSameTruthfulStateAndResumeWorks) {
    const auto original = guest_code("do_nanosleep");
    auto apply = start_blocked_apply();
    apply->send_signal(SIGINT);
    CommandResult interrupted = apply->wait();
    EXPECT_EQ(interrupted.exit_code, 130) << interrupted.describe();
    EXPECT_NE(interrupted.err.find("interrupted"), std::string::npos) << interrupted.err;

    json st = status();
    // An interrupted hvpatch ends normally: the guest runs again, the lock is released.
    expect_interrupted_transition(st, true);
    EXPECT_EQ(st["unfinished_operation"], "") << st.dump(2);

    CommandResult resumed =
        hvpatch({"apply", guest_->target(), sleeper_ko_, "--resume", "--signal-after", "1", "--json"}, 120s);
    expect_ok(resumed, "apply --resume after SIGINT");
    EXPECT_EQ(operation_report(resumed)["outcome"], "applied") << resumed.out;
    st = status();
    json p = patch_status(st, kSleeper);
    ASSERT_FALSE(p.is_null()) << st.dump(2);
    EXPECT_EQ(p["phase"], "applied");
    EXPECT_EQ(p["functions"][0]["entry_now"], "direct");
    expect_sleepers(HvpatchSleeper::Patched);

    expect_ok(hvpatch({"revert", guest_->target(), kSleeper, "--signal-after", "1"}, 120s), "revert");
    expect_clean_status(status());
    EXPECT_EQ(guest_code("do_nanosleep"), original);
    expect_sleepers(HvpatchSleeper::Original);
}

// Last: it replaces the suite's guest by a new boot of the same VM.
TEST_F(PatchRecoveryTest, StaleRecordAfterAGuestRebootIsRecognised) {
    const std::string original_cmdline = guest_->run_ok(std::string(kCmdlineOracle));
    CommandResult applied = hvpatch({"apply", guest_->target(), cmdline_ko_});
    ASSERT_EQ(applied.exit_code, 0) << applied.describe();
    ASSERT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    const std::string first_boot = status()["boot_id"];

    // "Reboot": a fresh QEMU with the same -uuid (the launcher's QEMU runs
    // with -no-reboot, so a guest reboot would end it).
    auto problems = kernel_problem_lines(guest_->console_log());
    EXPECT_TRUE(problems.empty()) << lines_of(problems);
    delete guest_;
    guest_ = nullptr;
    boot_guest();
    ASSERT_NE(guest_, nullptr);
    ASSERT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original_cmdline);

    json st = status();
    {
        SCOPED_TRACE("status after the reboot: " + st.dump(2));
        EXPECT_EQ(st["vm"]["uuid"], kVmUuid);
        EXPECT_TRUE(st["stale"]);
        EXPECT_EQ(st["stale_boot_id"], first_boot);
        EXPECT_NE(st["boot_id"], first_boot);
        EXPECT_TRUE(st["patches"].empty());
    }
    CommandResult text = hvpatch({"status", guest_->target()});
    EXPECT_EQ(text.exit_code, 0) << text.describe();
    EXPECT_NE(text.out.find("STALE: the recorded state is from boot " + first_boot), std::string::npos) << text.out;

    CommandResult revert = hvpatch({"revert", guest_->target(), kCmdline});
    EXPECT_EQ(revert.exit_code, 4) << revert.describe();
    EXPECT_NE(revert.err.find("from an earlier boot of the guest"), std::string::npos) << revert.err;

    CommandResult again = hvpatch({"apply", guest_->target(), cmdline_ko_});
    EXPECT_EQ(again.exit_code, 0) << again.describe();
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    st = status();
    EXPECT_FALSE(st["stale"]) << st.dump(2);
    json p = patch_status(st, kCmdline);
    ASSERT_FALSE(p.is_null()) << st.dump(2);
    EXPECT_EQ(p["phase"], "applied");
    EXPECT_EQ(p["functions"][0]["entry_now"], "direct");
    expect_ok(hvpatch({"revert", guest_->target(), kCmdline}), "revert after the reboot");
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original_cmdline);
    expect_clean_status(status());
}

}  // namespace
}  // namespace hvpatch::test
