// The guest kernel's symbol table, decoded from its compressed kallsyms
// tables in guest memory (no vmlinux, no System.map).
//
// Layout history (scripts/kallsyms.c, kernel/kallsyms.c) — see kallsyms.cpp's
// header comment for the full table and how the decoder tells them apart.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hvpatch/address.h"
#include "introspect/virtual_memory.h"

namespace hvpatch {

struct KernelSymbol {
    std::string name;
    GuestVirtAddr address;
    char type = '?';      // as /proc/kallsyms prints it: 'T', 't', 'D', 'b', ...
    std::string module;   // "" for vmlinux
};

// Where the tables were found (for `inspect` and for diagnostics).
struct KallsymsLayout {
    GuestVirtAddr offsets, relative_base_var, num_syms_var, names, markers, token_table, token_index;
    std::uint64_t relative_base = 0;
    std::uint64_t num_syms = 0;
    bool base_relative = true;  // CONFIG_KALLSYMS_BASE_RELATIVE
    std::string format;         // e.g. "6.1 (base-relative, big-symbol lengths)"
};

class KallsymsTable {
public:
    // Finds the tables by their shape inside the kernel image
    // [image_start, image_start + image_size) and decodes every symbol.
    // Throws Error(Guest) when no consistent set of tables is found, or when
    // they are truncated/corrupt (naming the table and address). Bounded:
    // at most `image_size` bytes scanned, num_syms capped (e.g. 4 million).
    static KallsymsTable locate(VirtualMemory& memory, GuestVirtAddr image_start, std::uint64_t image_size);

    // Decodes tables whose addresses are already known (used by locate()
    // and by tests on synthetic tables).
    static KallsymsTable decode(VirtualMemory& memory, const KallsymsLayout& layout);

    const KallsymsLayout& layout() const { return layout_; }
    // vmlinux symbols in kallsyms order (the order /proc/kallsyms prints).
    const std::vector<KernelSymbol>& symbols() const { return symbols_; }

    // All symbols of that name, in address order. sympos (livepatch's
    // old_sympos) is 1-based into this list; 0 means "the only one" and
    // fails when there are several.
    std::vector<KernelSymbol> find_all(std::string_view name) const;
    std::optional<KernelSymbol> find(std::string_view name, unsigned sympos = 0) const;
    // Throws Error(Guest) "symbol 'x' not found in the guest kernel" /
    // "... is ambiguous (N matches), give a position".
    KernelSymbol require(std::string_view name, unsigned sympos = 0) const;

    struct Resolved {
        KernelSymbol symbol;
        std::uint64_t offset = 0;  // address - symbol.address
        std::uint64_t size = 0;    // next symbol's address - symbol.address (0 if last)
    };
    // The symbol containing `addr` (greatest address <= addr), as
    // /proc/PID/stack and %pS resolve it. nullopt outside vmlinux text/data.
    std::optional<Resolved> resolve(GuestVirtAddr addr) const;

private:
    KallsymsLayout layout_;
    std::vector<KernelSymbol> symbols_;
    std::vector<std::size_t> by_address_;  // indices into symbols_, sorted by address
    std::vector<std::size_t> by_name_;     // indices into symbols_, sorted by name then address
};

}  // namespace hvpatch
