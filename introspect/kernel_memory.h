// The guest kernel's virtual address space, read through its page tables
// from guest-physical memory, with a translation cache. The cache holds one
// entry per page (4 KiB, 2 MiB or 1 GiB) and belongs to one freeze: a
// caller that resumes the guest makes a new KernelMemory (or clears it),
// because the guest may change its page tables while it runs.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "hvpatch/memory.h"
#include "introspect/page_walk.h"
#include "introspect/virtual_memory.h"

namespace hvpatch {

class KernelMemory : public VirtualMemory {
public:
    KernelMemory(PhysicalMemoryReader& physical, std::uint64_t cr3, PagingLevels levels);

    void read(GuestVirtAddr addr, std::span<std::byte> out) override;
    // Throws Error(Guest) naming the address and why it does not translate.
    GuestPhysAddr translate(GuestVirtAddr addr);
    bool is_mapped(GuestVirtAddr addr);
    void clear_cache() { cache_.clear(); }

    std::uint64_t cr3() const { return walker_.cr3(); }
    PagingLevels levels() const { return walker_.levels(); }

private:
    struct CachedPage {
        std::uint64_t phys_base = 0;
        std::uint64_t size = 0;
    };
    const CachedPage& page_of(GuestVirtAddr addr);

    PhysicalMemoryReader& physical_;
    PageWalker walker_;
    std::unordered_map<std::uint64_t, CachedPage> cache_;  // key: page base address
};

}  // namespace hvpatch
