#include "introspect/guest_list.h"

#include <algorithm>
#include <unordered_set>

#include "hvpatch/error.h"

namespace hvpatch {

std::vector<std::uint64_t> walk_list(VirtualMemory& memory, std::uint64_t head, std::uint64_t node_offset,
                                     std::size_t limit, const std::string& what) {
    return walk_list(memory, head, node_offset, limit, [&] { return what; });
}

std::vector<std::uint64_t> walk_list(VirtualMemory& memory, std::uint64_t head, std::uint64_t node_offset,
                                     std::size_t limit, const std::function<std::string()>& what) {
    // Short lists (most thread groups have one or a few threads) look for a
    // repeat among the nodes seen so far; longer ones switch to a hash set.
    constexpr std::size_t kLinearCheck = 32;
    std::vector<std::uint64_t> entries;
    std::unordered_set<std::uint64_t> seen;
    std::uint64_t node = head;
    while (true) {
        std::uint64_t next;
        try {
            next = memory.read_u64(GuestVirtAddr{node});
        } catch (const Error& e) {
            throw Error(ErrorKind::Guest, what() + ": list node at " + hex(node) + " unreadable: " + e.what());
        }
        if (next == head) return entries;
        bool repeat;
        if (entries.size() < kLinearCheck) {
            repeat = std::find(entries.begin(), entries.end(), next - node_offset) != entries.end();
        } else {
            if (seen.empty())
                for (std::uint64_t e : entries) seen.insert(e + node_offset);
            repeat = !seen.insert(next).second;
        }
        if (repeat)
            throw Error(ErrorKind::Guest, what() + ": list loops back to " + hex(next) + " without reaching its head");
        if (entries.size() >= limit)
            throw Error(ErrorKind::Guest, what() + ": more than " + std::to_string(limit) + " entries");
        entries.push_back(next - node_offset);
        node = next;
    }
}

}  // namespace hvpatch
