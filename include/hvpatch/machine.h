// The Machine interface: everything hvpatch needs from a VMM, and nothing
// about kernels. Backends live in vmm/ (QEMU via QMP + gdbstub; libvirt later).
//
// Run-state contract: a Machine remembers the run state it found the VM in
// when it was opened and restores exactly that state when it is destroyed,
// also when unwinding from an error or an interrupt (SIGINT/SIGTERM).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hvpatch/address.h"
#include "hvpatch/memory.h"

namespace hvpatch {

// One vCPU's architectural state as hvpatch uses it. Segment selectors are
// 16-bit values; CPL is the low two bits of CS.
struct VcpuRegisters {
    std::uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rbp = 0, rsp = 0;
    std::uint64_t r8 = 0, r9 = 0, r10 = 0, r11 = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
    std::uint64_t rip = 0, rflags = 0;
    std::uint16_t cs = 0, ss = 0, ds = 0, es = 0, fs = 0, gs = 0;
    std::uint64_t fs_base = 0, gs_base = 0, kernel_gs_base = 0;
    std::uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0, efer = 0;

    int cpl() const { return cs & 3; }
    bool operator==(const VcpuRegisters&) const = default;
};

// How guest RAM is reached; reported by `hvpatch inspect` and named in
// every audit record. Fastest first: a shared RAM file mapped into hvpatch,
// the QEMU process's own memory (same host, ptrace rights), the gdbstub
// (anywhere; each read of a running guest pauses it briefly).
struct MemoryAccessInfo {
    enum class Path { MappedFile, ProcessMemory, GdbStub } path = Path::GdbStub;
    std::string ram_file;            // path of the shared RAM file, if mapped
    int qemu_pid = 0;                // the QEMU process read, for ProcessMemory
    // Why a faster path is not in use ("" when the fastest possible one is,
    // or the operator chose the path): told to the operator once.
    std::string notice;
    std::uint64_t ram_size = 0;      // bytes of guest RAM
    struct Range {                   // guest-physical range backed by RAM
        GuestPhysAddr start;
        std::uint64_t size = 0;
        std::uint64_t ram_offset = 0;  // offset of `start` in the RAM block
    };
    std::vector<Range> ranges;

    // True when guest memory can be read while the guest runs without
    // pausing it (a shared file, the process's memory).
    bool reads_while_running() const { return path != Path::GdbStub; }
};

// "mapped-file", "process-memory", "gdbstub": the names in --json output,
// audit records and --memory-path.
const char* memory_path_name(MemoryAccessInfo::Path path);
// The inverse, with "auto" (or "") giving nullopt; Error(Usage) naming the
// valid names for anything else.
std::optional<MemoryAccessInfo::Path> memory_path_from_name(const std::string& name);

struct BreakpointHit {
    int vcpu = 0;          // index of the vCPU that hit it
    GuestVirtAddr address;
};

enum class RunState { Running, Paused };

// How often and how long a Machine has had the VM stopped: every interval
// from stopping a running VM to letting it run again, whatever the reason
// (a freeze, a breakpoint hit, a gdbstub read of a running VM). A stop still
// in progress counts up to now. A VM found paused is not stopped by
// hvpatch until hvpatch has let it run.
struct StopStats {
    int stops = 0;
    std::chrono::nanoseconds total{0}, longest{0};
};

// Whether `uuid` is one the VMM was given: not empty and not all zeros
// (QEMU reports 00000000-... for a VM started without -uuid).
bool is_real_uuid(const std::string& uuid);

// Who the VM is, as its VMM names it. State kept outside the guest is keyed
// by `key()`: the UUID when the VMM has a real one, else the target name.
struct MachineIdentity {
    std::string uuid;  // "" or all-zero when the VMM was given none
    std::string name;  // the VM's name, "" if none
    std::string target;  // Machine::name()
    std::string connection;  // libvirt connection URI ("qemu:///system"); "" for other backends
    // A file-name-safe key: "uuid-<uuid>" or "target-<sanitised target>".
    std::string key() const;
};

// A place the VMM keeps for hvpatch's own record of a VM, travelling with
// the VM's definition (libvirt: one element of the domain's <metadata>, in
// hvpatch's XML namespace, so that `virsh dumpxml` shows it and another
// host or a fresh hvpatch reads it back).
class VmRecordStore {
public:
    virtual ~VmRecordStore() = default;
    // Where the record lives, for messages: "<metadata> of domain web-01 (qemu:///system)".
    virtual std::string location() const = 0;
    // The stored element (XML text, in kVmRecordNamespace), or nullopt when none is stored.
    virtual std::optional<std::string> read() = 0;
    // Replaces the element: in the running domain and, where the domain has
    // a persistent definition, in that too. Throws Error naming the domain.
    virtual void write(const std::string& element_xml) = 0;
    // Removes the element (both places). Removing an absent one is no error.
    virtual void remove() = 0;
};

// hvpatch's XML namespace in libvirt domain metadata, and its prefix.
inline constexpr const char* kVmRecordNamespace = "http://hvpatch.dev/xmlns/libvirt/state/1";
inline constexpr const char* kVmRecordPrefix = "hvpatch";

class Machine : public PhysicalMemoryReader {
public:
    ~Machine() override = default;

