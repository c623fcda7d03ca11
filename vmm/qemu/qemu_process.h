// Finding a local QEMU's process and where guest RAM lives inside it, for
// reading guest memory out of the process (ProcessMemory).
//
// Which process: the peer of the QMP socket when there is one, else the
// process of the vCPU threads QEMU itself reports (query-cpus-fast
// "thread-id"). Either way every vCPU thread must be a thread of that
// process, and when the VM has a UUID the process's command line must
// carry it: a pid from another pid namespace or another host is refused,
// never read.
//
// Where: HMP `gpa2hva` for the first and the last byte of each RAM range;
// the range must be contiguous in QEMU's address space (one RAM block).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hvpatch/machine.h"
#include "vmm/qemu/qemu_monitor.h"

namespace hvpatch {

// The host virtual address in QEMU's reply to `gpa2hva`
// ("Host virtual address for 0x1000000 (pc.ram) is 0x7f...");
// nullopt when QEMU says the address is not RAM ("No memory is mapped at
// address ...", "Memory at address ... is not RAM"). Throws
// Error(Protocol) for anything else (e.g. a QEMU without the command).
std::optional<std::uint64_t> parse_gpa2hva_reply(const std::string& reply);

struct QemuProcessClues {
    std::optional<pid_t> socket_peer;  // the monitor's peer process, if known
    std::vector<pid_t> vcpu_threads;   // query-cpus-fast thread-id, one per vCPU
    std::string uuid;                  // query-uuid; "" or all zeros when none
};

// The QEMU process the clues point to. Throws Error(Unreachable) saying why
// none can be trusted.
pid_t find_qemu_process(const QemuProcessClues& clues, const std::string& who);

// The host address in QEMU's process of the start of each RAM range, in
// the ranges' order. Throws Error(Unreachable) when QEMU cannot say or its
// answers do not fit the layout.
std::vector<std::uint64_t> ram_host_addresses(QemuMonitor& monitor,
                                              const std::vector<MemoryAccessInfo::Range>& ranges,
                                              const std::string& who);

}  // namespace hvpatch
