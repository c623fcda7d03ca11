// `hvpatch read TARGET (--phys | --virt [--cr3 X | --vcpu N]) ADDR LEN`:
// guest memory as a hex dump, raw bytes in a file, or JSON.
#include <cstdio>
#include <fstream>
#include <optional>

#include "cli/commands.h"
#include "cli/output.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/page_walk.h"
#include "vmm/qemu/gdb_packet.h"

namespace hvpatch::cli {
namespace {

// Guest memory that one command may dump; enough for a kernel image.
constexpr std::uint64_t kMaxReadLength = 1ULL << 30;

struct ReadOptions {
    std::string target, address_text, length_text, cr3_text, out;
    bool physical = false, virtual_ = false, json = false;
    int vcpu = -1;
};

void run_read(const ReadOptions& opt, const GlobalOptions& global) {
    if (opt.physical == opt.virtual_) throw Error(ErrorKind::Usage, "read: give exactly one of --phys and --virt");
    if (opt.physical && (!opt.cr3_text.empty() || opt.vcpu >= 0))
        throw Error(ErrorKind::Usage, "read: --cr3 and --vcpu apply to --virt only");
    if (!opt.cr3_text.empty() && opt.vcpu >= 0) throw Error(ErrorKind::Usage, "read: give --cr3 or --vcpu, not both");
    std::uint64_t address = parse_number(opt.address_text, "address");
    std::uint64_t length = parse_number(opt.length_text, "length");
    if (length == 0 || length > kMaxReadLength)
        throw Error(ErrorKind::Usage, "read: length must be between 1 and 1 GiB");
    // Checked before the target is touched, like every other argument.
    std::optional<std::uint64_t> cr3;
    if (!opt.cr3_text.empty()) cr3 = parse_number(opt.cr3_text, "CR3");

    auto machine = open_target(opt.target, global);
    std::vector<std::byte> data(length);
    {
        PauseGuard pause(*machine);
        if (opt.physical) {
            machine->read_physical(GuestPhysAddr{address}, data);
        } else {
            VcpuRegisters regs = machine->read_registers(opt.vcpu >= 0 ? opt.vcpu : 0);
            PageWalker walker(*machine, cr3.value_or(regs.cr3), paging_levels_from_cr4(regs.cr4));
            try {
                walker.read_virtual(GuestVirtAddr{address}, data);
            } catch (const Error& e) {
                throw Error(e.kind(), machine->name() + ": " + e.what());
            }
        }
    }

    if (!opt.out.empty()) {
        std::ofstream file(opt.out, std::ios::binary | std::ios::trunc);
        file.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
        if (!file) throw Error(ErrorKind::Internal, "cannot write " + opt.out);
    }
    if (opt.json) {
        nlohmann::json doc = {{"target", machine->name()},
                              {"space", opt.physical ? "physical" : "virtual"},
                              {"address", hex(address)},
                              {"length", length}};
        if (opt.out.empty()) doc["hex"] = gdb::to_hex(data);
        else doc["out"] = opt.out;
        std::printf("%s\n", doc.dump(2).c_str());
    } else if (opt.out.empty()) {
        std::fputs(hex_dump(address, data.data(), data.size()).c_str(), stdout);
    }
}

}  // namespace

void add_read_command(CLI::App& app, const GlobalOptions& global) {
    auto opt = std::make_shared<ReadOptions>();
    auto* cmd = app.add_subcommand("read", "Read guest memory (physical, or virtual through a CR3)");
    cmd->add_option("target", opt->target, kTargetHelp)->required();
    cmd->add_option("address", opt->address_text, "start address (0x... or decimal)")->required();
    cmd->add_option("length", opt->length_text, "bytes to read (decimal, 0x..., or with k/m/g)")->required();
    cmd->add_flag("--phys", opt->physical, "ADDR is guest-physical");
    cmd->add_flag("--virt", opt->virtual_, "ADDR is guest-virtual");
    cmd->add_option("--cr3", opt->cr3_text, "translate with this page-table root (default: the vCPU's CR3)");
    cmd->add_option("--vcpu", opt->vcpu, "translate with this vCPU's CR3 and paging mode (default 0)")
        ->check(CLI::Range(0, 4095));
    cmd->add_option("--out", opt->out, "write the raw bytes to FILE instead of a hex dump");
    cmd->add_flag("--json", opt->json, "Print a JSON document (bytes as hex unless --out)");
    cmd->callback([opt, &global] { run_read(*opt, global); });
}

}  // namespace hvpatch::cli
