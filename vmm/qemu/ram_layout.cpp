#include "vmm/qemu/ram_layout.h"

#include <cinttypes>
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

// Matches e.g.
// "    0000000000000000-000000001fffffff (prio 0, ram): alias ram-below-4g @ram0 0000000000000000-000000001fffffff"
std::optional<MemoryAccessInfo::Range> parse_alias_line(const std::string& line, const char* alias) {
    std::size_t at = line.find(std::string("alias ") + alias + " @");
    if (at == std::string::npos) return std::nullopt;
    unsigned long long gpa_start = 0, gpa_end = 0, off_start = 0, off_end = 0;
    if (std::sscanf(line.c_str(), " %llx-%llx", &gpa_start, &gpa_end) != 2) return std::nullopt;
    std::size_t block = line.find(' ', line.find('@', at));
    if (block == std::string::npos) return std::nullopt;
    if (std::sscanf(line.c_str() + block, " %llx-%llx", &off_start, &off_end) != 2) return std::nullopt;
    if (gpa_end < gpa_start || off_end < off_start || off_end - off_start != gpa_end - gpa_start)
        return std::nullopt;
    return MemoryAccessInfo::Range{GuestPhysAddr{gpa_start}, gpa_end - gpa_start + 1, off_start};
}

}  // namespace

std::vector<MemoryAccessInfo::Range> parse_ram_layout(const std::string& mtree_text,
                                                      std::uint64_t ram_size) {
    std::optional<MemoryAccessInfo::Range> below, above;
    std::istringstream in(mtree_text);
    std::string line;
    // The first address space listed ("memory") is the system one; later
    // ones repeat the same aliases, so the first match of each wins.
    while (std::getline(in, line)) {
        if (!below) below = parse_alias_line(line, "ram-below-4g");
        if (!above) above = parse_alias_line(line, "ram-above-4g");
    }
    std::vector<MemoryAccessInfo::Range> ranges;
    if (below) ranges.push_back(*below);
    if (above) ranges.push_back(*above);
    if (ranges.empty()) {
        ranges.push_back({GuestPhysAddr{0}, ram_size, 0});
        return ranges;
    }
    for (const auto& r : ranges)
        if (r.ram_offset > ram_size || r.size > ram_size - r.ram_offset)
            throw Error(ErrorKind::Protocol, "QEMU memory map: RAM alias at " + hex(r.start.value) +
                                                 " lies outside the " + std::to_string(ram_size) +
                                                 "-byte RAM block");
    return ranges;
}

std::optional<std::vector<RamPiece>> split_ram_access(const std::vector<MemoryAccessInfo::Range>& ranges,
                                                      GuestPhysAddr addr, std::uint64_t len) {
    std::vector<RamPiece> pieces;
    std::uint64_t done = 0;
    // Each step consumes at least one byte or fails, and there are at most
    // as many steps as ranges: a range cannot be entered twice.
    while (done < len) {
        std::uint64_t at = addr.value + done;
        if (at < addr.value) return std::nullopt;  // wrapped past 2^64
        bool found = false;
        for (std::size_t i = 0; i < ranges.size(); ++i) {
            const auto& r = ranges[i];
            if (at < r.start.value || at - r.start.value >= r.size) continue;
            std::uint64_t rel = at - r.start.value;
            std::uint64_t n = std::min(len - done, r.size - rel);
            pieces.push_back({i, rel, n, done});
            done += n;
            found = true;
            break;
        }
        if (!found || pieces.size() > ranges.size()) return std::nullopt;
    }
    return pieces;
}

}  // namespace hvpatch
