// Guest-virtual memory for unit tests: mapped regions of zeroes that a test
// fills in; reading anything else throws Error(Guest) as the real reader
// does. Counts reads so tests can check walks stay bounded.
#pragma once

#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/virtual_memory.h"

namespace hvpatch::test {

class RegionMemory : public VirtualMemory {
public:
    void map(std::uint64_t base, std::size_t size) { regions_[base].assign(size, std::byte{0}); }
    void read(GuestVirtAddr addr, std::span<std::byte> out) override {
        ++reads;
        std::byte* p = locate(addr.value, out.size());
        if (!p) throw Error(ErrorKind::Guest, "virtual " + hex(addr.value) + " is not mapped");
        std::memcpy(out.data(), p, out.size());
    }
    void write(std::uint64_t addr, const void* data, std::size_t n) {
        std::byte* p = locate(addr, n);
        if (!p) throw std::runtime_error("RegionMemory: write outside the map at " + hex(addr));
        std::memcpy(p, data, n);
    }
    template <typename T>
    void put(std::uint64_t addr, T v) {
        write(addr, &v, sizeof v);
    }
    void put_string(std::uint64_t addr, const std::string& s) { write(addr, s.c_str(), s.size() + 1); }
    void write64(std::uint64_t addr, std::uint64_t v) { put(addr, v); }
    void write32(std::uint64_t addr, std::uint32_t v) { put(addr, v); }
    int reads = 0;

private:
    std::byte* locate(std::uint64_t addr, std::size_t n) {
        auto it = regions_.upper_bound(addr);
        if (it == regions_.begin()) return nullptr;
        --it;
        std::uint64_t off = addr - it->first;
        if (off > it->second.size() || n > it->second.size() - off) return nullptr;
        return it->second.data() + off;
    }
    std::map<std::uint64_t, std::vector<std::byte>> regions_;
};

}  // namespace hvpatch::test
