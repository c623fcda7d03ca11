// Which function of the guest kernel hvpatch asks for patch memory, found
// from the guest's own symbols and BTF: module_alloc/module_memfree up to
// 6.9, execmem_alloc(EXECMEM_MODULE_DATA)/execmem_free from 6.10 (with the
// module area bounds from the guest's execmem_info).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "introspect/guest_kernel.h"

namespace hvpatch {

struct ModuleAllocator {
    std::string alloc, free;              // guest functions
    std::optional<std::uint64_t> type;    // execmem_alloc's first argument
    // [start, end) the allocation must lie in, when the guest says
    // (execmem_info); else the caller's MODULES_VADDR..MODULES_END.
    std::optional<std::pair<std::uint64_t, std::uint64_t>> area;
    std::string description;              // for messages and `inspect`
    std::string problem;                  // non-empty: there is none hvpatch can use, and why
};

// Reads guest memory (execmem_info); never calls into the guest.
ModuleAllocator find_module_allocator(GuestKernel& kernel);

}  // namespace hvpatch
