// `hvpatch inspect TARGET`: the VM as the VMM sees it, from one pause.
#include <cstdio>

#include "cli/commands.h"
#include "cli/output.h"
#include "hvpatch/machine.h"

namespace hvpatch::cli {
namespace {

struct InspectOptions {
    std::string target;
    bool json = false;
};

}  // namespace

void inspect_machine(Machine& machine_ref, bool json) {
    Machine* machine = &machine_ref;
    RunState found = machine->run_state();
    std::string accel = machine->accelerator();
    MemoryAccessInfo memory = machine->memory_access();

    std::vector<std::pair<int, VcpuRegisters>> vcpus;
    std::chrono::nanoseconds paused{0};
    {
        PauseGuard pause(*machine);
        for (int index : machine->vcpus()) vcpus.emplace_back(index, machine->read_registers(index));
        paused = pause.paused_for();
    }

    if (json) {
        nlohmann::json doc;
        doc["target"] = machine->name();
        doc["accelerator"] = accel;
        doc["run_state"] = found == RunState::Running ? "running" : "paused";
        doc["paused_ms"] = static_cast<double>(paused.count()) / 1e6;
        doc["memory"] = memory_access_json(memory);
        doc["vcpus"] = nlohmann::json::array();
        for (const auto& [index, regs] : vcpus) {
            nlohmann::json v = registers_json(regs);
            v["index"] = index;
            doc["vcpus"].push_back(v);
        }
        std::printf("%s\n", doc.dump(2).c_str());
        return;
    }

    std::printf("Target:       %s\n", machine->name().c_str());
    std::printf("Accelerator:  %s\n", accel.c_str());
    std::printf("Run state:    %s%s\n", found == RunState::Running ? "running" : "paused",
                found == RunState::Running ? (" (paused by hvpatch for " + milliseconds(paused) + ")").c_str()
                                           : " (left paused)");
    std::printf("RAM:          %llu MiB, read through %s\n",
                static_cast<unsigned long long>(memory.ram_size >> 20), describe_memory_access(memory).c_str());
    for (const auto& r : memory.ranges)
        std::printf("              guest-physical %s-%s at RAM offset %s\n", hex(r.start.value).c_str(),
                    hex(r.start.value + r.size - 1).c_str(), hex_short(r.ram_offset).c_str());
    std::printf("vCPUs:        %zu\n\n", vcpus.size());
    std::printf("%-4s %-3s %-18s %-18s %-18s %-10s %-6s %-18s %-18s\n", "VCPU", "CPL", "RIP", "RSP", "CR3", "CR4",
                "EFER", "GS_BASE", "KERNEL_GS_BASE");
    for (const auto& [index, r] : vcpus)
        std::printf("%-4d %-3d %-18s %-18s %-18s %-10s %-6s %-18s %-18s\n", index, r.cpl(), hex(r.rip).c_str(),
                    hex(r.rsp).c_str(), hex(r.cr3).c_str(), hex_short(r.cr4).c_str(), hex_short(r.efer).c_str(),
                    hex(r.gs_base).c_str(), hex(r.kernel_gs_base).c_str());
}

namespace {

void run_inspect(const InspectOptions& opt) {
    auto machine = open_machine(opt.target);
    inspect_machine(*machine, opt.json);
}

}  // namespace

void add_inspect_command(CLI::App& app) {
    auto opt = std::make_shared<InspectOptions>();
    auto* cmd = app.add_subcommand("inspect", "Show the VM: accelerator, vCPUs, RAM and how hvpatch reaches it");
    cmd->add_option("target", opt->target, "qmp:PATH (QEMU's QMP socket)")->required();
    cmd->add_flag("--json", opt->json, "Print a JSON document");
    cmd->callback([opt] { run_inspect(*opt); });
}

}  // namespace hvpatch::cli
