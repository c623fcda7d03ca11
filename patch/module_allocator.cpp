#include "patch/module_allocator.h"

#include "hvpatch/address.h"
#include "hvpatch/error.h"
#include "introspect/kernel_location.h"

namespace hvpatch {

ModuleAllocator find_module_allocator(GuestKernel& kernel) {
    ModuleAllocator a;
    if (kernel.find_symbol("module_alloc") && kernel.find_symbol("module_memfree")) {
        a.alloc = "module_alloc";
        a.free = "module_memfree";
        a.description = "module_alloc";
        return a;
    }
    if (!kernel.find_symbol("execmem_alloc") || !kernel.find_symbol("execmem_free")) {
        a.problem = "the guest kernel has neither module_alloc/module_memfree (up to 6.9) nor "
                    "execmem_alloc/execmem_free (6.10+)";
        return a;
    }
    // 6.10+: execmem_alloc(type, size). hvpatch asks for EXECMEM_MODULE_DATA,
    // ordinary PAGE_KERNEL vmalloc memory in the module area, and protects
    // the text itself with set_memory_ro/x as before. EXECMEM_MODULE_TEXT
    // would do on kernels without ARCH_HAS_EXECMEM_ROX, but from 6.15 x86
    // serves it from a cache of read-only executable huge pages that only
    // text_poke can write (execmem_is_rox).
    const KernelBtf& btf = kernel.btf();
    auto type = btf.enum_value("EXECMEM_MODULE_DATA");
    if (!type || *type < 0) {
        a.problem = "the guest has execmem_alloc but its BTF has no EXECMEM_MODULE_DATA";
        return a;
    }
    // The range that type allocates from: execmem_info->ranges[type]. Two
    // symbols carry the name: mm/execmem.c's pointer, and the x86 structure
    // it points to (arch/x86/mm/init.c); the pointer is the one whose value
    // is the other's address.
    auto candidates = kernel.symbols().find_all("execmem_info");
    std::optional<std::uint64_t> info;
    for (const auto& c : candidates) {
        std::uint64_t value = kernel.memory().read_u64(GuestVirtAddr{c.address.value});
        for (const auto& other : candidates)
            if (&other != &c && other.address.value == value) info = value;
    }
    if (!info) {
        a.problem = "cannot tell the guest's execmem_info pointer among " + std::to_string(candidates.size()) +
                    " symbols of that name";
        return a;
    }
    auto ranges = btf.find_member("execmem_info", "ranges");
    auto start = btf.find_member("execmem_range", "start");
    auto end = btf.find_member("execmem_range", "end");
    auto flags = btf.find_member("execmem_range", "flags");
    if (!ranges || !start || !end || !btf.has_type("execmem_range")) {
        a.problem = "guest BTF lacks struct execmem_info.ranges or execmem_range.start/end";
        return a;
    }
    const std::uint64_t range_size = btf.size_of("execmem_range");
    if (range_size == 0 || static_cast<std::uint64_t>(*type) >= ranges->size / range_size) {
        a.problem = "EXECMEM_MODULE_DATA (" + std::to_string(*type) + ") lies beyond execmem_info.ranges";
        return a;
    }
    const std::uint64_t range = *info + ranges->offset + static_cast<std::uint64_t>(*type) * range_size;
    const std::uint64_t lo = kernel.memory().read_u64(GuestVirtAddr{range + start->offset});
    const std::uint64_t hi = kernel.memory().read_u64(GuestVirtAddr{range + end->offset});
    if (lo < kStartKernelMap || hi > kModulesEnd || lo >= hi) {
        a.problem = "execmem_info->ranges[EXECMEM_MODULE_DATA] is " + hex(lo) + ".." + hex(hi) +
                    ", not within the module area " + hex(kStartKernelMap) + ".." + hex(kModulesEnd);
        return a;
    }
    if (auto rox = btf.enum_value("EXECMEM_ROX_CACHE"); rox && flags && flags->size == 4) {
        std::uint32_t f = kernel.memory().read_u32(GuestVirtAddr{range + flags->offset});
        if (f & static_cast<std::uint32_t>(*rox)) {
            a.problem = "the guest serves EXECMEM_MODULE_DATA from its read-only executable cache "
                        "(execmem_info flags " + hex_short(f) + "): hvpatch could not write the patch there";
            return a;
        }
    }
    a.area = {lo, hi};
    a.alloc = "execmem_alloc";
    a.free = "execmem_free";
    a.type = static_cast<std::uint64_t>(*type);
    a.description = "execmem_alloc(EXECMEM_MODULE_DATA=" + std::to_string(*type) + ") in " + hex(lo) + ".." + hex(hi);
    return a;
}

}  // namespace hvpatch
