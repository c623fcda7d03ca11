// `hvpatch check | apply | revert | status TARGET ...`: livepatch modules
// into a running guest kernel (patch/patcher.h does the work).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "cli/output.h"
#include "cli/progress_events.h"
#include "hvpatch/error.h"
#include "patch/audit_syslog.h"
#include "patch/operation_lock.h"
#include "patch/patcher.h"
#include "patch/posix_file.h"
#include "vmm/interrupt.h"

namespace hvpatch::cli {
namespace {

// QEMU's QMP monitor serves one client at a time: a second hvpatch on the
// same target would wait for a greeting that comes only once the first
// one ends, then fail after 10 s without saying who is in the way. So
// every verb here takes the target's monitor lock before it connects
// (<lock dir>/monitor-<target key>.lock; the per-VM lock of patch/ is
// taken after connecting, by the VM's identity). Another holder is waited
// for briefly (a status or check holds it well under a second), then the
// verb fails with Error(Busy) naming the holder.
constexpr auto kMonitorLockWait = std::chrono::seconds(2);

OperationLock lock_monitor(const std::string& target, std::string_view verb) {
    const std::string dir = default_lock_dir();
    const auto deadline = std::chrono::steady_clock::now() + kMonitorLockWait;
    for (;;) {
        try {
            return OperationLock::acquire(dir, "monitor-" + vm_lock_key(target), verb);
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Busy) throw;
            if (std::chrono::steady_clock::now() >= deadline) {
                // "VM monitor-<key> is busy: <holder> [lock file]" -> "<target> is busy: <holder> [lock file]"
                std::string what = e.what();
                auto at = what.find(" is busy: ");
                throw Error(ErrorKind::Busy, target + (at == std::string::npos ? ": " + what : what.substr(at)));
            }
        }
        throw_if_interrupted("waiting for " + target + "'s monitor lock");
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

struct PatchCommandOptions {
    std::string target, module, name;
    bool json = false;
    bool resume = false, force = false, force_vermagic = false;
    double timeout_s = 60, signal_after_s = 15;
    int interval_ms = 50;
    int progress_fd = -1;  // hidden --progress-fd: events for `hvpatch fleet` (cli/progress_events.h)
};

// A live line on a terminal, plain lines otherwise; nothing under --json.
class ProgressLine {
public:
    explicit ProgressLine(bool json) : json_(json), tty_(isatty(STDERR_FILENO) == 1) {}
    ~ProgressLine() { end(); }
    void show(const std::string& text) {
        if (json_) return;
        if (tty_) {
            std::fprintf(stderr, "\r\033[K%s", text.c_str());
            open_ = true;
        } else if (text != last_) {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
        last_ = text;
    }
    void say(const std::string& text) {
        if (json_) return;
        end();
        std::fprintf(stderr, "hvpatch: %s\n", text.c_str());
    }
    void end() {
        if (open_) std::fprintf(stderr, "\n");
        open_ = false;
    }

private:
    bool json_, tty_, open_ = false;
    std::string last_;
};

PatchOptions patch_options(const PatchCommandOptions& opt, const GlobalOptions& global, ProgressLine& line) {
    PatchOptions options;
    options.state_dir = global.state_dir;
    options.audit_log = global.audit_log;
    options.audit_syslog = global.audit_syslog || audit_syslog_from_environment();
    options.force_switch = opt.force;
    options.force_vermagic = opt.force_vermagic;
    if (opt.timeout_s <= 0 || opt.signal_after_s < 0 || opt.interval_ms <= 0)
        throw Error(ErrorKind::Usage, "--timeout and --interval must be positive, --signal-after not negative");
    options.timeout = std::chrono::milliseconds(static_cast<long>(opt.timeout_s * 1000));
    options.signal_after = std::chrono::milliseconds(static_cast<long>(opt.signal_after_s * 1000));
    options.pass_interval = std::chrono::milliseconds(opt.interval_ms);
    options.log = [&line](const std::string& text) { line.say(text); };
    options.progress = [&line](const TransitionProgress& p) {
        std::string text = p.direction + ": pass " + std::to_string(p.pass) + ", " + std::to_string(p.remaining) +
                           " of " + std::to_string(p.tasks) + " tasks left";
        if (!p.blockers.empty())
            text += " (pid " + std::to_string(p.blockers[0].pid) + " " + p.blockers[0].comm + ": " +
                    p.blockers[0].reason + (p.blockers.size() > 1 ? ", ..." : "") + ")";
        text += ", " + std::to_string(p.elapsed.count()) + " ms";
        line.show(text);
    };
    if (opt.progress_fd >= 0) {
        if (::fcntl(opt.progress_fd, F_GETFD) == -1)
            throw Error(ErrorKind::Usage, "--progress-fd " + std::to_string(opt.progress_fd) + " is not an open file descriptor");
        add_progress_events(options, opt.progress_fd);
    }
    return options;
}

void print_blockers(const std::vector<TransitionBlocker>& blockers) {
    for (const auto& b : blockers) {
        std::printf("  pid %d (%s): %s\n", b.pid, b.comm.c_str(), b.reason.c_str());
        for (const auto& f : b.frames) std::printf("      %s\n", f.c_str());
    }
}

void run_check(const PatchCommandOptions& opt, GlobalOptions& global) {
    ProgressLine line(opt.json);
    OperationLock monitor = lock_monitor(opt.target, "check");
    auto machine = open_target(opt.target, global);
    Patcher patcher(*machine, patch_options(opt, global, line));
    CheckReport report = patcher.check(opt.module);
    if (opt.json) {
        std::printf("%s\n", report.to_json().dump(2).c_str());
    } else {
        std::printf("patch %s (sha256 %s)\nbuilt for %s; guest runs %s\n", report.patch_name.c_str(),
                    report.sha256.c_str(), report.vermagic.c_str(), report.guest_release.c_str());
        for (const auto& plan : report.functions) {
            const auto& f = plan.function;
            std::printf("  %s:%s", f.object.c_str(), f.name.c_str());
            if (f.entry) std::printf(" at %s (%s)", hex(f.entry).c_str(), plan.entry_kind.c_str());
            std::printf(" -> %s%s\n", f.new_symbol.c_str(), plan.refusal.empty() ? "" : "  REFUSED");
        }
        for (const auto& s : report.special_sections) std::printf("  section %s\n", s.c_str());
        if (report.replace) {
            std::string replaces, restores;
            for (const auto& n : report.replaces) replaces += (replaces.empty() ? "" : ", ") + n;
            for (const auto& n : report.restores) restores += (restores.empty() ? "" : ", ") + n;
            std::printf("cumulative (klp_patch.replace): takes over %s\n",
                        replaces.empty() ? "nothing (no other hvpatch patch is applied)" : replaces.c_str());
            if (!restores.empty()) std::printf("  back to the original code: %s\n", restores.c_str());
        }
        for (const auto& c : report.callbacks) std::printf("  callbacks of %s\n", c.c_str());
        for (const auto& st : report.states) std::printf("  system state %s\n", st.c_str());
        for (const auto& w : report.warnings) std::printf("WARNING: %s\n", w.c_str());
        std::printf("%zu tasks; %zu would block the transition right now%s\n", report.tasks, report.blockers.size(),
                    report.blockers.empty() ? "" : ":");
        print_blockers(report.blockers);
        if (report.refusals.empty()) std::printf("OK: hvpatch apply would load this patch\n");
        for (const auto& r : report.refusals) std::printf("REFUSED: %s\n", r.c_str());
    }
    // The report is the output (also under --json); the exit code says
    // whether apply would refuse.
    if (!report.refusals.empty()) global.exit_code = exit_code_for(ErrorKind::Guest);
}

void print_operation(const OperationReport& r, bool json) {
    if (json) {
        std::printf("%s\n", r.to_json().dump(2).c_str());
        return;
    }
    std::printf("%s %s: %s in %s (%d passes, %d freezes, guest paused %s in total in %d stops, longest %s)\n",
                r.operation.c_str(), r.patch_name.c_str(), std::string(to_string(r.outcome)).c_str(), milliseconds(r.total_time).c_str(),
                r.passes, r.freezes, milliseconds(r.paused_total).c_str(), r.stops,
                milliseconds(r.paused_max).c_str());
    for (const auto& f : r.functions)
        std::printf("  %s at %s -> %s at %s\n", f.name.c_str(), hex(f.entry).c_str(), f.new_symbol.c_str(),
                    hex(f.new_address).c_str());
    for (const auto& name : r.replaced) std::printf("  replaced %s: gone\n", name.c_str());
    if (!r.forced.empty()) {
        std::printf("FORCED: these tasks were switched with the patch on their stack:\n");
        print_blockers(r.forced);
    }
}

void run_apply(const PatchCommandOptions& opt, const GlobalOptions& global) {
    ProgressLine line(opt.json);
    OperationLock monitor = lock_monitor(opt.target, "apply");
    auto machine = open_target(opt.target, global);
    Patcher patcher(*machine, patch_options(opt, global, line));
    OperationReport report = patcher.apply(opt.module, opt.resume);
    line.end();
    print_operation(report, opt.json);
}

void run_revert(const PatchCommandOptions& opt, const GlobalOptions& global) {
    ProgressLine line(opt.json);
    OperationLock monitor = lock_monitor(opt.target, "revert");
    auto machine = open_target(opt.target, global);
    Patcher patcher(*machine, patch_options(opt, global, line));
    OperationReport report = patcher.revert(opt.name);
    line.end();
    print_operation(report, opt.json);
}

void run_status(const PatchCommandOptions& opt, const GlobalOptions& global) {
    ProgressLine line(opt.json);
    OperationLock monitor = lock_monitor(opt.target, "status");
    auto machine = open_target(opt.target, global);
    Patcher patcher(*machine, patch_options(opt, global, line));
    StatusReport r = patcher.status();
    if (opt.json) {
        std::printf("%s\n", r.to_json().dump(2).c_str());
        return;
    }
    std::printf("VM %s (%s), kernel %s, boot %s\n", r.vm.target.c_str(), r.vm.key().c_str(), r.release.c_str(),
                r.boot_id.c_str());
    if (!r.vm_running) std::printf("the VM is PAUSED\n");
    if (!r.unfinished_operation.empty())
        std::printf("UNFINISHED: %s; hvpatch apply --resume or hvpatch revert takes over%s\n",
                    r.unfinished_operation.c_str(),
                    r.vm_running ? "" : " (and resumes the VM if that hvpatch had found it running)");
    if (r.stale) std::printf("STALE: %s\n", r.stale_reason.c_str());
    std::printf("record kept in %s\n", r.state_location.c_str());
    if (r.patches.empty()) std::printf("no patches applied by hvpatch\n");
    for (const auto& p : r.patches) {
        std::printf("%s  %s  sha256 %s  memory %s+%s  since %s%s\n", p.patch.name.c_str(), to_string(p.patch.phase),
                    p.patch.sha256.substr(0, 16).c_str(), hex(p.patch.base).c_str(),
                    hex_short(p.patch.size).c_str(), p.patch.applied_at.c_str(),
                    p.consistent ? "" : ("  (" + p.note + ")").c_str());
        for (const auto& f : p.functions)
            std::printf("  %s at %s: entry %s\n", f.function.name.c_str(), hex(f.function.entry).c_str(),
                        f.entry_now.c_str());
    }
    std::printf("guest livepatch state: klp_target_state %d%s; %zu tasks, %zu pending, %zu patched, %zu unpatched\n",
                r.klp_target_state, r.guest_transition ? ", guest transition in progress" : "", r.tasks,
                r.tasks_pending, r.tasks_patched, r.tasks_unpatched);
}

void add_transition_options(CLI::App* cmd, PatchCommandOptions& opt) {
    cmd->add_option("--timeout", opt.timeout_s, "seconds for the transition to converge (then roll back)")
        ->capture_default_str();
    cmd->add_option("--interval", opt.interval_ms, "milliseconds between freeze-and-check passes")
        ->capture_default_str();
    cmd->add_option("--signal-after", opt.signal_after_s, "seconds before blocked sleepers are woken")
        ->capture_default_str();
    cmd->add_flag("--force", opt.force,
                  "at the timeout, switch the remaining tasks instead of rolling back (unsafe; audited)");
    // For `hvpatch fleet`, which runs apply/revert as child processes.
    cmd->add_option("--progress-fd", opt.progress_fd, "write progress events (JSON Lines) to this descriptor")
        ->group("");
}

}  // namespace

void add_patch_commands(CLI::App& app, GlobalOptions& global) {
    auto opt = std::make_shared<PatchCommandOptions>();
    auto* check = app.add_subcommand("check", "Dry run: what apply would patch, where, and what blocks now");
    check->add_option("target", opt->target, kTargetHelp)->required();
    check->add_option("module", opt->module, "livepatch module (.ko)")->required();
    check->add_flag("--force-vermagic", opt->force_vermagic, "accept a module built for another kernel release");
    check->add_flag("--json", opt->json, "JSON output");
    check->callback([opt, &global] { run_check(*opt, global); });

    auto* apply = app.add_subcommand("apply", "Load a livepatch module into the running guest kernel");
    apply->add_option("target", opt->target, kTargetHelp)->required();
    apply->add_option("module", opt->module, "livepatch module (.ko)")->required();
    apply->add_flag("--resume", opt->resume, "finish an apply that was interrupted");
    apply->add_flag("--force-vermagic", opt->force_vermagic, "load a module built for another kernel release");
    add_transition_options(apply, *opt);
    apply->add_flag("--json", opt->json, "JSON output");
    apply->callback([opt, &global] { run_apply(*opt, global); });

    auto* revert = app.add_subcommand("revert", "Take a patch out again; the kernel's code is restored exactly");
    revert->add_option("target", opt->target, kTargetHelp)->required();
    revert->add_option("name", opt->name, "patch name (as status shows it)")->required();
    add_transition_options(revert, *opt);
    revert->add_flag("--json", opt->json, "JSON output");
    revert->callback([opt, &global] { run_revert(*opt, global); });

    auto* status = app.add_subcommand("status", "What hvpatch has applied to a VM, checked against the guest");
    status->add_option("target", opt->target, kTargetHelp)->required();
    status->add_flag("--json", opt->json, "JSON output");
    status->callback([opt, &global] { run_status(*opt, global); });
}

}  // namespace hvpatch::cli
