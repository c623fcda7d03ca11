// Guest pages read while the VM is stopped, kept until it runs again.
//
// Reading the QEMU process's memory costs a system call per read (~1-2 us),
// however small; walking tasks and stacks reads thousands of words in a
// freeze. While hvpatch has the vCPUs stopped guest memory cannot change
// except by hvpatch's own writes, so a page read once serves every later
// read of it in the same stop. The owner clears the cache whenever the VM
// may run again and drops the pages it writes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>

namespace hvpatch {

class StoppedPageCache {
public:
    static constexpr std::uint64_t kPageSize = 4096;
    // Reads one whole page at a page-aligned guest-physical address.
    using PageReader = std::function<void(std::uint64_t page, std::span<std::byte> out)>;

    explicit StoppedPageCache(std::size_t max_pages = 16384) : max_pages_(max_pages) {}

    // Copies [addr, addr + out.size()) page by page, reading each missing
    // page whole through `read_page` first.
    void read(std::uint64_t addr, std::span<std::byte> out, const PageReader& read_page);
    // Forgets the pages that overlap [addr, addr + len).
    void drop(std::uint64_t addr, std::uint64_t len);
    void clear() { pages_.clear(); }
    std::size_t size() const { return pages_.size(); }

private:
    using Page = std::array<std::byte, kPageSize>;
    std::size_t max_pages_;
    std::unordered_map<std::uint64_t, std::unique_ptr<Page>> pages_;
};

}  // namespace hvpatch
