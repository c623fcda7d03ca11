// The narrow interface every guest-memory decoder reads through, so that the
// decoders run unchanged on a live VM and on synthetic images in unit tests.
#pragma once

#include <cstddef>
#include <span>

#include "hvpatch/address.h"

namespace hvpatch {

class PhysicalMemoryReader {
public:
    virtual ~PhysicalMemoryReader() = default;
    // Fills `out` with guest-physical memory starting at `addr`. Throws
    // Error(ErrorKind::Guest) naming the address when any byte of the range is
    // not backed by guest RAM.
    virtual void read_physical(GuestPhysAddr addr, std::span<std::byte> out) = 0;
};

}  // namespace hvpatch
