// `hvpatch inspect TARGET`: the VM as the VMM sees it, from one pause.
#include <cstdio>

#include "cli/commands.h"
#include "cli/output.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/branch_mitigations.h"
#include "introspect/guest_kernel.h"
#include "introspect/task_stacks.h"
#include "introspect/tasks.h"
#include "patch/module_allocator.h"

namespace hvpatch::cli {
namespace {

struct InspectOptions {
    std::string target;
    bool json = false;
};

// What inspect reports of the guest kernel; `error` when none was found
// (a VM still in firmware, a non-Linux guest, a corrupt kernel).
struct KernelView {
    std::optional<KernelInfo> info;
    std::string error;
    std::size_t tasks = 0;
    std::uint64_t image_start = 0, image_size = 0, kernel_cr3 = 0;
    // How hvpatch reads this kernel: the formats it recognised.
    std::string kallsyms_format, orc_format;
    std::size_t symbols = 0;
    // How a patch would be loaded: the guest's allocator, and how its
    // loader patches branch sites (what hvpatch's loader will do too).
    ModuleAllocator allocator;
    BranchMitigations branches;
};

std::string describe(const BranchMitigations& m) {
    if (!m.problem.empty()) return "unknown: " + m.problem;
    std::string out = m.retpoline ? (m.retpoline_lfence ? "retpolines (LFENCE)" : "retpolines")
                                  : "indirect branches inline";
    if (m.indirect_its_thunks) out += ", ITS thunks";
    out += m.rethunk ? ", return thunk" : ", plain returns";
    if (m.call_depth_tracking) out += ", call-depth tracking (patches refused)";
    return out;
}

KernelView look_at_kernel(Machine& machine) {
    KernelView view;
    try {
        auto kernel = GuestKernel::open(machine);
        view.info = kernel->info();
        view.image_start = kernel->image().start.value;
        view.image_size = kernel->image().size;
        view.kernel_cr3 = kernel->page_tables().cr3;
        view.tasks = list_tasks(*kernel).size();
        view.kallsyms_format = kernel->symbols().layout().format;
        view.symbols = kernel->symbols().symbols().size();
        view.orc_format = to_string(guest_orc_format(*kernel));
        view.allocator = find_module_allocator(*kernel);
        view.branches = derive_branch_mitigations(*kernel);
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
        view.error = e.what();
    }
    return view;
}

nlohmann::json kernel_json(const KernelView& view) {
    if (!view.info) return {{"error", view.error}};
    const KernelInfo& k = *view.info;
    return {{"release", k.release},
            {"banner", k.banner},
            {"text", hex(k.text.value)},
            {"kaslr_offset", hex_short(static_cast<std::uint64_t>(k.kaslr_offset))},
            {"image", {{"start", hex(view.image_start)}, {"size", view.image_size}}},
            {"page_offset_base", hex(k.page_offset_base)},
            {"vmalloc_base", hex(k.vmalloc_base)},
            {"vmemmap_base", hex(k.vmemmap_base)},
            {"phys_base", hex(k.phys_base)},
            {"kernel_cr3", hex(view.kernel_cr3)},
            {"paging_levels", static_cast<int>(k.levels)},
            {"cpus", k.nr_cpu_ids},
            {"tasks", view.tasks},
            {"formats", {{"kallsyms", view.kallsyms_format},
                         {"symbols", view.symbols},
                         {"orc", view.orc_format},
                         {"stack_top_padding", k.stack_top_padding},
                         {"tif_patch_pending", k.tif_patch_pending ? nlohmann::json(*k.tif_patch_pending) : nlohmann::json()},
                         {"tif_notify_signal", k.tif_notify_signal ? nlohmann::json(*k.tif_notify_signal) : nlohmann::json()},
                         {"thread_flags_problem", k.thread_flags_problem},
                         {"module_memory", view.allocator.problem.empty() ? view.allocator.description
                                                                           : "none: " + view.allocator.problem},
                         {"branch_sites", describe(view.branches)}}},
            {"livepatch", {{"supported", k.livepatch},
                           {"transition_in_progress", k.livepatch_transition},
                           {"klp_target_state", k.klp_target_state}}}};
}

void print_kernel(const KernelView& view) {
    if (!view.info) {
        std::printf("Kernel:       not found (%s)\n", view.error.c_str());
        return;
    }
    const KernelInfo& k = *view.info;
    std::printf("Kernel:       %s\n", k.release.c_str());
    std::printf("Banner:       %s\n", k.banner.c_str());
    std::printf("KASLR:        _text %s (offset %s), image %s + %llu MiB\n", hex(k.text.value).c_str(),
                hex_short(static_cast<std::uint64_t>(k.kaslr_offset)).c_str(), hex(view.image_start).c_str(),
                static_cast<unsigned long long>(view.image_size >> 20));
    std::printf("Memory map:   page_offset_base %s, vmalloc_base %s, vmemmap_base %s, phys_base %s\n",
                hex(k.page_offset_base).c_str(), hex(k.vmalloc_base).c_str(), hex(k.vmemmap_base).c_str(),
                hex_short(k.phys_base).c_str());
    std::printf("Paging:       %d-level (kernel page tables %s)\n", static_cast<int>(k.levels),
                hex(view.kernel_cr3).c_str());
    std::printf("CPUs:         %d; tasks: %zu\n", k.nr_cpu_ids, view.tasks);
    std::printf("Formats:      kallsyms %s (%zu symbols); ORC %s%s\n", view.kallsyms_format.c_str(), view.symbols,
                view.orc_format.c_str(),
                k.stack_top_padding ? ("; task stacks end " + std::to_string(k.stack_top_padding) +
                                       " bytes below their top (FRED)").c_str()
                                    : "");
    if (k.livepatch)
        std::printf("Thread flags: %s\n",
                    k.tif_patch_pending ? ("TIF_PATCH_PENDING " + std::to_string(*k.tif_patch_pending) +
                                           ", TIF_NOTIFY_SIGNAL " + std::to_string(*k.tif_notify_signal) +
                                           " (from the guest's code)").c_str()
                                        : ("unknown: " + k.thread_flags_problem).c_str());
    std::printf("Patches:      memory from %s; branch sites: %s\n",
                view.allocator.problem.empty() ? view.allocator.description.c_str()
                                               : ("none (" + view.allocator.problem + ")").c_str(),
                describe(view.branches).c_str());
    std::printf("Livepatch:    %s\n", !k.livepatch ? "not supported by this kernel (no CONFIG_LIVEPATCH)"
                                       : k.livepatch_transition ? "supported; a transition is IN PROGRESS"
                                                                : "supported; no transition in progress");
}

}  // namespace

void inspect_machine(Machine& machine_ref, bool json) {
    Machine* machine = &machine_ref;
    RunState found = machine->run_state();
    std::string accel = machine->accelerator();
    MemoryAccessInfo memory = machine->memory_access();

    std::vector<std::pair<int, VcpuRegisters>> vcpus;
    std::chrono::nanoseconds paused{0};
    KernelView kernel;
    const MachineIdentity id = machine->identity();
    {
        // One freeze for everything reported.
        PauseGuard pause(*machine);
        for (int index : machine->vcpus()) vcpus.emplace_back(index, machine->read_registers(index));
        kernel = look_at_kernel(*machine);
        paused = pause.paused_for();
    }

    if (json) {
        nlohmann::json doc;
        doc["target"] = machine->name();
        doc["identity"] = {{"name", id.name}, {"uuid", id.uuid}, {"connection", id.connection}, {"key", id.key()}};
        doc["accelerator"] = accel;
        doc["run_state"] = found == RunState::Running ? "running" : "paused";
        doc["paused_ms"] = static_cast<double>(paused.count()) / 1e6;
        doc["memory"] = memory_access_json(memory);
        doc["kernel"] = kernel_json(kernel);
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
    std::printf("VM:           name %s, uuid %s\n", id.name.empty() ? "(none)" : id.name.c_str(),
                id.uuid.empty() ? "(none)" : id.uuid.c_str());
    std::printf("Accelerator:  %s\n", accel.c_str());
    std::printf("Run state:    %s%s\n", found == RunState::Running ? "running" : "paused",
                found == RunState::Running ? (" (paused by hvpatch for " + milliseconds(paused) + ")").c_str()
                                           : " (left paused)");
    std::printf("RAM:          %llu MiB, read through %s\n",
                static_cast<unsigned long long>(memory.ram_size >> 20), describe_memory_access(memory).c_str());
    for (const auto& r : memory.ranges)
        std::printf("              guest-physical %s-%s at RAM offset %s\n", hex(r.start.value).c_str(),
                    hex(r.start.value + r.size - 1).c_str(), hex_short(r.ram_offset).c_str());
    print_kernel(kernel);
    std::printf("vCPUs:        %zu\n\n", vcpus.size());
    std::printf("%-4s %-3s %-18s %-18s %-18s %-10s %-6s %-18s %-18s\n", "VCPU", "CPL", "RIP", "RSP", "CR3", "CR4",
                "EFER", "GS_BASE", "KERNEL_GS_BASE");
    for (const auto& [index, r] : vcpus)
        std::printf("%-4d %-3d %-18s %-18s %-18s %-10s %-6s %-18s %-18s\n", index, r.cpl(), hex(r.rip).c_str(),
                    hex(r.rsp).c_str(), hex(r.cr3).c_str(), hex_short(r.cr4).c_str(), hex_short(r.efer).c_str(),
                    hex(r.gs_base).c_str(), hex(r.kernel_gs_base).c_str());
}

namespace {

void run_inspect(const InspectOptions& opt, const GlobalOptions& global) {
    auto machine = open_target(opt.target, global);
    inspect_machine(*machine, opt.json);
}

}  // namespace

void add_inspect_command(CLI::App& app, const GlobalOptions& global) {
    auto opt = std::make_shared<InspectOptions>();
    auto* cmd = app.add_subcommand("inspect", "Show the VM: accelerator, vCPUs, RAM and how hvpatch reaches it");
    cmd->add_option("target", opt->target, kTargetHelp)->required();
    cmd->add_flag("--json", opt->json, "Print a JSON document");
    cmd->callback([opt, &global] { run_inspect(*opt, global); });
}

}  // namespace hvpatch::cli
