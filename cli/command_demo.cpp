// `hvpatch demo`: boot the bundled test guest (a real Debian kernel under
// QEMU, built by scripts/build-test-guest), show `cat /proc/cmdline` from
// inside it, apply the sample livepatch from the host, show it again, revert
// it, show it once more. The guest's command channel is only the demo's
// window into the guest; the patching itself needs nothing in it.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "cli/commands.h"
#include "cli/output.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/page_walk.h"
#include "introspect/task_stacks.h"
#include "introspect/tasks.h"
#include "patch/patcher.h"
#include "vmm/guest_command_channel.h"
#include "vmm/interrupt.h"
#include "vmm/launcher.h"

namespace hvpatch::cli {
namespace {

constexpr std::chrono::seconds kBootTimeout{120};

struct DemoOptions {
    std::string guest_dir;
    std::string patch;  // "" = the sample, built by scripts/build-example-patches
    bool inspect = false;
    bool json = false;
};

std::string run_script(const std::string& cmd, const std::string& what) {
    FILE* pipe = popen(cmd.c_str(), "r");
    if (!pipe) throw Error(ErrorKind::Internal, "cannot run " + cmd);
    std::string out;
    std::array<char, 512> buf{};
    while (std::fgets(buf.data(), buf.size(), pipe)) out += buf.data();
    int status = pclose(pipe);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    if (status != 0 || out.empty()) throw Error(ErrorKind::Usage, "no " + what + ": '" + cmd + "' failed");
    return out;
}

// The sample patch: --patch, else livepatch_cmdline.ko as
// scripts/build-example-patches builds it for the guest's release.
std::string find_sample_patch(const DemoOptions& opt, const std::string& release) {
    if (!opt.patch.empty()) return opt.patch;
    std::string dir = run_script(std::string(HVPATCH_SOURCE_DIR) + "/scripts/build-example-patches --quiet --release " +
                                     release,
                                 "sample patch (needs linux-headers-" + release + ")");
    // The script prints the output directory last.
    if (auto nl = dir.rfind('\n'); nl != std::string::npos) dir = dir.substr(nl + 1);
    return dir + "/livepatch_cmdline.ko";
}

// The guest dir: --guest-dir, else $HVPATCH_GUEST_DIR/default, else what
// scripts/build-test-guest --print-dir reports (it builds it if needed).
std::string find_guest_dir(const DemoOptions& opt) {
    if (!opt.guest_dir.empty()) return opt.guest_dir;
    return run_script(std::string(HVPATCH_SOURCE_DIR) + "/scripts/build-test-guest --print-dir",
                      "test guest (run scripts/build-test-guest)");
}

void progress(bool json, const std::string& line) {
    std::fflush(stdout);  // keep progress lines in order with the output
    if (!json) std::fprintf(stderr, "demo: %s\n", line.c_str());
}

void wait_for_ready(LaunchedVm& vm, bool json) {
    auto start = std::chrono::steady_clock::now();
    while (vm.console_log().find("HVPATCH-GUEST-READY") == std::string::npos) {
        throw_if_interrupted("waiting for the test guest to boot");
        if (!vm.running())
            throw Error(ErrorKind::Internal, "the test guest's QEMU " + vm.status_text() + ": " + vm.qemu_log_tail());
        if (std::chrono::steady_clock::now() - start > kBootTimeout)
            throw Error(ErrorKind::Timeout, "the test guest did not boot within 120 s; console:\n" +
                                                vm.console_log().substr(0, 4000));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    auto took = std::chrono::steady_clock::now() - start;
    progress(json, "guest up in " + milliseconds(took));
}

// One more freeze: every task's kernel stack, unwound from guest memory with
// the guest's own ORC tables; print the workloads' stacks and a summary.
void show_stacks(Machine& machine) {
    PauseGuard pause(machine);
    auto kernel = GuestKernel::open(machine);
    std::vector<GuestTask> tasks = list_tasks(*kernel);
    StackWalker walker(*kernel);
    std::size_t reliable = 0;
    std::string shown;
    for (const auto& task : tasks) {
        TaskStack stack = walker.unwind(task);
        reliable += stack.unwind.reliable;
        bool workload = task.name == "sleep" || task.name == "cpu-loop" || task.name == "syscall-loop";
        if (!workload || shown.find(task.name + " ") != std::string::npos) continue;
        shown += "\n" + task.name + " (pid " + std::to_string(task.pid) + ", " + task.state_letter +
                 (stack.vcpu ? ", running on vCPU " + std::to_string(*stack.vcpu) : std::string()) + "): " +
                 (stack.unwind.reliable ? "reliable" : "UNRELIABLE") + " — " + stack.unwind.reason + "\n";
        for (const auto& f : stack.frames) shown += "    " + f.describe() + (f.scheduler ? " (sched)" : "") + "\n";
    }
    auto paused = pause.paused_for();
    std::printf("\nAt a second freeze (%s): %zu tasks, %zu kernel stacks unwound reliably. The workloads:\n%s",
                milliseconds(paused).c_str(), tasks.size(), reliable, shown.c_str());
}

std::string guest_says(GuestCommandChannel& channel, const std::string& command, bool json, nlohmann::json& steps) {
    GuestCommandResult result = channel.run(command, std::chrono::seconds(20));
    std::string text = result.output;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    if (!json) std::printf("guest$ %s\n%s\n", command.c_str(), text.c_str());
    steps.push_back({{"guest_command", command}, {"status", result.status}, {"output", result.output}});
    if (result.status != 0)
        throw Error(ErrorKind::Guest, "`" + command + "` failed in the guest (status " +
                                          std::to_string(result.status) + "): " + text);
    return text;
}

void run_demo(const DemoOptions& opt, const GlobalOptions& global) {
    std::string dir = find_guest_dir(opt);
    LaunchOptions launch = guest_launch_options(dir);
    // Plain RAM, as a VM is configured by default: nothing set up for hvpatch.
    launch.shared_ram = false;
    progress(opt.json, "booting " + guest_release(dir) + " under QEMU (" +
                           (launch.accel == "auto" ? (usable_kvm() ? "kvm" : "tcg") : launch.accel) + ", " +
                           std::to_string(launch.vcpus) + " vCPUs, " + std::to_string(launch.memory_mib) +
                           " MiB of plain RAM)");
    auto vm = launch_vm(launch);
    wait_for_ready(*vm, opt.json);
    std::string target = "qmp:" + vm->qmp_socket_path();
    auto channel = GuestCommandChannel::connect(vm->command_socket_path(), Deadline(std::chrono::seconds(30)));
    if (opt.inspect) {
        progress(opt.json, "hvpatch inspect " + target);
        auto machine = open_target(target, global);
        inspect_machine(*machine, opt.json);
        if (!opt.json) show_stacks(*machine);
    }
    std::string patch = find_sample_patch(opt, guest_release(dir));
    PatchOptions options;
    // The demo's state and audit log live with the demo VM unless asked otherwise.
    options.state_dir = global.state_dir.empty() ? vm->workdir() + "/state" : global.state_dir;
    options.audit_log = global.audit_log.empty() ? vm->workdir() + "/audit.jsonl" : global.audit_log;
    options.log = [&](const std::string& text) { progress(opt.json, text); };
    nlohmann::json steps = nlohmann::json::array();

    std::string before = guest_says(channel, "cat /proc/cmdline", opt.json, steps);
    progress(opt.json, "hvpatch apply " + target + " " + patch);
    auto machine = open_target(target, global);
    // Nothing was set up for hvpatch in this VM: say how its RAM is reached.
    progress(opt.json, "guest RAM is read through " + describe_memory_access(machine->memory_access()));
    Patcher patcher(*machine, options);
    OperationReport applied = patcher.apply(patch);
    if (!opt.json)
        std::printf("applied %s in %s: %d freeze(s), guest paused %s in total\n", applied.patch_name.c_str(),
                    milliseconds(applied.total_time).c_str(), applied.freezes, milliseconds(applied.paused_total).c_str());
    steps.push_back({{"hvpatch", "apply"}, {"report", applied.to_json()}});
    std::string during = guest_says(channel, "cat /proc/cmdline", opt.json, steps);
    progress(opt.json, "hvpatch revert " + target + " " + applied.patch_name);
    OperationReport reverted = patcher.revert(applied.patch_name);
    if (!opt.json)
        std::printf("reverted %s in %s: %d freeze(s), guest paused %s in total\n", reverted.patch_name.c_str(),
                    milliseconds(reverted.total_time).c_str(), reverted.freezes,
                    milliseconds(reverted.paused_total).c_str());
    steps.push_back({{"hvpatch", "revert"}, {"report", reverted.to_json()}});
    std::string after = guest_says(channel, "cat /proc/cmdline", opt.json, steps);
    machine.reset();

    bool worked = during != before && after == before;
    if (opt.json)
        std::printf("%s\n", nlohmann::json({{"target", target}, {"patch", patch}, {"steps", steps},
                                              {"audit_log", options.audit_log}, {"patched_output_differs", worked}})
                                 .dump(2)
                                 .c_str());
    else
        std::printf("audit log: %s\n", options.audit_log.c_str());
    progress(opt.json, "stopping the guest");
    channel.close();
    vm->stop();
    if (!worked)
        throw Error(ErrorKind::Guest, "the patch did not show: /proc/cmdline read '" + during + "' while applied");
}

}  // namespace

void add_demo_command(CLI::App& app, const GlobalOptions& global) {
    auto opt = std::make_shared<DemoOptions>();
    auto* cmd = app.add_subcommand("demo", "Boot the bundled test guest, patch it live from the host, revert");
    cmd->add_option("--guest-dir", opt->guest_dir, "test guest made by scripts/build-test-guest");
    cmd->add_option("--patch", opt->patch, "livepatch module to apply (default: the sample, built on demand)");
    cmd->add_flag("--inspect", opt->inspect, "also show what hvpatch inspect and stack see");
    cmd->add_flag("--json", opt->json, "JSON output");
    cmd->callback([opt, &global] { run_demo(*opt, global); });
}

}  // namespace hvpatch::cli
