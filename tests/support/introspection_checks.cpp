// The introspection oracles: hvpatch's view of a frozen guest against the
// guest's own view, through the CLI (sym --all, ps --json, stack --json) and
// the library (running tasks). Shared by the configuration tests
// (test_introspection_oracles) and the kernel matrix (test_kernel_matrix).
//
// The guest cannot look at itself while it is frozen, so the oracles are
// taken just before and just after the freeze; a task whose state or stack is
// the same in both is compared exactly (it cannot have changed in between).
// The guest's command loop (cmd-loop) is the oracle's own machinery: it is
// always waiting for the listing command while the guest lists, and idle in
// poll() at the freeze, so it is left out.
#include "support/introspection_checks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/task_stacks.h"
#include "support/proc_oracles.h"
#include "support/run_command.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

CommandResult hvpatch(const std::vector<std::string>& args) {
    std::vector<std::string> argv{hvpatch_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, 300s);
}

}  // namespace

void expect_sym_all_equals_proc_kallsyms(TestGuest& guest) {
    // Only the symbols hvpatch can know: vmlinux and module lists. BPF
    // programs, ftrace and kprobe trampolines ([bpf], [__builtin__*]) are
    // not modules; the test guest has none of them, and this is checked.
    std::string builtin = guest.run("grep -c '\\[__builtin__\\|\\[bpf\\]' /proc/kallsyms").output;
    ASSERT_EQ(builtin, "0\n");
    std::string guest_sum = guest.run_ok("md5sum /proc/kallsyms");
    CommandResult r = hvpatch({"sym", guest.target(), "--all"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::size_t lines = static_cast<std::size_t>(std::count(r.out.begin(), r.out.end(), '\n'));
    EXPECT_GT(lines, 50000u);
    // Compare by digest; on a mismatch, fetch the guest's file and show
    // the first difference.
    CommandOptions md5;
    md5.input = r.out;
    std::string host_sum = run_command({"md5sum"}, md5).out;
    if (host_sum.substr(0, 32) != guest_sum.substr(0, 32)) {
        std::string theirs = guest.run_ok("cat /proc/kallsyms", 120s);
        std::istringstream a(r.out), b(theirs);
        std::string la, lb;
        std::size_t n = 0;
        while (std::getline(a, la) && std::getline(b, lb) && la == lb) ++n;
        FAIL() << "first difference at line " << n + 1 << ":\n  hvpatch: " << la << "\n  guest:   " << lb;
    }
    EXPECT_NE(r.out.find("\t[virtio_blk]"), std::string::npos) << "module symbols are listed";
}

void expect_ps_equals_proc(TestGuest& guest) { expect_ps_equals_proc(guest, {guest.target()}); }

void expect_ps_equals_proc(GuestShell& guest, const std::vector<std::string>& target) {
    auto before = guest_tasks(guest);
    std::vector<std::string> args{"ps"};
    args.insert(args.end(), target.begin(), target.end());
    args.push_back("--json");
    CommandResult r = hvpatch(args);
    auto after = guest_tasks(guest);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json doc = nlohmann::json::parse(r.out);
    std::map<int, nlohmann::json> ours;
    for (const auto& t : doc["tasks"])
        if (!t["idle"].get<bool>()) ours[t["pid"].get<int>()] = t;
    int compared = 0, woken = 0;
    for (const auto& [tid, b] : before) {
        auto a = after.find(tid);
        if (a == after.end() || a->second != b) continue;  // changed: not a fixed point
        if (b.second.rfind("kworker/", 0) == 0) continue;    // names carry their latest work item
        if (b.second == "cmd-loop") continue;
        ASSERT_TRUE(ours.count(tid)) << "task " << tid << " (" << b.second << ") missing from hvpatch ps";
        // Equal before and after does not rule out a brief change in
        // between (a timer-driven kthread waking, a busy task sleeping for a
        // moment): at most a few tasks may be caught running/runnable on
        // one side and asleep on the other; any other difference (S vs D,
        // S vs I, ...) fails.
        if (ours[tid]["state"] != std::string(1, b.first) && (ours[tid]["state"] == "R" || b.first == 'R')) {
            ++woken;
            continue;
        }
        // PREEMPT_RT: a task caught waiting for a sleeping spinlock shows D
        // (TASK_RTLOCK_WAIT) for that moment; its wait site names the lock.
        const std::string wait = ours[tid].value("wait", "");
        if (ours[tid]["state"] == "D" && b.first != 'D' &&
            (wait.find("rtlock") != std::string::npos || wait.find("rt_spin") != std::string::npos ||
             wait.find("rt_mutex") != std::string::npos)) {
            ++woken;
            continue;
        }
        EXPECT_EQ(ours[tid]["state"], std::string(1, b.first)) << "tid " << tid << " " << b.second << " waiting in "
                                                               << ours[tid].value("wait", "?");
        EXPECT_EQ(ours[tid]["name"], b.second) << "tid " << tid;
        ++compared;
    }
    EXPECT_GE(compared, 25);
    EXPECT_LE(woken, 3) << "tasks caught between running and sleeping at the freeze";
    // And nothing the guest had both times is missing.
    for (const auto& [tid, b] : before) {
        if (!after.count(tid)) continue;
        EXPECT_TRUE(ours.count(tid)) << "tid " << tid << " " << b.second;
    }
}

void expect_stacks_equal_proc_stack(TestGuest& guest) {
    auto before = guest_stacks(guest);
    CommandResult r = hvpatch({"stack", guest.target(), "--all", "--json"});
    auto after = guest_stacks(guest);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json doc = nlohmann::json::parse(r.out);
    int compared = 0, unreliable = 0;
    std::vector<std::string> moved;
    for (const auto& s : doc["stacks"]) {
        int pid = s["pid"].get<int>();
        if (!s["reliable"].get<bool>()) {
            ++unreliable;
            EXPECT_FALSE(s["reason"].get<std::string>().empty());
            continue;
        }
        if (pid == 0 || !s["vcpu"].is_null()) continue;  // idle / running: no /proc view
        if (s["name"] == "cmd-loop") continue;
        auto b = before.find(pid), a = after.find(pid);
        if (b == before.end() || a == after.end() || b->second != a->second || b->second.empty()) continue;
        std::vector<std::string> ours;
        bool saw_scheduler = false;
        for (const auto& f : s["frames"]) {
            if (f["scheduler"].get<bool>()) {
                saw_scheduler = true;
                continue;
            }
            ours.push_back(f["text"].get<std::string>());
        }
        EXPECT_TRUE(saw_scheduler) << "a sleeping task's stack shows the scheduler frames /proc omits";
        // A task may leave its wait and come back to it between the two
        // oracles (the syscall loop's shell waits for a new child each
        // iteration): tolerate one such task, report it, fail on more.
        if (ours != b->second) {
            std::string diff = "pid " + std::to_string(pid) + " " + s["name"].get<std::string>() + ": hvpatch";
            for (const auto& f : ours) diff += " " + f;
            diff += " | /proc";
            for (const auto& f : b->second) diff += " " + f;
            moved.push_back(diff);
            continue;
        }
        ++compared;
    }
    EXPECT_GE(compared, 20);
    EXPECT_LE(moved.size(), 1u) << ::testing::PrintToString(moved);
    EXPECT_LE(unreliable, 3) << r.out.substr(0, 4000);
}

void expect_running_tasks_start_at_vcpu_rip(TestGuest& guest) {
    auto machine = open_machine(guest.target());
    PauseGuard pause(*machine);
    auto kernel = GuestKernel::open(*machine);
    StackWalker walker(*kernel);
    int running = 0;
    for (const auto& task : list_tasks(*kernel)) {
        if (!task.running_on) continue;
        ++running;
        TaskStack stack = walker.unwind(task);
        ASSERT_TRUE(stack.vcpu) << task.name;
        EXPECT_EQ(walker.cpu_of_vcpu(*stack.vcpu), task.running_on);
        VcpuRegisters regs = machine->read_registers(*stack.vcpu);
        if (regs.cpl() == 3) {
            EXPECT_TRUE(stack.frames.empty());
            EXPECT_EQ(stack.unwind.end, UnwindEnd::UserModeVcpu);
            EXPECT_TRUE(stack.unwind.reliable);
        } else {
            // Even an unreliable walk starts at the vCPU's RIP.
            ASSERT_FALSE(stack.frames.empty()) << task.name << ": " << stack.unwind.reason;
            EXPECT_EQ(stack.frames.front().frame.ip.value, regs.rip);
            EXPECT_EQ(stack.frames.front().frame.kind, FrameKind::Vcpu);
            EXPECT_FALSE(stack.unwind.reason.empty()) << task.name;
        }
    }
    // One task per vCPU, except that a vCPU may be running a task that has
    // already left the task list (an exiting task after release_task, on its
    // way through do_task_dead); the guest's own livepatch ignores those too.
    EXPECT_GE(running, 1);
    EXPECT_LE(running, 2) << "at most one task per vCPU";
}

}  // namespace hvpatch::test
