// The example livepatch modules of examples/patches/ (built by
// scripts/build-example-patches) and what a test needs around them: their
// .ko files, a copy inside the test guest, the guest's own livepatch core
// driven through the command channel (insmod, /sys/kernel/livepatch, rmmod)
// and, per example, the oracle that tells from inside the guest whether the
// patched or the original code runs.
//
// The guest's own livepatch is the reference: test_example_patches proves
// each module with it, and hvpatch's host-side apply/revert tests can use the
// same oracles (they read /proc, not /sys/kernel/livepatch) and compare
// timings. examples/patches/README describes the three patches.
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "support/test_guest.h"

namespace hvpatch::test {

enum class Example { Cmdline, Sleeper, Prototype, Alternatives };

struct ExamplePatch {
    Example id;
    std::string_view directory;  // examples/patches/<directory>
    std::string_view module;     // module name: <module>.ko, /sys/kernel/livepatch/<module>
    std::vector<std::string_view> replaced;  // vmlinux functions it replaces (old_sympos 0)
    std::string_view summary;
};

// All examples, in the order of the README (1, 2, 3, 4).
std::span<const ExamplePatch> example_patches();
const ExamplePatch& example_patch(Example id);

// The host path of the example's .ko for kernel `release`, built on first
// use by scripts/build-example-patches (cached; ~2 s per example when
// stale). Throws std::runtime_error with the script's output if it fails
// (e.g. linux-headers-<release> missing: run scripts/install-deps).
std::string example_patch_ko(Example id, const std::string& release);

// Puts the example's .ko, without its debug info (objcopy --strip-debug:
// ~10 KB instead of ~270 KB over the slow serial channel; the code and every
// other section are the same bytes), at /tmp/<module>.ko in the guest and
// returns that path.
std::string put_example_patch(GuestShell& guest, Example id);

// --- The guest's own livepatch core ---------------------------------------

// insmod GUEST_KO in the guest (which enables the patch and starts its
// transition; insmod returns before the transition ends). Throws
// std::runtime_error with insmod's output if it fails.
void guest_insmod(GuestShell& guest, const std::string& guest_ko);
// echo 0 > /sys/kernel/livepatch/<module>/enabled (starts the reverse
// transition); rmmod <module>.
void guest_livepatch_disable(GuestShell& guest, std::string_view module);
void guest_rmmod(GuestShell& guest, std::string_view module);
// The guest's vmalloc areas in the module area (where module_alloc
// allocates), one sorted line each with address (shown to root with
// kptr_restrict 1; 0 prints (____ptrval____) on the test guest), size and
// caller; without the areas the guest allocates and frees on its own
// schedule: its modules' (load_module: init sections freed from a work item
// after boot), ftrace trampolines (freed after tracing stops) and BPF
// program packs.
std::string guest_module_area_allocations(GuestShell& guest);

// After the unpatching transition (wait_guest_livepatch_transition read "0"
// or "gone") the guest frees the patch and its sysfs directory from a work
// item: waits until /sys/kernel/livepatch/<module> is gone.
void wait_guest_livepatch_gone(GuestShell& guest, std::string_view module, std::chrono::milliseconds timeout);

// /sys/kernel/livepatch/<module>/transition: "1" while a transition runs,
// "0" after it, "gone" once the patch is disabled and freed.
std::string guest_livepatch_transition(GuestShell& guest, std::string_view module);
// Polls the transition file inside the guest (every 10 ms, one command)
// until it is no longer "1"; returns what it reads then ("0" or "gone").
// Throws hvpatch::Error(Timeout) after `timeout`.
std::string wait_guest_livepatch_transition(GuestShell& guest, std::string_view module,
                                            std::chrono::milliseconds timeout);
// The guest's own measure of its last transition of `module`, from the
// kernel log: seconds from "'<module>': starting patching transition" to
// "'<module>': patching complete" (unpatching with patching = false).
// Negative if the log does not have both lines.
double guest_transition_seconds(GuestShell& guest, std::string_view module, bool patching);

struct GuestTaskPatchState {
    int pid = 0;
    std::string comm;
    int patch_state = 0;  // /proc/PID/patch_state: -1 undefined, 0 unpatched, 1 patched
};
// The tasks (every thread) whose /proc/PID/patch_state is `state`.
std::vector<GuestTaskPatchState> guest_tasks_in_patch_state(GuestShell& guest, int state);

// Lines of a kernel log that show a kernel problem: BUG, WARNING, Oops,
// general protection fault, Call Trace, panic. (Taint messages for an
// out-of-tree, unsigned livepatch module are expected and not included.)
std::vector<std::string> kernel_problem_lines(std::string_view log);
// Those lines of `guest`'s console so far, one per line; "" when there are
// none. What a suite's TearDown checks: EXPECT_EQ(kernel_problems_shown(g), "").
std::string kernel_problems_shown(const GuestShell& guest);

// --- Example 1: livepatch-cmdline -----------------------------------------
// cmdline_proc_show prints a fixed line instead of the kernel command line.
inline constexpr std::string_view kCmdlineOracle = "cat /proc/cmdline";
inline constexpr std::string_view kCmdlinePatchedOutput = "this has been live patched\n";

// --- Example 2: livepatch-sleeper ------------------------------------------
// do_nanosleep is replaced by a copy, livepatch_do_nanosleep, which (unlike
// the original, in .sched.text) shows as the top frame of /proc/PID/stack
// of a task asleep in it (and as its /proc/PID/wchan).
inline constexpr std::string_view kSleeperPatchedFrame = "livepatch_do_nanosleep";
enum class SleeperVersion { Original, Patched };
// Which do_nanosleep the task whose /proc/PID/stack is `stack` sleeps in.
// The original leaves no frame of its own (hrtimer_nanosleep, or
// do_syscall_64 after a restart, is on top).
SleeperVersion sleeper_version(std::string_view stack);
// The PIDs of guest/init's `sleep 1000000` workloads (three).
std::vector<int> sleep_workload_pids(GuestShell& guest);
// cat /proc/PID/stack.
std::string guest_task_stack(GuestShell& guest, int pid);
// Starts a new `sleep` in the guest, reads its stack once it sleeps, kills
// it: the version a task that starts sleeping now gets. (Only outside a
// transition: the new sleeper would hold up the transition itself.)
SleeperVersion fresh_sleeper_version(GuestShell& guest, std::string* stack = nullptr);
// Under hvpatch, which registers no module in the guest, the guest's own
// unwinder stops at the patched copy: a task asleep in it has an EMPTY
// /proc/PID/stack. The original, itself in .sched.text, leaves
// hrtimer_nanosleep on top; after a restart (a sleeper woken by a
// transition, as klp_send_signals does, restarts its syscall),
// hrtimer_nanosleep_restart is .sched.text too and do_syscall_64 is on top.
enum class HvpatchSleeper { Original, Patched, Unknown };
HvpatchSleeper classify_hvpatch_sleeper(std::string_view stack);
std::string to_string(HvpatchSleeper sleeper);
// /proc/PID/stack of a new `sleep` once it sleeps in clock_nanosleep
// (syscall 230); the sleep is killed afterwards.
std::string fresh_sleeper_stack(GuestShell& guest);

// --- Example 4: livepatch-alternatives -------------------------------------
// version_proc_show from code with alternatives, paravirt calls and WARNs.
inline constexpr std::string_view kVersionOracle = "cat /proc/version";
inline constexpr std::string_view kVersionPatchedOutput = "hvpatch alternatives example: always yes\n";

// --- Example 3: livepatch-prototype ----------------------------------------
// proc_pid_statm and task_statm with a new task_statm prototype; the patched
// /proc/PID/statm line ends in " livepatched".
inline constexpr std::string_view kStatmOracle = "cat /proc/self/statm";
inline constexpr std::string_view kStatmPatchedSuffix = " livepatched";
// True for a statm line (with or without its '\n') of the patched version.
bool statm_is_patched(std::string_view line);
// The two lines a mismatched pairing prints for the original line `ref`:
// {new caller with old callee, old caller with new callee}.
std::vector<std::string> statm_mismatch_lines(std::string_view ref);

// guest/bin/proto-check, which hammers /proc/<target>/statm and records
// every line that is neither `ref` nor `ref livepatched`.
struct ProtoCheckCounts {
    long original = 0, patched = 0, wrong = 0;  // reads of each kind so far
    std::string errors;  // /tmp/proto-errors: "<uptime> <line>" per wrong read
};
// Starts the checker (before the patch is applied); returns the reference
// line (the target's original statm, without '\n').
std::string start_proto_check(GuestShell& guest);
ProtoCheckCounts proto_check_status(GuestShell& guest);
ProtoCheckCounts stop_proto_check(GuestShell& guest);
// How the checker judges `line` against `ref`: "old", "new" or "wrong".
std::string proto_check_classify(GuestShell& guest, std::string_view ref, std::string_view line);

}  // namespace hvpatch::test
