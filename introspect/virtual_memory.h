// Guest-virtual memory as every kernel-structure decoder reads it. The
// decoders depend only on this interface, so unit tests run them on
// synthetic images and the CLI runs them on a live, paused VM.
//
// All reads are of untrusted guest data: a read of an unmapped or
// non-RAM address throws Error(ErrorKind::Guest) naming the address.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "hvpatch/address.h"

namespace hvpatch {

class VirtualMemory {
public:
    virtual ~VirtualMemory() = default;
    virtual void read(GuestVirtAddr addr, std::span<std::byte> out) = 0;

    // Convenience readers (little-endian, x86-64).
    template <typename T>
    T read_value(GuestVirtAddr addr) {
        T v{};
        read(addr, std::as_writable_bytes(std::span(&v, 1)));
        return v;
    }
    std::uint64_t read_u64(GuestVirtAddr addr) { return read_value<std::uint64_t>(addr); }
    std::uint32_t read_u32(GuestVirtAddr addr) { return read_value<std::uint32_t>(addr); }
    std::uint16_t read_u16(GuestVirtAddr addr) { return read_value<std::uint16_t>(addr); }
    std::uint8_t read_u8(GuestVirtAddr addr) { return read_value<std::uint8_t>(addr); }
    std::vector<std::byte> read_bytes(GuestVirtAddr addr, std::size_t size) {
        std::vector<std::byte> out(size);
        read(addr, out);
        return out;
    }
    // A NUL-terminated string of at most `max` bytes (without the NUL); the
    // string ends at `max` if no NUL comes first. Reads in small steps, so a
    // string near the end of a mapping is still readable.
    std::string read_cstring(GuestVirtAddr addr, std::size_t max);
};

}  // namespace hvpatch
