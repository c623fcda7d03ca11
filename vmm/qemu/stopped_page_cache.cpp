#include "vmm/qemu/stopped_page_cache.h"

#include <algorithm>
#include <cstring>

namespace hvpatch {

void StoppedPageCache::read(std::uint64_t addr, std::span<std::byte> out, const PageReader& read_page) {
    std::size_t done = 0;
    while (done < out.size()) {
        std::uint64_t at = addr + done;
        std::uint64_t page = at & ~(kPageSize - 1);
        std::uint64_t in_page = at - page;
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(out.size() - done, kPageSize - in_page));
        auto it = pages_.find(page);
        if (it == pages_.end()) {
            // Bounded: a stop that touches more pages than this starts over.
            if (pages_.size() >= max_pages_) pages_.clear();
            auto fresh = std::make_unique<Page>();
            read_page(page, *fresh);
            it = pages_.emplace(page, std::move(fresh)).first;
        }
        std::memcpy(out.data() + done, it->second->data() + in_page, n);
        done += n;
    }
}

void StoppedPageCache::drop(std::uint64_t addr, std::uint64_t len) {
    if (len == 0) return;
    std::uint64_t first = addr & ~(kPageSize - 1);
    std::uint64_t last = (addr + len - 1) & ~(kPageSize - 1);
    if (last < first || (last - first) / kPageSize >= pages_.size()) {
        // A range wider than the cache: check each cached page instead.
        std::erase_if(pages_, [&](const auto& entry) { return entry.first >= first && entry.first <= last; });
        return;
    }
    for (std::uint64_t page = first;; page += kPageSize) {
        pages_.erase(page);
        if (page == last) break;
    }
}

}  // namespace hvpatch
