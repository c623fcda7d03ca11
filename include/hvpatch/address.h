// Guest addresses as distinct types: a physical address is never silently
// used as a virtual one.
#pragma once

#include <compare>
#include <cstdint>
#include <string>

namespace hvpatch {

struct GuestPhysAddr {
    std::uint64_t value = 0;
    auto operator<=>(const GuestPhysAddr&) const = default;
    GuestPhysAddr operator+(std::uint64_t off) const { return {value + off}; }
};

struct GuestVirtAddr {
    std::uint64_t value = 0;
    auto operator<=>(const GuestVirtAddr&) const = default;
    GuestVirtAddr operator+(std::uint64_t off) const { return {value + off}; }
};

// "0x" followed by 16 lower-case hex digits; used in every message and output.
std::string hex(std::uint64_t value);
std::string hex_short(std::uint64_t value);  // "0x" + minimal digits

}  // namespace hvpatch
