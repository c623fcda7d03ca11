// x86-64 page-table walker over guest-physical memory.
//
// Supports 4-level (48-bit) and 5-level (57-bit, CR4.LA57) paging, 1 GiB and
// 2 MiB pages, and CR3 values carrying a PCID (CR4.PCIDE: bits 0-11) or the
// "no flush" bit 63. Physical addresses are masked to 52 bits
// (the architectural maximum). The guest writes these tables, so every entry
// is untrusted: reserved bits and reads outside RAM give a failure with the
// level, entry address and entry value, never a crash; a walk is at most five
// reads.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "hvpatch/address.h"
#include "hvpatch/memory.h"

namespace hvpatch {

enum class PagingLevels { Four = 4, Five = 5 };

// Paging mode from CR4 (LA57 is bit 12).
PagingLevels paging_levels_from_cr4(std::uint64_t cr4);

struct Translation {
    GuestPhysAddr phys;
    std::uint64_t page_size = 0;  // 4 KiB, 2 MiB or 1 GiB
    bool writable = false;
    bool user = false;
    bool no_execute = false;
};

struct TranslationFailure {
    enum class Reason { NonCanonical, NotPresent, ReservedBits, TableUnreadable } reason;
    int level = 0;                  // 5..1 (PML5 .. PT) where the walk stopped
    GuestPhysAddr entry_address;    // address of the entry read (or attempted)
    std::uint64_t entry = 0;        // its value (0 when unreadable)
    // "0xffff... not mapped: PML4 entry at 0x... is not present (0x0)"
    std::string describe(GuestVirtAddr va) const;
};

struct WalkResult {
    std::optional<Translation> translation;  // set on success
    std::optional<TranslationFailure> failure;  // set on failure
    bool ok() const { return translation.has_value(); }
};

class PageWalker {
public:
    PageWalker(PhysicalMemoryReader& memory, std::uint64_t cr3, PagingLevels levels);

    WalkResult walk(GuestVirtAddr va) const;
    // Throws Error(Guest) with TranslationFailure::describe() on failure.
    GuestPhysAddr translate(GuestVirtAddr va) const;
    // Reads virtual memory across page boundaries; throws Error(Guest) naming
    // the first address that does not translate or cannot be read.
    void read_virtual(GuestVirtAddr va, std::span<std::byte> out) const;

    std::uint64_t cr3() const { return cr3_; }
    PagingLevels levels() const { return levels_; }

private:
    PhysicalMemoryReader& memory_;
    std::uint64_t cr3_;
    PagingLevels levels_;
};

}  // namespace hvpatch
