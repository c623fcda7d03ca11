// `hvpatch ps TARGET`: the guest's tasks from one freeze.
#include <cstdio>

#include "cli/commands.h"
#include "cli/output.h"
#include "cli/snapshot.h"
#include "patch/patcher.h"
#include "introspect/task_stacks.h"
#include "introspect/tasks.h"

namespace hvpatch::cli {
namespace {

struct PsOptions {
    std::string target;
    bool json = false;
};

void run_ps(const PsOptions& opt, const GlobalOptions& global) {
    Snapshot snap(opt.target, global);
    std::vector<GuestTask> tasks = list_tasks(snap.kernel());
    // Where each task waits: the first frame of its stack outside the
    // scheduler (like wchan). Running tasks have none.
    std::vector<std::string> waits;
    {
        StackWalker walker(snap.kernel(), applied_patch_code(snap.machine(), snap.kernel(), global.state_dir));
        for (const auto& t : tasks) {
            std::string wait;
            if (!t.running_on) {
                TaskStack stack = walker.unwind(t);
                if (auto site = stack.wait_site()) wait = site->symbol.empty() ? site->describe() : site->symbol;
                if (!stack.unwind.reliable) wait += wait.empty() ? "?" : " ?";
            }
            waits.push_back(wait);
        }
    }
    snap.release();

    if (opt.json) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& t : tasks) {
            nlohmann::json j = {{"pid", t.pid},
                                {"tgid", t.tgid},
                                {"comm", t.comm},
                                {"name", t.name},
                                {"state", std::string(1, t.state_letter)},
                                {"kthread", t.kthread},
                                {"idle", t.idle},
                                {"cpu", t.cpu},
                                {"task", hex(t.address)},
                                {"patch_pending", t.patch_pending},
                                {"wait", waits[static_cast<std::size_t>(&t - tasks.data())]}};
            j["running_on"] = t.running_on ? nlohmann::json(*t.running_on) : nlohmann::json(nullptr);
            if (t.patch_state) j["patch_state"] = *t.patch_state;
            list.push_back(j);
        }
        nlohmann::json doc = {{"target", snap.machine().name()},
                              {"paused_ms", static_cast<double>(snap.paused_for().count()) / 1e6},
                              {"tasks", list}};
        std::printf("%s\n", doc.dump(2).c_str());
        return;
    }
    std::string out;
    char line[512];
    std::snprintf(line, sizeof line, "%7s %7s %-1s %-4s %-1s %-24s %s\n", "PID", "TGID", "S", "CPU", "K", "WAIT",
                  "NAME");
    out += line;
    for (const auto& t : tasks) {
        std::string cpu = t.running_on ? std::to_string(*t.running_on) + "*" : std::to_string(t.cpu);
        const std::string& wait = waits[static_cast<std::size_t>(&t - tasks.data())];
        std::snprintf(line, sizeof line, "%7d %7d %c %-4s %-1s %-24s %s\n", t.pid, t.tgid, t.state_letter,
                      cpu.c_str(), t.kthread ? "k" : "", wait.substr(0, 24).c_str(),
                      t.idle ? ("[" + t.name + "]").c_str() : t.name.c_str());
        out += line;
    }
    std::fputs(out.c_str(), stdout);
    std::printf("%zu tasks; CPU with * = running there at the freeze; WAIT ? = stack not reliable; guest paused %s\n",
                tasks.size(),
                milliseconds(snap.paused_for()).c_str());
}

}  // namespace

void add_ps_command(CLI::App& app, const GlobalOptions& global) {
    auto opt = std::make_shared<PsOptions>();
    auto* cmd = app.add_subcommand("ps", "List the guest's tasks (from one freeze)");
    cmd->add_option("target", opt->target, kTargetHelp)->required();
    cmd->add_flag("--json", opt->json, "Print JSON");
    cmd->callback([opt, &global] { run_ps(*opt, global); });
}

}  // namespace hvpatch::cli
