// Machine backend for a QEMU reachable through its monitor: a QMP socket
// (QmpSocketMonitor) or libvirt's monitor pass-through (LibvirtMachine
// derives from this class and adds what libvirt knows).
//
// Control and identity go through the monitor (QMP); registers, breakpoints
// and memory writes through QEMU's gdbstub, which hvpatch starts on a private UNIX
// socket when it first needs it (HMP `gdbserver`) and removes again. Guest
// RAM is read, fastest first: from the shared RAM file when the memory
// backend is a `memory-backend-file` with share=on; else out of the QEMU
// process (same host, `gpa2hva`, process_vm_readv); else through the stub,
// pausing a running VM for each read. The options can name one path instead.
//
// Run control: while no gdb client is attached, pause/resume are the
// monitor's stop/cont. Once attached, they go through the stub (0x03 / `c`), because
// QEMU reports every stop to an attached client and the stub's idea of the
// run state must stay in step with ours. Attaching stops a running VM.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "hvpatch/machine.h"
#include "vmm/qemu/gdb_client.h"
#include "vmm/qemu/gdb_registers.h"
#include "vmm/qemu/qemu_monitor.h"
#include "vmm/qemu/process_memory.h"
#include "vmm/qemu/ram_file.h"
#include "vmm/qemu/ram_layout.h"
#include "vmm/qemu/stopped_page_cache.h"

namespace hvpatch {

struct QemuMachineOptions {
    // Owner given to the private gdbstub socket directory, for a QEMU that
    // runs as another user than hvpatch (libvirt's DAC label); unset: root
    // only.
    std::optional<std::pair<uid_t, gid_t>> gdb_socket_owner;
    // The one way to read guest RAM (an error if it cannot be used), or
    // nullopt: the fastest that works.
    std::optional<MemoryAccessInfo::Path> memory_path;
};

class QemuMachine : public Machine {
public:
    // `name` is how the target is named in messages ("qmp:/path").
    QemuMachine(std::unique_ptr<QemuMonitor> monitor, std::string name, QemuMachineOptions options = {});
    // Puts the VM back in the run state it was found in, detaches from the
    // stub and removes the stub if hvpatch started it. Never throws.
    ~QemuMachine() override;

    std::string name() const override { return name_; }
    std::string accelerator() override;
    MachineIdentity identity() override;
    RunState run_state() override;
    void pause() override;
    void resume() override;
    void set_run_state_on_close(RunState state) override { initially_running_ = state == RunState::Running; }
    StopStats stop_stats() const override;
    void reset_stop_stats() override;
    std::vector<int> vcpus() override;
    VcpuRegisters read_registers(int vcpu) override;
    void write_registers(int vcpu, const VcpuRegisters& regs) override;
    MemoryAccessInfo memory_access() override { return memory_; }
    void read_physical(GuestPhysAddr addr, std::span<std::byte> out) override;
    void write_physical(GuestPhysAddr addr, std::span<const std::byte> data) override;
    void set_breakpoint(GuestVirtAddr addr) override;
    void clear_breakpoint(GuestVirtAddr addr) override;
    std::optional<BreakpointHit> run_until_breakpoint(std::chrono::milliseconds timeout) override;

    // The QMP status string QEMU reported when the machine was opened.
    const std::string& initial_status() const { return initial_status_; }

private:
    void discover_memory();
    // Each sets up one way of reading guest RAM or throws Error saying why
    // it cannot be used.
    void open_ram_file();
    void open_process_memory();
    void read_through_gdbstub(GuestPhysAddr addr, std::span<std::byte> out);
    // `pieces`: the access as ram_pieces split it.
    void read_process_memory(const std::vector<RamPiece>& pieces, std::span<std::byte> out);
    GdbClient& gdb();
    void attach_gdb();
    void release_gdb();
    void require_paused(const std::string& what) const;
    // Every change of our view of the run state goes through here, which
    // keeps the StopStats.
    void set_running(bool running);
    void select_vcpu(int vcpu);
    void use_physical_addresses(bool physical);
    std::vector<RamPiece> ram_pieces(GuestPhysAddr addr, std::uint64_t len, const char* what) const;
    int vcpu_of_thread(const std::string& thread) const;

    std::unique_ptr<QemuMonitor> monitor_;
    std::string name_;
    QemuMachineOptions options_;
    std::string initial_status_;
    bool initially_running_ = false;  // and the run state restored on close
    bool running_ = false;  // our view of the VM's run state (change it with set_running)
    StopStats stops_;
    bool stopped_by_us_ = false;  // the current stop is ours (not how the VM was found)
    std::chrono::steady_clock::time_point stopped_at_{};
    bool ran_while_found_paused_ = false;  // a VM found paused was let run (guest calls)

    MemoryAccessInfo memory_;
    std::unique_ptr<RamFile> ram_;
    std::unique_ptr<ProcessMemory> process_;
    std::vector<std::uint64_t> ram_host_addresses_;  // per RAM range, in QEMU's process
    // Small reads while the VM is stopped, for the paths where each read
    // costs a system call or a round trip (not the mapped file).
    StoppedPageCache stopped_pages_;
    bool page_aligned_ram_ = false;  // every RAM range starts and ends on a page
    std::vector<int> vcpu_indices_;
    std::vector<pid_t> vcpu_threads_;  // host thread ids, as query-cpus-fast reports them

    std::unique_ptr<GdbClient> gdb_;
    std::optional<GdbRegisterMap> registers_;
    bool own_gdbserver_ = false;
    std::string private_dir_;
    std::string selected_thread_;
    std::optional<bool> physical_mode_;
    std::set<std::uint64_t> breakpoints_;
};

}  // namespace hvpatch
