// `hvpatch fleet apply PATCH.ko (TARGET... | --all-running)` and
// `hvpatch fleet revert NAME (TARGET... | --all-running)`: the same apply or
// revert on many VMs, each by its own `hvpatch apply|revert` child process
// (this binary, with the same global options), so that a failure or a
// crash on one target cannot touch another. The children report progress
// on a pipe (--progress-fd, cli/progress_events.h) and their result as
// their --json document; cli/fleet_report.h classifies and renders.
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cli/child_processes.h"
#include "cli/commands.h"
#include "cli/fleet_report.h"
#include "cli/progress_events.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "patch/audit_log.h"
#include "patch/audit_syslog.h"
#include "patch/livepatch_module.h"

namespace hvpatch::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct FleetCommandOptions {
    FleetVerb verb = FleetVerb::Apply;
    std::string patch;  // apply: the .ko; revert: the patch name
    std::vector<std::string> targets;
    bool all_running = false;
    int parallel = 1;
    bool json = false;
    // Passed on to each child as given (unset ones keep the verb's defaults).
    double timeout_s = 0, signal_after_s = 0;
    int interval_ms = 0;
    bool force = false, force_vermagic = false;
    CLI::Option *timeout = nullptr, *signal_after = nullptr, *interval = nullptr;
};

std::string number_text(double value) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", value);
    return buf;
}

std::string own_executable() {
    std::error_code ec;
    auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) throw Error(ErrorKind::Internal, "cannot find the hvpatch binary (/proc/self/exe): " + ec.message());
    return path.string();
}

// The options of the hvpatch command itself that a child must share with
// this run: the same audit log (and its syslog copy), state directory and
// libvirt connection. (A global option added to GlobalOptions belongs here
// too.) What comes from the environment reaches them by inheritance.
std::vector<std::string> child_global_arguments(const GlobalOptions& global) {
    std::vector<std::string> args;
    if (!global.audit_log.empty()) args.insert(args.end(), {"--audit-log", global.audit_log});
    if (global.audit_syslog) args.push_back("--audit-syslog");
    if (!global.state_dir.empty()) args.insert(args.end(), {"--state-dir", global.state_dir});
    if (!global.connection.empty()) args.insert(args.end(), {"--connect", global.connection});
    if (!global.memory_path.empty()) args.insert(args.end(), {"--memory-path", global.memory_path});
    return args;
}

std::vector<std::string> child_command(const std::string& exe, const FleetCommandOptions& opt,
                                       const GlobalOptions& global, const std::string& target,
                                       const std::string& patch_argument) {
    std::vector<std::string> argv = {exe};
    auto globals = child_global_arguments(global);
    argv.insert(argv.end(), globals.begin(), globals.end());
    argv.insert(argv.end(), {to_string(opt.verb), target, patch_argument, "--json", "--progress-fd",
                             std::to_string(kChildProgressFd)});
    if (opt.timeout->count()) argv.insert(argv.end(), {"--timeout", number_text(opt.timeout_s)});
    if (opt.signal_after->count()) argv.insert(argv.end(), {"--signal-after", number_text(opt.signal_after_s)});
    if (opt.interval->count()) argv.insert(argv.end(), {"--interval", std::to_string(opt.interval_ms)});
    if (opt.force) argv.push_back("--force");
    if (opt.force_vermagic) argv.push_back("--force-vermagic");
    return argv;
}

// What the operator sees while the children run, on stderr: nothing under
// --json; on a terminal a table redrawn in place; otherwise a line per
// change of a target's state.
class FleetDisplay {
public:
    FleetDisplay(bool json, const std::vector<FleetTarget>& targets)
        : targets_(targets), last_keys_(targets.size()) {
        if (json) mode_ = Mode::Silent;
        else if (isatty(STDERR_FILENO) == 1) mode_ = Mode::Table;
        else mode_ = Mode::Lines;
    }

