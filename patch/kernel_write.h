// Writing guest kernel virtual memory from the host (paused guest).
#pragma once

#include <cstdint>
#include <span>

#include "introspect/guest_kernel.h"

namespace hvpatch {

// Writes `bytes` at kernel virtual `address`, page by page through the
// kernel's page tables (each page may map anywhere). Goes through the
// Machine's write path (the stub), so TCG drops stale translations of code.
// Throws Error(Guest) naming the address if a page does not translate;
// nothing is written then (all pages are translated first).
void write_kernel_memory(GuestKernel& kernel, std::uint64_t address, std::span<const std::byte> bytes);

template <typename T>
void write_kernel_value(GuestKernel& kernel, std::uint64_t address, const T& value) {
    write_kernel_memory(kernel, address, std::as_bytes(std::span<const T, 1>(&value, 1)));
}

}  // namespace hvpatch
