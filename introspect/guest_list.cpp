#include "introspect/guest_list.h"

#include <unordered_set>

#include "hvpatch/error.h"

namespace hvpatch {

std::vector<std::uint64_t> walk_list(VirtualMemory& memory, std::uint64_t head, std::uint64_t node_offset,
                                     std::size_t limit, const std::string& what) {
    std::vector<std::uint64_t> entries;
    std::unordered_set<std::uint64_t> seen{head};
    std::uint64_t node = head;
    while (true) {
        std::uint64_t next;
        try {
            next = memory.read_u64(GuestVirtAddr{node});
        } catch (const Error& e) {
            throw Error(ErrorKind::Guest, what + ": list node at " + hex(node) + " unreadable: " + e.what());
        }
        if (next == head) return entries;
        if (!seen.insert(next).second)
            throw Error(ErrorKind::Guest, what + ": list loops back to " + hex(next) + " without reaching its head");
        if (entries.size() >= limit)
            throw Error(ErrorKind::Guest, what + ": more than " + std::to_string(limit) + " entries");
        entries.push_back(next - node_offset);
        node = next;
    }
}

}  // namespace hvpatch
