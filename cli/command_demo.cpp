// `hvpatch demo`: boot the bundled test guest (a real Debian kernel under
// QEMU, built by scripts/build-test-guest) and run hvpatch on it. Until
// patching exists the demo shows what hvpatch sees of the running VM.
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
#include "vmm/interrupt.h"
#include "vmm/launcher.h"

namespace hvpatch::cli {
namespace {

constexpr std::chrono::seconds kBootTimeout{120};

struct DemoOptions {
    std::string guest_dir;
    bool json = false;
};

// The guest dir: --guest-dir, else $HVPATCH_GUEST_DIR/default, else what
// scripts/build-test-guest --print-dir reports (it builds it if needed).
std::string find_guest_dir(const DemoOptions& opt) {
    if (!opt.guest_dir.empty()) return opt.guest_dir;
    std::string cmd = std::string(HVPATCH_SOURCE_DIR) + "/scripts/build-test-guest --print-dir";
    FILE* pipe = popen(cmd.c_str(), "r");
    if (!pipe) throw Error(ErrorKind::Internal, "cannot run " + cmd);
    std::string out;
    std::array<char, 512> buf{};
    while (std::fgets(buf.data(), buf.size(), pipe)) out += buf.data();
    int status = pclose(pipe);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    if (status != 0 || out.empty())
        throw Error(ErrorKind::Usage, "no test guest: '" + cmd + "' failed; run scripts/build-test-guest");
    return out;
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

void run_demo(const DemoOptions& opt) {
    std::string dir = find_guest_dir(opt);
    LaunchOptions launch = guest_launch_options(dir);
    progress(opt.json, "booting " + guest_release(dir) + " under QEMU (" +
                           (launch.accel == "auto" ? (usable_kvm() ? "kvm" : "tcg") : launch.accel) + ", " +
                           std::to_string(launch.vcpus) + " vCPUs, " + std::to_string(launch.memory_mib) +
                           " MiB, shared RAM file)");
    auto vm = launch_vm(launch);
    wait_for_ready(*vm, opt.json);
    std::string target = "qmp:" + vm->qmp_socket_path();
    progress(opt.json, "hvpatch inspect " + target);
    {
        auto machine = open_machine(target);
        inspect_machine(*machine, opt.json);
        if (!opt.json) show_stacks(*machine);
    }
    progress(opt.json, "stopping the guest");
    vm->stop();
}

}  // namespace

void add_demo_command(CLI::App& app) {
    auto opt = std::make_shared<DemoOptions>();
    auto* cmd = app.add_subcommand("demo", "Boot the bundled test guest and show hvpatch at work on it");
    cmd->add_option("--guest-dir", opt->guest_dir, "test guest made by scripts/build-test-guest");
    cmd->add_flag("--json", opt->json, "Print the inspection as JSON");
    cmd->callback([opt] { run_demo(*opt); });
}

}  // namespace hvpatch::cli