    void changed(std::size_t index) {
        if (mode_ != Mode::Lines) return;
        const FleetTarget& t = targets_[index];
        // The pass number is left out: a transition that waits for the same
        // blocker prints one line, not one per pass.
        std::string key = std::to_string(static_cast<int>(t.phase)) + "|" + (t.stage ? std::string(to_string(*t.stage)) : std::string()) + "|" + t.direction + "|" +
                          std::to_string(t.remaining) + "|" + first_blocker(t);
        if (key == last_keys_[index]) return;
        last_keys_[index] = key;
        std::fprintf(stderr, "%s\n", progress_line(t).c_str());
    }

    // Every target as queued, before the first child starts.
    void start() {
        for (std::size_t i = 0; i < targets_.size(); ++i) changed(i);
        redraw();
    }

    void notice(const std::string& text) {
        notice_ = text;
        if (mode_ == Mode::Lines) std::fprintf(stderr, "hvpatch: %s\n", text.c_str());
        redraw();
    }

    void redraw() {
        if (mode_ != Mode::Table) return;
        winsize ws{};
        const bool known = ::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0;
        std::size_t width = known && ws.ws_col > 1 ? ws.ws_col - 1 : 0;
        std::size_t height = known && ws.ws_row > 4 ? ws.ws_row - 1 : 0;
        auto lines = render_table(targets_, width, notice_, height);
        std::string out;
        if (drawn_ > 0) out += "\033[" + std::to_string(drawn_) + "A";
        for (const auto& line : lines) out += "\r\033[K" + line + "\n";
        // A table that got shorter (no notice any more) leaves no old lines.
        for (std::size_t i = lines.size(); i < drawn_; ++i) out += "\r\033[K\n";
        drawn_ = std::max(drawn_, lines.size());
        std::fputs(out.c_str(), stderr);
        std::fflush(stderr);
    }

private:
    enum class Mode { Silent, Table, Lines } mode_;
    const std::vector<FleetTarget>& targets_;
    std::vector<std::string> last_keys_;
    std::string notice_;
    std::size_t drawn_ = 0;
};

void run_fleet(const FleetCommandOptions& opt, GlobalOptions& global) {
    if (opt.all_running == !opt.targets.empty())
        throw Error(ErrorKind::Usage, "name the targets or give --all-running (not both)");
    if (opt.parallel < 1) throw Error(ErrorKind::Usage, "--parallel must be at least 1");
    if ((opt.timeout->count() && opt.timeout_s <= 0) || (opt.interval->count() && opt.interval_ms <= 0) ||
        (opt.signal_after->count() && opt.signal_after_s < 0))
        throw Error(ErrorKind::Usage, "--timeout and --interval must be positive, --signal-after not negative");

    FleetRun run;
    run.verb = opt.verb;
    run.parallel = opt.parallel;
    std::string patch_argument = opt.patch;
    if (opt.verb == FleetVerb::Apply) {
        // Once here rather than once per target: a file that is no livepatch
        // module is the operator's mistake, not a property of some VMs.
        LivepatchModule module = LivepatchModule::open(opt.patch);
        run.patch = module.name();
        run.sha256 = module.sha256();
        run.module_path = std::filesystem::absolute(opt.patch).lexically_normal().string();
        patch_argument = run.module_path;
    } else {
        run.patch = opt.patch;
    }

    std::vector<std::string> names = opt.all_running ? list_running_domains(global.connection) : opt.targets;
    std::set<std::string> seen;
    for (const auto& name : names) {
        // Two children on one VM would only wait for each other's lock.
        if (!seen.insert(name).second) throw Error(ErrorKind::Usage, "target " + name + " is named twice");
        FleetTarget t;
        t.target = name;
        run.targets.push_back(std::move(t));
    }

    const std::string exe = own_executable();
    std::vector<std::vector<std::string>> commands;
    for (const auto& t : run.targets) commands.push_back(child_command(exe, opt, global, t.target, patch_argument));

    FleetDisplay display(opt.json, run.targets);
    std::vector<Clock::time_point> started(run.targets.size());
    const auto t0 = Clock::now();
    ChildCallbacks callbacks;
    callbacks.started = [&](std::size_t i) {
        started[i] = Clock::now();
        run.targets[i].phase = FleetTarget::Phase::Running;
        display.changed(i);
    };
    callbacks.progress_line = [&](std::size_t i, std::string_view line) {
        if (auto event = parse_progress_event(line)) {
            apply_event(run.targets[i], *event);
            display.changed(i);
        }
    };
    callbacks.finished = [&](std::size_t i, const ChildExit& exit) {
        run.targets[i].elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started[i]);
        finish_target(run.targets[i], opt.verb, exit);
        display.changed(i);
        display.redraw();
    };
    callbacks.tick = [&] {
        for (std::size_t i = 0; i < run.targets.size(); ++i)
            if (run.targets[i].phase == FleetTarget::Phase::Running)
                run.targets[i].elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started[i]);
        display.redraw();
    };
    callbacks.interrupted = [&](int signal, std::size_t running) {
        display.notice("interrupted (" + std::string(signal == SIGTERM ? "SIGTERM" : "SIGINT") + "): passed on to " +
                       std::to_string(running) + " running hvpatch process(es), waiting for them; starting no more");
    };
    display.start();
    ChildRunResult result = run_children(commands, opt.parallel, callbacks);
    run.interrupted = result.interrupted;
    for (std::size_t i = 0; i < run.targets.size(); ++i)
        if (!result.children[i].started) finish_target(run.targets[i], opt.verb, result.children[i]);
    run.wall = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    display.redraw();

    if (opt.json) std::printf("%s\n", report_json(run).dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    else std::printf("%s", render_report(run).c_str());
    std::fflush(stdout);

    // The children audited their own operations; this is the run's summary.
    // Not writing it does not undo what the children did, so it is a warning.
    try {
        const std::string path = global.audit_log.empty() ? default_audit_log_path() : global.audit_log;
        nlohmann::json stored = AuditLog(path).append(audit_record(run));
        if (global.audit_syslog || audit_syslog_from_environment()) send_audit_to_syslog(stored, path);
    } catch (const Error& e) {
        std::fprintf(stderr, "hvpatch: warning: the fleet's summary audit record was not written: %s\n", e.what());
    }
    global.exit_code = fleet_exit_code(run.targets, run.interrupted);
}

