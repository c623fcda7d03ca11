#include "introspect/kernel_memory.h"

#include <algorithm>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

// A freeze touches a few thousand pages at most; the cap only bounds memory
// against a guest that makes us walk everything.
constexpr std::size_t kMaxCachedPages = 1 << 20;

}  // namespace

KernelMemory::KernelMemory(PhysicalMemoryReader& physical, std::uint64_t cr3, PagingLevels levels)
    : physical_(physical), walker_(physical, cr3, levels) {}

const KernelMemory::CachedPage& KernelMemory::page_of(GuestVirtAddr addr) {
    for (std::uint64_t size : {1ULL << 12, 1ULL << 21, 1ULL << 30}) {
        auto it = cache_.find(addr.value & ~(size - 1));
        if (it != cache_.end() && it->second.size == size) return it->second;
    }
    WalkResult walk = walker_.walk(addr);
    if (!walk.ok()) throw Error(ErrorKind::Guest, walk.failure->describe(addr));
    if (cache_.size() >= kMaxCachedPages) cache_.clear();
    std::uint64_t size = walk.translation->page_size;
    std::uint64_t base = addr.value & ~(size - 1);
    std::uint64_t phys_base = walk.translation->phys.value - (addr.value - base);
    return cache_[base] = CachedPage{phys_base, size};
}

GuestPhysAddr KernelMemory::translate(GuestVirtAddr addr) {
    const CachedPage& page = page_of(addr);
    return GuestPhysAddr{page.phys_base + (addr.value & (page.size - 1))};
}

bool KernelMemory::is_mapped(GuestVirtAddr addr) {
    try {
        page_of(addr);
        return true;
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
        return false;
    }
}

void KernelMemory::read(GuestVirtAddr addr, std::span<std::byte> out) {
    std::size_t done = 0;
    while (done < out.size()) {
        GuestVirtAddr va = addr + done;
        if (va.value < addr.value) throw Error(ErrorKind::Guest, "read wraps past the top of the address space at " + hex(addr.value));
        const CachedPage& page = page_of(va);
        std::uint64_t in_page = va.value & (page.size - 1);
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(out.size() - done, page.size - in_page));
        try {
            physical_.read_physical(GuestPhysAddr{page.phys_base + in_page}, out.subspan(done, n));
        } catch (const Error& e) {
            throw Error(e.kind(), "reading virtual " + hex(va.value) + ": " + e.what());
        }
        done += n;
    }
}

}  // namespace hvpatch