    // Human-readable name of the target ("qmp:/run/vm.sock") for messages.
    virtual std::string name() const = 0;
    // "kvm" or "tcg".
    virtual std::string accelerator() = 0;
    virtual MachineIdentity identity() = 0;
    // The VMM's record store for this VM, or nullptr when the VMM has none
    // (a bare QEMU: hvpatch then keeps its record in its state directory).
    virtual VmRecordStore* record_store() { return nullptr; }

    virtual RunState run_state() = 0;
    // Stops every vCPU. Idempotent.
    virtual void pause() = 0;
    // Lets every vCPU run. Idempotent.
    virtual void resume() = 0;
    // A backend that puts the VM back in the run state it was found in when
    // it is closed (QEMU's does) leaves it in `state` instead. For a caller
    // that learns the VM was found paused by someone who can no longer
    // resume it (an hvpatch killed while it had the guest paused).
    virtual void set_run_state_on_close(RunState state) { (void)state; }
    // What the guest saw of hvpatch since the last reset: StopStats.
    virtual StopStats stop_stats() const = 0;
    virtual void reset_stop_stats() = 0;

    // vCPU indices, 0-based, in QEMU's cpu-index order.
    virtual std::vector<int> vcpus() = 0;
    // Register access needs the VM paused (throws Error(Guest) otherwise).
    virtual VcpuRegisters read_registers(int vcpu) = 0;
    // Writes only the fields that differ from the current values.
    virtual void write_registers(int vcpu, const VcpuRegisters& regs) = 0;

    virtual MemoryAccessInfo memory_access() = 0;
    // PhysicalMemoryReader::read_physical reads by memory_access().path;
    // through the stub, a read while the VM runs pauses it for that read.
    // Writes always go through the stub so that a TCG vCPU does not keep
    // executing stale translations of code written behind its back.
    virtual void write_physical(GuestPhysAddr addr, std::span<const std::byte> data) = 0;

    // Software breakpoints on guest-virtual addresses (kernel addresses: the
    // stub translates with the current vCPU's page tables).
    virtual void set_breakpoint(GuestVirtAddr addr) = 0;
    virtual void clear_breakpoint(GuestVirtAddr addr) = 0;
    // Resumes the VM and waits until a breakpoint is hit (VM paused again,
    // returns the hit) or the timeout passes (VM paused again, returns
    // nullopt).
    virtual std::optional<BreakpointHit> run_until_breakpoint(std::chrono::milliseconds timeout) = 0;
};

// Opens a target named on the command line: "qmp:PATH" (a QEMU's QMP
// socket), else a libvirt domain by name or UUID on `connection` (a libvirt
// URI; "" = as virsh chooses: $LIBVIRT_DEFAULT_URI, else qemu:///system).
// Throws Error(Usage) for a malformed target, Error(Unreachable) when the
// target cannot be reached or does not exist. `memory_path`: the one way to
// read guest RAM (Error(Unreachable) if it cannot be used); nullopt = the
// fastest that works.
std::unique_ptr<Machine> open_machine(const std::string& target, const std::string& connection = "",
                                      std::optional<MemoryAccessInfo::Path> memory_path = std::nullopt);

// Names of the running (or paused) domains on a libvirt connection, for
// `fleet --all-running`. Throws Error(Unreachable) when libvirt cannot be reached.
std::vector<std::string> list_running_domains(const std::string& connection = "");

// Pauses the VM for the guard's lifetime if it was running; leaves a VM that
// was already paused as it was.
class PauseGuard {
public:
    explicit PauseGuard(Machine& machine);
    ~PauseGuard();
    PauseGuard(const PauseGuard&) = delete;
    PauseGuard& operator=(const PauseGuard&) = delete;
    // Time the guest has been paused by this guard so far.
    std::chrono::nanoseconds paused_for() const;

private:
    Machine& machine_;
    bool paused_by_us_ = false;
    std::chrono::steady_clock::time_point start_;
};

}  // namespace hvpatch
