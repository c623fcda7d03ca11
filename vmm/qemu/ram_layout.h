// Where guest RAM sits in the guest-physical address space of a QEMU x86
// machine, read from the monitor's `info mtree`.
//
// QEMU's pc and q35 machines split RAM: the first part ("ram-below-4g")
// starts at 0, the rest ("ram-above-4g") at 4 GiB, and the split point
// depends on machine type and RAM size (q35: 2 GiB or 2.75 GiB). Both are
// aliases into one RAM block, so a guest-physical address maps to an offset in
// the RAM block (and in a shared RAM file) by the alias's own offset.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hvpatch/machine.h"

namespace hvpatch {

// Parses the `ram-below-4g` / `ram-above-4g` alias lines of `info mtree`.
// When neither is present (other machine types), RAM is one range at 0 of
// `ram_size` bytes. Throws Error(Protocol) when the aliases exceed ram_size.
std::vector<MemoryAccessInfo::Range> parse_ram_layout(const std::string& mtree_text,
                                                      std::uint64_t ram_size);

// One piece of a guest-physical access that lies inside one RAM range.
struct RamPiece {
    std::size_t range = 0;          // index into the ranges
    std::uint64_t offset_in_range = 0;
    std::uint64_t length = 0;
    std::uint64_t buffer_offset = 0;  // where the piece starts in the caller's buffer
};

// Splits [addr, addr+len) into pieces, one per RAM range it touches, in
// address order. nullopt when any byte of it is not RAM (a hole between
// ranges, or past the end). A range crossing from one RAM range into an
// adjacent one is split there. len 0 gives no pieces.
std::optional<std::vector<RamPiece>> split_ram_access(const std::vector<MemoryAccessInfo::Range>& ranges,
                                                      GuestPhysAddr addr, std::uint64_t len);

}  // namespace hvpatch