void add_shared_options(CLI::App* cmd, FleetCommandOptions& opt) {
    cmd->add_option("targets", opt.targets, std::string("targets: each a ") + kTargetHelp);
    cmd->add_flag("--all-running", opt.all_running, "every running domain of the libvirt connection");
    cmd->add_option("--parallel", opt.parallel, "at most this many targets at once")->capture_default_str();
    opt.timeout = cmd->add_option("--timeout", opt.timeout_s, "as for apply/revert (default 60)");
    opt.interval = cmd->add_option("--interval", opt.interval_ms, "as for apply/revert (default 50)");
    opt.signal_after = cmd->add_option("--signal-after", opt.signal_after_s, "as for apply/revert (default 15)");
    cmd->add_flag("--force", opt.force, "as for apply/revert: at the timeout, switch the remaining tasks (unsafe)");
    cmd->add_flag("--json", opt.json, "the final report as one JSON document");
}

}  // namespace

void add_fleet_command(CLI::App& app, GlobalOptions& global) {
    auto* fleet = app.add_subcommand("fleet", "apply or revert a patch on many VMs, each independently");
    fleet->require_subcommand(1);

    auto apply_opt = std::make_shared<FleetCommandOptions>();
    apply_opt->verb = FleetVerb::Apply;
    auto* apply = fleet->add_subcommand("apply", "hvpatch apply on each target");
    apply->add_option("module", apply_opt->patch, "livepatch module (.ko)")->required();
    add_shared_options(apply, *apply_opt);
    apply->add_flag("--force-vermagic", apply_opt->force_vermagic, "as for apply");
    apply->callback([apply_opt, &global] { run_fleet(*apply_opt, global); });

    auto revert_opt = std::make_shared<FleetCommandOptions>();
    revert_opt->verb = FleetVerb::Revert;
    auto* revert = fleet->add_subcommand("revert", "hvpatch revert on each target");
    revert->add_option("name", revert_opt->patch, "patch name (as status shows it)")->required();
    add_shared_options(revert, *revert_opt);
    revert->callback([revert_opt, &global] { run_fleet(*revert_opt, global); });
}

}  // namespace hvpatch::cli
