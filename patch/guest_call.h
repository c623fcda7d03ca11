// Calling a guest kernel function from the host, at a safe point.
//
// Some steps of patching need the guest kernel to run one of its own
// functions (allocate module memory, change page permissions). GuestCaller
// borrows a task that has just entered a syscall and makes it call the
// function, then puts the task back exactly where it was:
//
// 1. Safe point. Breakpoints (through the VMM's stub) on several hot syscall
//    entries; the first hit wins and every breakpoint is removed before
//    anything else happens. The hit is then checked from guest state, never
//    assumed: RIP exactly at the entry, CPL 0, RFLAGS.IF set, the per-CPU
//    preempt count of the CPU that vCPU runs as (GS base → CPU) zero
//    (ignoring PREEMPT_NEED_RESCHED), RSP inside the current task's stack
//    (task->stack .. + THREAD_SIZE, matching cpu_current_top_of_stack) with
//    room to spare, and 8-byte aligned (the kernel is built with
//    -mpreferred-stack-boundary=3: entries need not see RSP 8 mod 16, and on
//    the test guest half of them do not). A hit that fails a
//    check is skipped and the guest runs on; no acceptable hit within the
//    bound is Error(Guest) "no safe point within N s" with nothing changed.
// 2. The call. Arguments in rdi, rsi, rdx, rcx, r8, r9, rax = 0; RSP lowered
//    by 16 (the callee sees the alignment the syscall entry was called with)
//    with a return address that traps: an int3 byte in a function's tail in
//    .text, verified by decoding the function (only int3/nop after its last
//    ret/jmp up to the next symbol, nothing branches there), with a stub
//    breakpoint on it. Then ALL vCPUs run (the callee may send IPIs and
//    wait for them). The return is the trap hit with RSP == the lowered RSP
//    + 8, on whichever vCPU it arrives (the task may have migrated).
// 3. Restore only the general-purpose registers, RIP and RFLAGS on the vCPU
//    the return arrived on — never FPU/SSE state, segment bases or control
//    registers, which belong to whatever runs on that CPU now.
//
// SIGINT/SIGTERM (vmm/interrupt.h) abandon the wait for a safe point
// (nothing has changed yet); once the call has started it is finished
// first, and the interrupt is honoured by the next wait after it.
//
// A call that does not return within its bound leaves the guest in an
// unknown state (the borrowed task is somewhere inside the callee, and
// when it returns it runs into int3 padding): Error(Timeout) says so
// loudly. This has not been seen; nothing tries to recover from it.
//
// The machine is left paused after a call if it was paused before, running
// otherwise; in between the guest runs (both to reach a safe point and
// during the call).
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "patch/module_allocator.h"

namespace hvpatch {

struct GuestCallOptions {
    // Syscall entries whose first instruction is a safe point candidate.
    // openat/close/wait4/exit_group fire within tens of ms on an idle test
    // guest; read can stay cold for seconds (busybox cat uses sendfile).
    std::vector<std::string> safe_point_entries = {"__x64_sys_openat", "__x64_sys_close", "__x64_sys_wait4",
                                                   "__x64_sys_exit_group", "__x64_sys_read"};
    std::chrono::milliseconds safe_point_timeout{5000};
    std::chrono::milliseconds call_timeout{5000};
    // Stack the callee may use below the safe point's RSP (the task stack
    // must have at least this much room left).
    std::uint64_t min_stack_room = 8192;
};

// What happened in the last call, for reports and benchmarks.
struct GuestCallReport {
    std::string function;           // name (or hex address) of the callee
    std::uint64_t address = 0;
    std::string safe_point;         // the syscall entry used
    int call_vcpu = -1;             // vCPU the call started on
    int call_cpu = -1;              // guest CPU that vCPU ran as
    int return_vcpu = -1;           // vCPU the return arrived on
    std::uint64_t task = 0;         // task_struct borrowed for the call
    int skipped_hits = 0;           // safe point hits that failed a check
    std::vector<std::string> skip_reasons;  // why (at most the first few)
    std::uint64_t result = 0;       // rax
    std::chrono::nanoseconds safe_point_wait{0};  // from the start until a safe point was accepted
    std::chrono::nanoseconds call_time{0};        // from resuming into the callee until its return
    std::chrono::nanoseconds total{0};            // the whole call() including set-up and restore
};

// One call of a sequence made at a single safe point.
struct GuestCallRequest {
    std::uint64_t address = 0;
    std::string name;  // for messages
    std::vector<std::uint64_t> args;
    // If set and false for the result, the sequence stops after this call.
    std::function<bool(std::uint64_t)> stop_unless;
};

class GuestCaller {
public:
    // Borrows `kernel` (and its machine) for the caller's lifetime. Finds and
    // verifies the trap address at once; throws Error(Guest) if the kernel
    // has no usable int3 padding or lacks a safe point entry symbol.
    // The machine must be paused (GuestKernel::open needs that anyway).
    explicit GuestCaller(GuestKernel& kernel, GuestCallOptions options = {});

