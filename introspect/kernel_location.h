// Finding the guest kernel in a frozen VM from vCPU state and memory alone.
//
// 1. Page tables. A vCPU in kernel mode runs on kernel page tables. A vCPU
//    frozen in user mode under page-table isolation (PTI) runs on the user
//    copy, which maps only the entry code: the kernel copy is the PGD just
//    below it (the pair is allocated 8 KiB aligned, user half at +4 KiB), so
//    clearing CR3 bit 12 (and the PCID bits 0-11) gives the kernel's.
// 2. Kernel text. The IDT is mapped read-only at the fixed CPU-entry-area
//    address 0xfffffe0000000000 (CPU_ENTRY_AREA_RO_IDT, same in 4- and
//    5-level paging since 4.15); its gates point at the exception entry code
//    in kernel text, wherever KASLR put it.
// 3. The image. The kernel's high mapping (__START_KERNEL_map) keeps only
//    _text.._end mapped (cleanup_highmap()), so the mapped 2 MiB blocks
//    around the IDT's target are the kernel image. Under PTI the freed gaps
//    between text, rodata and data are unmapped too, so small holes inside
//    the image are stepped over.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "hvpatch/address.h"
#include "hvpatch/machine.h"
#include "introspect/kernel_memory.h"
#include "introspect/page_walk.h"

namespace hvpatch {

inline constexpr std::uint64_t kCpuEntryAreaIdt = 0xfffffe0000000000ULL;
inline constexpr std::uint64_t kStartKernelMap = 0xffffffff80000000ULL;
// MODULES_END (arch/x86/include/asm/pgtable_64_types.h), 4- and 5-level.
inline constexpr std::uint64_t kModulesEnd = 0xffffffffff000000ULL;
// _text without KASLR: __START_KERNEL_map + CONFIG_PHYSICAL_START (16 MiB).
inline constexpr std::uint64_t kDefaultKernelText = 0xffffffff81000000ULL;

struct KernelPageTables {
    std::uint64_t cr3 = 0;   // page-table root for kernel addresses (flags/PCID cleared)
    PagingLevels levels = PagingLevels::Four;
    int vcpu = 0;            // the vCPU whose CR3 was used
    bool from_user_copy = false;  // the vCPU was on PTI's user page tables
};

// Picks kernel page tables from a paused machine's vCPUs (a vCPU in kernel
// mode first). Throws Error(Guest) when no vCPU's tables map the IDT and the
// kernel text it points to (e.g. the guest is still in firmware or real mode).
KernelPageTables find_kernel_page_tables(Machine& machine);

// The kernel page tables as seen from one vCPU (its CR3, or under PTI the
// kernel half of its PGD pair). nullopt with `why` set when that vCPU's
// tables do not map the kernel (firmware, real mode, garbage CR3).
std::optional<KernelPageTables> kernel_page_tables_of_vcpu(Machine& machine, int vcpu, const VcpuRegisters& regs,
                                                           std::string* why);

struct KernelImage {
    GuestVirtAddr idt_target;  // divide-error entry point (asm_exc_divide_error)
    GuestVirtAddr start;       // first mapped 2 MiB block of the image
    std::uint64_t size = 0;    // bytes mapped contiguously from start
};

// The divide-error gate's target and the mapped image around it. Bounded:
// at most 1 GiB (KERNEL_IMAGE_SIZE) is probed, one walk per 2 MiB.
KernelImage find_kernel_image(KernelMemory& memory);

// The 64-bit target of IDT gate `vector` at the CPU entry area.
std::uint64_t read_idt_gate_target(VirtualMemory& memory, int vector);

}  // namespace hvpatch
