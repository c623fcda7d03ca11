#include "introspect/virtual_memory.h"

#include <algorithm>

namespace hvpatch {

std::string VirtualMemory::read_cstring(GuestVirtAddr addr, std::size_t max) {
    std::string out;
    constexpr std::size_t kStep = 64;
    while (out.size() < max) {
        // Stay inside the current page so an unmapped next page does not
        // fail a string that ends before it.
        std::size_t to_page_end = 4096 - ((addr.value + out.size()) & 4095);
        std::size_t n = std::min({kStep, max - out.size(), to_page_end});
        std::vector<std::byte> chunk(n);
        read(addr + out.size(), chunk);
        for (std::byte b : chunk) {
            if (b == std::byte{0}) return out;
            out.push_back(static_cast<char>(b));
        }
    }
    return out;
}

}  // namespace hvpatch
