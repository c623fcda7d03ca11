// check / apply / revert / status of livepatch modules on one VM: the
// loader, the redirections and the transition (DESIGN.md §1) put together.
//
// apply:  check the module against the guest → allocate guest memory with
//         the guest's module_alloc (guest call) → link the module at that
//         address on the host → write it, set page permissions (guest calls)
//         → freeze: redirect each function's ftrace NOP to its trampoline,
//         switch every clean task, mark the rest pending → passes until all
//         tasks switched → freeze: direct jumps, per-task state cleared.
// revert: the same transition backwards (direct jumps → trampolines → tasks
//         switch back), then the original bytes, then the memory freed once
//         no task's stack touches it.
// Every step that changes the guest is recorded first in the VM's state
// record (applied_state.h; the state file or the domain's metadata:
// vm_state_store.h) and every operation in the audit log.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "hvpatch/machine.h"
#include "patch/applied_state.h"
#include "patch/operation_stage.h"
#include "patch/transition.h"

namespace hvpatch {

struct TransitionProgress {
    std::string direction;  // "patching" / "unpatching"
    int pass = 0;
    std::size_t tasks = 0, remaining = 0;
    std::vector<TransitionBlocker> blockers;
    std::chrono::milliseconds elapsed{0};
};

struct PatchOptions {
    std::string state_dir;  // "" = default_state_dir()
    std::string audit_log;  // "" = default_audit_log_path()
    bool audit_syslog = false;  // also send each audit record to syslog (audit_syslog.h)
    bool force_vermagic = false;  // load a module built for another release
    bool force_switch = false;    // at the timeout, switch the remaining tasks instead of rolling back
    std::chrono::milliseconds timeout{60000};
    std::chrono::milliseconds pass_interval{50};
    // After this long, blocked sleepers are woken as klp_send_signals() does.
    std::chrono::milliseconds signal_after{15000};
    std::function<void(const TransitionProgress&)> progress;
    std::function<void(const std::string&)> log;  // step messages for people
    // Where an apply or revert is (operation_stage.h), for a caller that
    // shows it or must tell a refusal from a failure (fleet): Checking, then
    // the first stage that changes the guest (Loading, Transition or
    // Freeing); the verdicts AlreadyApplied / NotApplied come just before
    // the refusal they explain. Nothing was changed in the guest before the
    // first changing stage.
    std::function<void(OperationStage)> stage;
    // For benchmarks and tests: called once per apply or revert while the
    // guest runs with every redirection on its trampoline, after the
    // transition converged and before the final freeze. Not for operators.
    std::function<void()> before_finish;
};

struct FunctionPlan {
    RedirectedFunction function;  // filled as far as known before loading
    std::string entry_kind;       // what is at the entry now
    std::string refusal;          // why it cannot be patched ("" = it can)
};

struct CheckReport {
    std::string patch_name, sha256, vermagic, guest_release;
    std::vector<FunctionPlan> functions;
    std::vector<std::string> special_sections;  // "name: handling"
    std::vector<std::string> refusals;          // everything that would make apply refuse
    std::vector<TransitionBlocker> blockers;    // tasks that would block right now
    // klp_patch.replace: the hvpatch patches it would take over, and the
    // functions they redirect that would go back to the original code.
    bool replace = false;
    std::vector<std::string> replaces, restores;
    // "OBJECT: pre_patch, post_patch, ..." per klp_object with callbacks
    // (run in the guest by apply and revert, in the core's order).
    std::vector<std::string> callbacks;
    std::vector<std::string> states;    // klp_patch.states: "id N version V"
    std::vector<std::string> warnings;  // what apply would do differently than the guest's own core
    std::size_t tasks = 0;
    bool guest_transition = false;
    nlohmann::json to_json() const;
};

struct OperationReport {
    std::string operation;  // apply / revert
    std::string patch_name, sha256;
    OperationOutcome outcome = OperationOutcome::Applied;
    std::vector<RedirectedFunction> functions;
    // freezes: consistent-view steps; stops, paused_total, paused_max: every
    // time the guest was stopped (Machine::stop_stats), more than the
    // freezes when guest memory is read through the gdbstub.
    int passes = 0, freezes = 0, stops = 0;
    std::chrono::nanoseconds paused_total{0}, paused_max{0};
    std::chrono::nanoseconds transition_time{0}, total_time{0};
    std::vector<TransitionBlocker> forced;  // tasks switched by --force
    std::vector<TransitionBlocker> first_blockers;  // who blocked at the first pass
    std::uint64_t base = 0, size = 0;
    std::vector<std::string> loader_actions;
    std::vector<std::string> replaced;  // apply of a replacing patch: the patches it took over
    nlohmann::json to_json() const;
};

struct FunctionStatus {
    RedirectedFunction function;
    std::string entry_now;  // "original" / "trampoline" / "direct" / "unknown: <bytes>"
};
struct PatchStatus {
    AppliedPatch patch;
    std::vector<FunctionStatus> functions;
    bool consistent = true;  // the guest's bytes match what the phase says
    std::string note;
};
struct StatusReport {
    MachineIdentity vm;
    std::string release, boot_id;
    bool vm_running = true;  // false: the VM was found paused
    // An hvpatch operation on this VM that ended without finishing (killed,
    // crashed): "'apply' by hvpatch pid N (user U), started T, did not
    // finish"; "" if the last one finished. The next apply --resume or
    // revert takes over (and resumes a VM that hvpatch left paused).
    std::string unfinished_operation;
    bool stale = false;  // the recorded state is from an earlier boot, or another VM's
    std::string stale_boot_id;
    std::string stale_reason;  // for people: which of the two, and what it means
    std::string state_location;  // where the record is kept (file or domain metadata)
    std::vector<PatchStatus> patches;
    int klp_target_state = -1;
    bool guest_transition = false;
    std::size_t tasks = 0, tasks_pending = 0, tasks_patched = 0, tasks_unpatched = 0;
    nlohmann::json to_json() const;
};

class Patcher {
public:
    explicit Patcher(Machine& machine, PatchOptions options = {});
    ~Patcher();

    CheckReport check(const std::string& module_path);
    // `resume`: continue an apply that was interrupted (state phase
    // loading/patching).
    OperationReport apply(const std::string& module_path, bool resume = false);
    OperationReport revert(const std::string& name);
    StatusReport status();

    struct Session;  // one operation's lock, guest kernel and state (patcher.cpp)

private:
    Machine& machine_;
    PatchOptions options_;
};

// The code of the patches hvpatch has applied to this boot of the guest
// (from its state record; empty when there is no current record), so
// that stack listings unwind through it. The machine must be paused.
std::vector<ForeignCode> applied_patch_code(Machine& machine, class GuestKernel& kernel, const std::string& state_dir);

// Whether a record describes the running guest: written for this VM (its
// key: a domain copied with its metadata carries its origin's record) during
// this boot (after a reboot nothing of it is in the guest any more).
bool is_current_record(const VmState& state, const std::string& vm_key, const std::string& boot_id);

// A string that changes on every guest boot: SHA-256 over the KASLR
// offset, init_task's stack canary (random per boot) and the banner.
std::string guest_boot_id(class GuestKernel& kernel);

}  // namespace hvpatch