    // Calls `function` (a vmlinux symbol, or an address) with up to six
    // integer arguments and returns rax. Throws Error(Usage) for more than
    // six arguments, Error(Guest) when no safe point arrives (nothing
    // changed) or the trap is hit by an unexpected context, Error(Timeout)
    // when the callee does not return in time (guest state unknown).
    std::uint64_t call(std::string_view function, std::initializer_list<std::uint64_t> args);
    std::uint64_t call(std::uint64_t address, std::span<const std::uint64_t> args, std::string_view name = {});
    // Several calls on one borrowed task at one safe point: after each
    // return (at the trap, on whichever vCPU) the next call starts there, and
    // only after the last one are the task's registers restored. Saves a
    // safe-point wait per call. Returns the results of the calls made (fewer
    // than requested if a stop_unless said stop). Errors as call().
    std::vector<std::uint64_t> call_sequence(const std::vector<GuestCallRequest>& requests);

    // Guest memory for a patch module, from the guest's own module
    // allocator: module_alloc(size) up to 6.9, execmem_alloc(
    // EXECMEM_MODULE_DATA, size) from 6.10 (see module_allocator()). The
    // address is checked to be non-zero, inside the module area and within
    // ±2 GiB of the whole kernel image, else Error(Guest) (an allocation
    // that fails a check after it succeeded is freed again first). The
    // memory is PAGE_KERNEL (RW+NX) either way.
    std::uint64_t allocate_module_memory(std::uint64_t size);
    // set_memory_*(addr, pages): Error(Guest) unless the guest returns 0.
    void set_memory_ro(std::uint64_t addr, int pages);
    void set_memory_rw(std::uint64_t addr, int pages);
    void set_memory_x(std::uint64_t addr, int pages);
    void set_memory_nx(std::uint64_t addr, int pages);
    // Page permissions of a loaded patch in one call sequence: text RO+X,
    // rodata RO (data stays RW+NX as allocated). Error(Guest)
    // naming the first set_memory_* that did not return 0 (the later ones
    // are not made).
    void protect_module(std::uint64_t base, int text_pages, int rodata_pages);
    // The reverse, then frees base: text NX, text+rodata RW, free.
    void unprotect_and_free_module(std::uint64_t base, int text_pages, int rodata_pages, bool protected_before);
    // module_memfree(addr) or execmem_free(addr) (returns nothing).
    void free_module_memory(std::uint64_t addr);
    // Which allocator the guest has, e.g. "module_alloc" or
    // "execmem_alloc(EXECMEM_MODULE_DATA=4) in ..."; Error(Guest) if neither.
    std::string module_allocator();

    // The module area of this kernel: with execmem (6.10+) the range the
    // guest's execmem_info gives the allocation type; before, MODULES_VADDR
    // = _START_KERNEL_map + KERNEL_IMAGE_SIZE (1 GiB with
    // CONFIG_RANDOMIZE_BASE, else 512 MiB) to MODULES_END 0xffffffffff000000
    // (arch/x86/include/asm/pgtable_64_types.h).
    std::uint64_t modules_vaddr() const { return modules_vaddr_; }
    std::uint64_t modules_end() const { return modules_end_; }

    // The verified int3 padding byte calls return to.
    std::uint64_t trap_address() const { return trap_; }
    const GuestCallReport& last_call() const { return last_; }

private:
    struct SafePoint {
        int vcpu = -1;
        int cpu = -1;
        std::uint64_t task = 0;
        std::string entry;
        VcpuRegisters regs;
    };
    SafePoint find_safe_point();
    // Empty if the hit is a safe point, else why not.
    std::string check_safe_point(int vcpu, const VcpuRegisters& regs, SafePoint& out);
    void find_trap();
    void write_guest_u64(std::uint64_t addr, std::uint64_t value);
    void set_memory(std::string_view function, std::uint64_t addr, int pages);
    // Finds the allocator once (module_allocator() reports it).
    void find_allocator();

    GuestKernel& kernel_;
    Machine& machine_;
    GuestCallOptions options_;
    std::vector<std::pair<std::string, std::uint64_t>> entries_;
    std::uint64_t trap_ = 0;
    std::uint64_t modules_vaddr_ = 0, modules_end_ = 0;
    std::optional<ModuleAllocator> allocator_;
    GuestCallReport last_;
};

}  // namespace hvpatch
