// `hvpatch stack TARGET PID... | --all`: kernel stacks of guest tasks from
// one freeze, with a reliability verdict per stack.
#include <cstdio>
#include <set>

#include "cli/commands.h"
#include "cli/output.h"
#include "cli/snapshot.h"
#include "patch/patcher.h"
#include "hvpatch/error.h"
#include "introspect/task_stacks.h"

namespace hvpatch::cli {
namespace {

struct StackOptions {
    std::string target;
    std::vector<int> pids;
    bool all = false, json = false;
};

nlohmann::json stack_json(const GuestTask& task, const TaskStack& stack) {
    nlohmann::json frames = nlohmann::json::array();
    for (const auto& f : stack.frames) {
        nlohmann::json j = {{"ip", hex(f.frame.ip.value)},
                            {"symbol", f.symbol},
                            {"offset", hex_short(f.offset)},
                            {"size", hex_short(f.size)},
                            {"stack", f.frame.stack_name},
                            {"kind", to_string(f.frame.kind)},
                            {"scheduler", f.scheduler},
                            {"text", f.describe()}};
        if (!f.module.empty()) j["module"] = f.module;
        frames.push_back(j);
    }
    nlohmann::json j = {{"pid", task.pid},
                        {"tgid", task.tgid},
                        {"name", task.name},
                        {"state", std::string(1, task.state_letter)},
                        {"reliable", stack.unwind.reliable},
                        {"end", to_string(stack.unwind.end)},
                        {"reason", stack.unwind.reason},
                        {"frames", frames}};
    j["vcpu"] = stack.vcpu ? nlohmann::json(*stack.vcpu) : nlohmann::json(nullptr);
    return j;
}

std::string stack_text(const GuestTask& task, const TaskStack& stack) {
    std::string out = std::to_string(task.pid) + " " + task.name + " (" + task.state_letter +
                      (stack.vcpu ? ", running on vCPU " + std::to_string(*stack.vcpu) : std::string()) + "): " +
                      (stack.unwind.reliable ? "reliable" : "UNRELIABLE") + " — " + stack.unwind.reason + "\n";
    std::string last_stack;
    for (const auto& f : stack.frames) {
        std::string on = f.frame.stack_name != last_stack ? "  <" + f.frame.stack_name + ">" : std::string();
        last_stack = f.frame.stack_name;
        out += "  " + hex(f.frame.ip.value) + " " + f.describe() + (f.scheduler ? " (sched)" : "") + on + "\n";
    }
    return out;
}

void run_stack(const StackOptions& opt, const GlobalOptions& global) {
    if (opt.all == !opt.pids.empty()) throw Error(ErrorKind::Usage, "stack: give PIDs or --all");
    Snapshot snap(opt.target, global);
    std::vector<GuestTask> tasks = list_tasks(snap.kernel());
    StackWalker walker(snap.kernel(), applied_patch_code(snap.machine(), snap.kernel(), global.state_dir));
    std::vector<std::pair<GuestTask, TaskStack>> stacks;
    std::set<int> wanted(opt.pids.begin(), opt.pids.end());
    for (const auto& task : tasks) {
        // pid 0 is every CPU's idle task; `stack 0` shows them all.
        if (!opt.all && !wanted.count(task.pid)) continue;
        stacks.emplace_back(task, walker.unwind(task));
    }
    snap.release();
    std::set<int> found;
    for (const auto& s : stacks) found.insert(s.first.pid);
    for (int pid : wanted)
        if (!found.count(pid)) throw Error(ErrorKind::Guest, snap.machine().name() + ": no task with pid " + std::to_string(pid));

    std::size_t reliable = 0;
    for (const auto& s : stacks) reliable += s.second.unwind.reliable;
    if (opt.json) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& [task, stack] : stacks) list.push_back(stack_json(task, stack));
        nlohmann::json doc = {{"target", snap.machine().name()},
                              {"paused_ms", static_cast<double>(snap.paused_for().count()) / 1e6},
                              {"reliable", reliable},
                              {"stacks", list}};
        std::printf("%s\n", doc.dump(2).c_str());
        return;
    }
    std::string out;
    for (const auto& [task, stack] : stacks) out += stack_text(task, stack) + "\n";
    std::fputs(out.c_str(), stdout);
    std::printf("%zu stacks, %zu reliable; guest paused %s\n", stacks.size(), reliable,
                milliseconds(snap.paused_for()).c_str());
}

}  // namespace

void add_stack_command(CLI::App& app, const GlobalOptions& global) {
    auto opt = std::make_shared<StackOptions>();
    auto* cmd = app.add_subcommand("stack", "Show guest tasks' kernel stacks with a reliability verdict");
    cmd->add_option("target", opt->target, kTargetHelp)->required();
    cmd->add_option("pids", opt->pids, "task ids (pid 0: the idle tasks)");
    cmd->add_flag("--all", opt->all, "every task");
    cmd->add_flag("--json", opt->json, "Print JSON");
    cmd->callback([opt, &global] { run_stack(*opt, global); });
}

}  // namespace hvpatch::cli
