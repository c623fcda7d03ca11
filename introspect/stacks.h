// The stacks a task may be unwound across on x86-64, for Linux 6.1.
//
// The kernel's get_stack_info() (arch/x86/kernel/dumpstack_64.c,
// dumpstack.c) knows five kinds of stack. The caller reads the per-task and
// per-CPU values named below from the guest; this file turns them into
// address ranges, with the sizes and layouts of 6.1 (x86-64, no KASAN):
//
//   task       task->stack .. + THREAD_SIZE                 16 KiB (PAGE_SIZE << 2)
//   IRQ        per-CPU hardirq_stack_ptr points at the top-most word:
//              [ptr + 8 - IRQ_STACK_SIZE, ptr + 8)           16 KiB (PAGE_SIZE << 2)
//              (6.2+ moved it into pcpu_hot.hardirq_stack_ptr; same meaning)
//   exception  per-CPU cea_exception_stacks → struct cea_exception_stacks
//              in the CPU entry area: for each of DF, NMI, DB, MCE, VC, VC2
//              a 4 KiB guard page then an EXCEPTION_STKSZ (8 KiB,
//              PAGE_SIZE << 1) stack, then a final 4 KiB guard (IST_top_guard):
//                 +0x0000 guard  +0x1000 #DF   .. +0x3000
//                 +0x3000 guard  +0x4000 NMI   .. +0x6000
//                 +0x6000 guard  +0x7000 #DB   .. +0x9000
//                 +0x9000 guard  +0xa000 #MC   .. +0xc000
//                 +0xc000 guard  +0xd000 #VC   .. +0xf000
//                 +0xf000 guard  +0x10000 #VC2 .. +0x12000
//                 +0x12000 guard .. +0x13000 (19 pages)
//              #VC/#VC2 are always laid out in the CEA but backed only on
//              SEV-ES guests (CONFIG_AMD_MEM_ENCRYPT); unbacked, their reads
//              fail and the walk says so.
//   entry      cpu_entry_area(cpu)->entry_stack_page: one page right after
//              the CEA's GDT page. get_cpu_entry_area(cpu) is
//              CPU_ENTRY_AREA_PER_CPU + cpu * sizeof(struct cpu_entry_area),
//              CPU_ENTRY_AREA_PER_CPU = 0xfffffe0000000000 + PAGE_SIZE (the
//              read-only IDT page comes first). 6.1.y has no CEA
//              randomisation (6.2 added it with a per-CPU pointer).
//              sizeof(struct cpu_entry_area) depends on the config (TSS, debug
//              store buffers): take it from BTF.
//
// Soft-IRQs run on the IRQ stack on x86-64 (STACK_TYPE_SOFTIRQ is 32-bit
// only). The kernel also records a `next_sp` per stack (the IRQ stack's top
// word, the exception stack's pt_regs->sp) for the frame-less dumper; the
// ORC unwinder never uses it: it crosses stacks through pt_regs and
// SP_INDIRECT entries, and so does unwind_stack().
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "introspect/orc_unwind.h"

namespace hvpatch::x86_64_6_1 {

inline constexpr std::uint64_t kPageSize = 4096;
inline constexpr std::uint64_t kThreadSize = 4 * kPageSize;          // THREAD_SIZE
inline constexpr std::uint64_t kIrqStackSize = 4 * kPageSize;        // IRQ_STACK_SIZE
inline constexpr std::uint64_t kExceptionStackSize = 2 * kPageSize;  // EXCEPTION_STKSZ
inline constexpr std::uint64_t kEntryStackSize = kPageSize;          // sizeof(struct entry_stack)
inline constexpr std::uint64_t kCeaExceptionStacksSize = 19 * kPageSize;  // sizeof(struct cea_exception_stacks)

// Values read from the guest for one task on one CPU. A zero pointer
// means "not there" (e.g. hardirq_stack_ptr before the CPU came up) and
// leaves that stack out.
struct StackInputs {
    std::uint64_t task_stack = 0;            // task->stack
    std::uint64_t hardirq_stack_ptr = 0;     // per_cpu(hardirq_stack_ptr, cpu)
    std::uint64_t cea_exception_stacks = 0;  // per_cpu(cea_exception_stacks, cpu)
    std::uint64_t entry_stack = 0;           // &cpu_entry_area->entry_stack_page (see task_stacks.cpp)
    // Sizes: the 6.1 defaults; KASAN kernels double the first three.
    std::uint64_t thread_size = kThreadSize;
    std::uint64_t irq_stack_size = kIrqStackSize;
    std::uint64_t exception_stack_size = kExceptionStackSize;
};

// The task stack alone (what a sleeping task may use).
std::optional<StackArea> task_stack_area(std::uint64_t task_stack, std::uint64_t thread_size = kThreadSize);
// Every stack of a task running on that CPU: task, IRQ, the six exception
// stacks, entry. Ranges that would wrap around the address space are left
// out (they come from guest data).
std::vector<StackArea> stack_areas(const StackInputs& inputs);

// A stack_of function for UnwindContext over a fixed list of areas.
std::function<std::optional<StackArea>(std::uint64_t)> stack_lookup(std::vector<StackArea> areas);

}  // namespace hvpatch::x86_64_6_1
