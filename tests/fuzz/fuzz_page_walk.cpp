// Fuzz the page-table walker: arbitrary bytes are guest RAM, the first
// bytes choose CR3, the paging mode and the addresses walked.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/page_walk.h"

namespace {

class FuzzRam : public hvpatch::PhysicalMemoryReader {
public:
    FuzzRam(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    void read_physical(hvpatch::GuestPhysAddr addr, std::span<std::byte> out) override {
        if (addr.value > size_ || out.size() > size_ - addr.value)
            throw hvpatch::Error(hvpatch::ErrorKind::Guest, "outside fuzz RAM");
        std::memcpy(out.data(), data_ + addr.value, out.size());
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
};

std::uint64_t take_u64(const std::uint8_t*& p, std::size_t& left) {
    std::uint64_t v = 0;
    std::size_t n = left < 8 ? left : 8;
    std::memcpy(&v, p, n);
    p += n;
    left -= n;
    return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::uint8_t* p = data;
    std::size_t left = size;
    std::uint64_t cr3 = take_u64(p, left) & 0xffff;  // keep CR3 within small images often
    std::uint64_t mode = take_u64(p, left);
    std::uint64_t va = take_u64(p, left);
    FuzzRam ram(data, size);
    hvpatch::PageWalker walker(ram, cr3, (mode & 1) ? hvpatch::PagingLevels::Five : hvpatch::PagingLevels::Four);
    (void)walker.walk(hvpatch::GuestVirtAddr{va});
    std::vector<std::byte> out((mode >> 8) & 0x3fff);
    try {
        walker.read_virtual(hvpatch::GuestVirtAddr{va}, out);
    } catch (const hvpatch::Error&) {
    }
    return 0;
}
