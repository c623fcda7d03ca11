// Guest RAM read straight out of the QEMU process on this host.
//
// QEMU keeps guest RAM in its own address space; its monitor command
// `gpa2hva` says where. Root (CAP_SYS_PTRACE, or the same uid with the
// ptrace checks passing) reads that memory with process_vm_readv while the
// guest runs, at memory speed and with no change to the VM: the fast path
// for a VM whose RAM is not a shared file (the default).
//
// The process is pinned with a pidfd: a read counts only if QEMU was still
// alive when it finished, so a pid reused after QEMU exits is never read.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hvpatch/error.h"

namespace hvpatch {

class ProcessMemory {
public:
    // Pins process `pid`. `who` names the VM in messages. Throws
    // Error(Unreachable) when the process is gone.
    ProcessMemory(pid_t pid, std::string who);
    ~ProcessMemory();
    ProcessMemory(const ProcessMemory&) = delete;
    ProcessMemory& operator=(const ProcessMemory&) = delete;

    pid_t pid() const { return pid_; }

    // Copies `out.size()` bytes from host virtual address `address` in the
    // process. Throws Error(Unreachable) when the process has exited (also
    // during the read), Error(Guest) when the address is not mapped in it
    // (memory unplugged underneath), Error(Unreachable) when the kernel
    // refuses access (EPERM).
    void read(std::uint64_t address, std::span<std::byte> out) const;

    // Tries to read one byte at `address`: "" when that works, else why
    // not, in words ("the kernel refused (EPERM): ..."), for the fallback
    // notice.
    std::string probe(std::uint64_t address) const;

    // Whether the process has exited (or is a zombie).
    bool exited() const;

private:
    // One thread's part of a read; `check_interrupts` only in the caller's thread.
    void read_serially(std::uint64_t address, std::span<std::byte> out, bool check_interrupts) const;
    Error exited_during_read() const;

    pid_t pid_;
    std::string who_;
    int pidfd_ = -1;
};

// Whether `tid` is a thread of process `pid` (/proc/PID/task/TID exists).
bool process_has_thread(pid_t pid, pid_t tid);
// The thread-group id (process) of thread `tid` from /proc/TID/status.
std::optional<pid_t> process_of_thread(pid_t tid);
// /proc/PID/cmdline split at NULs (at most 1 MiB read); empty when unreadable.
std::vector<std::string> process_command_line(pid_t pid);

}  // namespace hvpatch
